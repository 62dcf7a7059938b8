"""Batch synthesis over folders of photographs: any size, any count, resumable.

Every image file under a folder is read, its face aligned to where the model's
training faces have their landmarks (else its face box, else its centre) at
the model's image size, synthesised into each target expression, pasted back
into the photograph at full resolution and written as a PNG under
``out/<target>/`` with the input's relative path (the crops under
``out/crops/<target>/`` and ``out/aligned/``). The folder
is listed as it is walked (or a manifest read line by line) and cut into
batches of files as it goes, one task per batch and a bounded number in flight
(:mod:`dmask.apply.batches`), so neither the client nor the graph holds the
collection whatever its size. A local output file appears only once complete
(written under a temporary name, then renamed). A finished batch leaves a
record under ``out/.dmask-progress/``; a re-run skips the recorded batches
after one listing of that folder, and in the others every file whose outputs
all exist. Unreadable files and photographs without a detectable face are
skipped, one report line each. Folders and outputs may be fsspec URLs.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np

from dmask.apply import batches
from dmask.checks import check_strength
from dmask.core import alignment, forward, minmax, sparse
from dmask.errors import InputError, check_choice
from dmask.graph import runtime
from dmask.io import atomic, face_crops, locks, model_store, photographs
from dmask.io.locations import is_local
from dmask.model import Model

__all__ = [
    "OUTPUT_KINDS",
    "STAGES",
    "BatchReport",
    "Synthesised",
    "apply_to_folder",
    "default_block",
    "paste_faces",
    "read_synthesised",
    "scan_images",
]

logger = logging.getLogger(__name__)

#: Batches in flight at least (twice the cluster's threads where more): bounds
#: the client's memory and the graph for folders of millions of files.
BLOCKS_IN_FLIGHT = 64
#: Report lines (problems, notes) held in the report object; the report file
#: has them all (spooled to a temporary file as they come).
HELD_LINES = 10_000
#: Name of the run report written in the output folder.
REPORT_NAME = "report.txt"
#: What batch tasks spend their CPU time on (:attr:`BatchReport.stages`): reading
#: the files' bytes, decoding them, taking the faces (detection, alignment,
#: crop, resize, channels), predicting the block (normalisation included),
#: pasting faces back into photographs, encoding the PNGs (8-bit pixels and
#: compression) and writing them (atomically).
STAGES: tuple[str, ...] = (
    "read", "decode", "crop", "predict", "paste", "encode", "write"
)  # fmt: skip


@dataclass
class BatchReport:
    """What one batch run did.

    Attributes
    ----------
    scanned : int
        Image files found under the input folder.
    already_done : int
        Files whose outputs existed before this run (skipped).
    written : int
        Files synthesised by this run (one PNG per target each).
    problems : list of str
        One line per file skipped: unreadable, or no face found (the first
        :data:`HELD_LINES`; ``report.txt`` has them all).
    notes : list of str
        One line per file written with a remark (face box: no landmarks found;
        centre crop: no face found); the first :data:`HELD_LINES`.
    methods : dict of str to int
        How many faces this run took each way of
        :data:`dmask.io.face_crops.ALIGN_METHODS`.
    seconds : float
        Wall time of the run.
    problem_count, note_count : int
        Files skipped, files noted (all of them, held or not).
    batches : int
        Batches of files listed.
    batches_done : int
        Batches skipped whole: recorded as done by an earlier run.
    tasks : int
        Tasks this run submitted (one per batch not skipped whole).
    first_task : float or None
        Seconds from the start of the run to its first task submitted (None:
        none was).
    stages : dict of str to float
        CPU seconds the run's tasks spent in each of :data:`STAGES` (their
        threads' user and system time; waits for a core, a disk or a network
        are not in it), added up over all tasks; the rest of the workers' time
        went to resume checks, progress records, the workers' own machinery
        and waits.
    """

    folder: str
    out: str
    targets: list[str]
    scanned: int = 0
    already_done: int = 0
    written: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    methods: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    problem_count: int = 0
    note_count: int = 0
    batches: int = 0
    batches_done: int = 0
    tasks: int = 0
    first_task: float | None = None
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def summary(self) -> str:
        """One line of counts."""
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        skipped = max(self.problem_count, len(self.problems))
        return (
            f"{self.scanned} image files, {self.already_done} already done, "
            f"{self.written} synthesised ({len(self.targets)} target(s) each), "
            f"{skipped} skipped, {self.seconds:.1f} s "
            f"({rate:.1f} images/s)" + self.alignment()
        )

    def alignment(self) -> str:
        """How the faces were taken, e.g. ``"; taken by: 4 landmarks, 2 centre"``."""
        parts = [f"{n} {way}" for way, n in self.methods.items() if n]
        return "; taken by: " + ", ".join(parts) if parts else ""


def scan_images(folder: str | os.PathLike) -> list[str]:
    """Relative paths (POSIX separators) of the image files under a folder, sorted.

    The whole list (:func:`dmask.apply.batches.walk_images` streams it).
    """
    return list(batches.walk_images(folder))


def _output_path(out: str, target: str, relative: str) -> str:
    return batches.join(out, target, str(Path(relative).with_suffix(".png")))


#: The arrays a model is applied with: weight and bias, and a sparse model's source.
MODEL_ARRAYS = ("weight", "bias", "source")


def _model_arrays(ds: Any) -> dict[str, Any]:
    """:data:`MODEL_ARRAYS`, and a sparse model's slots as one CSR ``matrix``."""
    arrays: dict[str, Any] = {
        name: np.asarray(ds[name].values) for name in MODEL_ARRAYS if name in ds
    }
    if "source" in arrays:
        _, height, width, channels, _ = arrays["weight"].shape
        arrays["matrix"] = sparse.slot_matrix(
            arrays.pop("source"), arrays.pop("weight"), height * width * channels
        )
    return arrays


_LOADING = threading.Lock()


@functools.lru_cache(maxsize=2)
def _cached_arrays(path: str, names: tuple[str, ...], version: int) -> dict[str, Any]:
    # read here, in this task: no graph of its own on a cluster (a task waiting
    # for tasks, while others wait for the lock, would hold every thread)
    with dask.config.set(scheduler="synchronous"):
        ds = model_store.open_model_store(path).sel(target=list(names))
        return _model_arrays(ds)


def _stored_arrays(path: str, names: tuple[str, ...], version: int) -> dict[str, Any]:
    """A model store's arrays (:func:`_model_arrays`), loaded once per process.

    ``version`` (the store's metadata modification time) keys the cache, so a
    store rewritten at the same path is read again. The lock keeps threads that
    start at once from each loading their own copy.
    """
    with _LOADING:
        return _cached_arrays(path, names, version)


def _predict_faces(
    faces: np.ndarray,
    arrays: dict[str, np.ndarray],
    field_size: int,
    low: np.ndarray | None,
    scale: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(T, N, H, W, C)`` predictions of faces ``(N, H, W, C)`` as read, and
    the faces as the model sees them (float64, normalised with ``low`` and
    ``scale`` where given, as :func:`dmask.core.minmax.normalize_block`).

    The faces are normalised straight into the middle of the zero-padded
    block the forward pass reads (no padded copy of a normalised copy).
    """
    b = 0 if "matrix" in arrays else field_size // 2
    n, height, width, channels = faces.shape
    halo = np.zeros((n, height + 2 * b, width + 2 * b, channels))
    x = halo[:, b : b + height, b : b + width]
    if low is None or scale is None:
        x[...] = faces
    else:
        np.subtract(faces, low.reshape(-1, 1, 1, 1), out=x)
        x *= scale.reshape(-1, 1, 1, 1)
    if "matrix" in arrays:
        return sparse.apply_matrix(x, arrays["matrix"], arrays["bias"]), x
    weight, bias = arrays["weight"], arrays["bias"]
    return forward.apply_tile(halo, weight, bias, field_size), x


def _image_channels(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[2])


def _store_version(path: str) -> int:
    """When a model store's metadata last changed (its size and tag on a URL)."""
    metadata = batches.join(path, "zarr.json")
    if is_local(path):
        return os.stat(metadata).st_mtime_ns
    fs, where = batches.filesystem(metadata)
    info = fs.info(where)
    stamp = [str(info.get(k)) for k in ("size", "ETag", "LastModified", "mtime")]
    return int(batches.batch_id(stamp)[:15], 16)


def _read_photo(
    folder: str, relative: str, stages: _Stages | None = None
) -> np.ndarray:
    """A photograph under a local folder or a URL (fsspec reads the latter)."""
    path = batches.join(folder, relative)
    started = _clock()
    data = photographs.read_file(path)
    started = _add(stages, "read", started)
    image = photographs.decode_image(data, path)
    _add(stages, "decode", started)
    return image


#: Seconds per stage of :data:`STAGES`, added up by a task.
_Stages = dict[str, float]
#: The stages' clock: the task thread's CPU time (user and system), so that
#: a worker made to wait for a core (by other processes, by the scheduler)
#: or for a disk or a network does not count that wait in a stage.
_clock = time.thread_time


def _add(stages: _Stages | None, stage: str, started: float) -> float:
    """Add the CPU time since ``started`` (:data:`_clock`) to ``stage``; now."""
    now = _clock()
    if stages is not None:
        stages[stage] += now - started
    return now


def _exists(path: str) -> bool:
    if not is_local(path):
        fs, where = batches.filesystem(path)
        return bool(fs.exists(where))
    return os.path.exists(path)


#: What a folder run writes per file: the pasted-back photograph, the crops
#: (synthesised and aligned input), both, or only the synthesised crops (one
#: PNG per target: for faces that are aligned crops already).
OUTPUT_KINDS: tuple[str, ...] = ("photo", "crop", "both", "synthesised")
#: Where crops go: ``out/crops/<target>/`` (synthesised), ``out/aligned/`` (input).
CROPS, ALIGNED = "crops", "aligned"


def _outputs(out: str, names: Sequence[str], relative: str, output: str) -> list[str]:
    """Every file a run with ``output`` writes for one input file."""
    paths = []
    if output in ("photo", "both"):
        paths += [_output_path(out, name, relative) for name in names]
    if output in ("crop", "both", "synthesised"):
        paths += [_output_path(batches.join(out, CROPS), n, relative) for n in names]
    if output in ("crop", "both"):
        paths.append(_aligned_path(out, relative))
    return paths


def _aligned_path(out: str, relative: str) -> str:
    return batches.join(out, ALIGNED, str(Path(relative).with_suffix(".png")))


#: Photographs up to this size stay in memory until pasted into; larger ones
#: are read again then (a block of large photographs is not held at once).
HOLD_BYTES = 8 * 2**20
#: Files per task by default (:func:`default_block`): as many as make about
#: this many bytes of faces and predictions in float64 ...
BLOCK_BYTES = 64 * 2**20
#: ... but at least this many (and at most this many where photographs are
#: written: a task may hold each of them, up to :data:`HOLD_BYTES`) ...
MIN_BLOCK = 16
#: ... and at most this many.
MAX_BLOCK = 256


def default_block(
    shape: Sequence[int], channels: int, targets: int, output: str
) -> int:
    """Files per task where :func:`apply_to_folder` is given none.

    Larger tasks spread the cost of each (scheduling, transfers, a progress
    record) over more files: tasks of 64 files of 128 x 128 RGB faces and one
    target took about a quarter less CPU time per image than tasks of 16
    (``pipelines/bench_batch.py --throughput``). So a task takes as many faces of the
    model's ``shape`` and ``channels`` as make :data:`BLOCK_BYTES` of float64
    inputs and predictions for ``targets``, between :data:`MIN_BLOCK` and
    :data:`MAX_BLOCK`; :data:`MIN_BLOCK` where ``output`` writes photographs.
    """
    if output in ("photo", "both"):
        return MIN_BLOCK
    face = int(np.prod(shape)) * channels * 8 * (1 + targets)
    return max(MIN_BLOCK, min(MAX_BLOCK, BLOCK_BYTES // face))


@dataclass
class _Face:
    relative: str
    image: np.ndarray | None  # the photograph in the model's channels, if held
    aligned: face_crops.AlignedFace
    peak: float


def _note(method: str) -> str | None:
    """The report's remark on a face taken other than by its landmarks."""
    return {
        "face box": "no landmarks found: face box",
        "centre": "no face found: centre crop",
    }.get(method)


def predict_files(
    relatives: Sequence[str],
    folder: str,
    out: str,
    names: Sequence[str],
    arrays: str | dict[str, np.ndarray],
    field_size: int,
    normalize: bool,
    crop: str,
    margin: float,
    convert_channels: bool = False,
    resize: str = "lanczos",
    display: str = "clip",
    strength: float = 1.0,
    canonical: np.ndarray | None = None,
    output: str = "both",
    stages: dict[str, float] | None = None,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict[str, int]]:
    """Task: synthesise a block of files.

    Returns ``(file, reason)`` pairs of the files skipped and of the files
    written with a remark (a face box where no landmarks were found, a centre
    crop where no face was), and how many faces each way of
    :data:`dmask.io.face_crops.ALIGN_METHODS` took.

    ``arrays`` is a model store path (loaded once per process) or the arrays
    themselves (:data:`MODEL_ARRAYS`). Images whose channel count is not the
    model's are skipped unless ``convert_channels``. ``resize``, ``display``,
    ``canonical`` and ``output`` are :func:`apply_to_folder`'s. ``stages``,
    where given, gets the seconds spent in each of :data:`STAGES` added.
    """
    if isinstance(arrays, str):
        arrays = _stored_arrays(arrays, tuple(names), _store_version(arrays))
    _, height, width, channels = arrays["bias"].shape
    problems: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []
    methods = dict.fromkeys(face_crops.ALIGN_METHODS, 0)
    faces: list[_Face] = []
    for relative in relatives:
        try:
            image = _read_photo(folder, relative, stages)
        except photographs.ImageReadError as exc:
            problems.append((relative, f"unreadable: {exc}"))
            continue
        started = _clock()
        found = _image_channels(image)
        if found > channels and not convert_channels:
            problems.append(
                (
                    relative,
                    f"{found} channels but the model applies to {channels} "
                    "(convert_channels / --convert-channels makes it grey)",
                )
            )
            continue
        if found < channels:
            notes.append((relative, f"{found} channel(s): copied to {channels}"))
        image = face_crops.convert_channels(image, channels)
        try:
            aligned = face_crops.align_face(
                image, (height, width), crop, canonical, margin, channels, resize
            )
        except (ValueError, np.linalg.LinAlgError) as exc:  # degenerate landmarks
            problems.append((relative, f"cannot take the face: {exc}"))
            continue
        finally:
            _add(stages, "crop", started)
        if aligned is None:
            problems.append((relative, "no face found"))
            continue
        methods[aligned.method] += 1
        remark = _note(aligned.method)
        if remark:
            notes.append((relative, remark))
        peak = photographs.dtype_peak(image.dtype)
        held = image if output == "photo" or output == "both" else None
        if held is not None and image.nbytes > HOLD_BYTES:
            held = None
        faces.append(_Face(relative, held, aligned, peak))
    if faces:  # the block at once: one product for every face
        started = _clock()
        raw = np.stack([f.aligned.face for f in faces])  # as read: integers
        low, scale = minmax.minmax_parameters(raw)
        if normalize:
            predicted, x = _predict_faces(raw, arrays, field_size, low, scale)
        else:
            predicted, x = _predict_faces(raw, arrays, field_size, None, None)
        predicted = forward.blend(predicted, x, strength)
        _add(stages, "predict", started)
        for i, face in enumerate(faces):
            peak = 1.0 if normalize else face.peak
            if output in ("crop", "both"):
                _write_png(
                    _aligned_path(out, face.relative), raw[i], face.peak, "clip",
                    stages,
                )  # fmt: skip
            if output in ("crop", "both", "synthesised"):
                crops = batches.join(out, CROPS)
                for name, values in zip(names, predicted[:, i], strict=True):
                    path = _output_path(crops, name, face.relative)
                    _write_png(path, values, peak, display, stages)
            if output in ("photo", "both"):
                units = [
                    _in_units(v, low[i], scale[i]) if normalize else v
                    for v in predicted[:, i]
                ]
                photo = face.image
                if photo is None:
                    photo = _read_photo(folder, face.relative, stages)
                    started = _clock()
                    photo = face_crops.convert_channels(photo, channels)
                    _add(stages, "crop", started)
                started = _clock()
                original = raw[i].astype(np.float64)
                pasted = paste_faces(photo, units, original, face.aligned)
                _add(stages, "paste", started)
                for name, result in zip(names, pasted, strict=True):
                    path = _output_path(out, name, face.relative)
                    _write_png(path, result, face.peak, "clip", stages)
    return problems, notes, methods


def _in_units(values: np.ndarray, low: float, scale: float) -> np.ndarray:
    """Normalised values back in the crop's own units (undoing min-max)."""
    return values / scale + low if scale > 0 else np.full_like(values, low)


def paste_faces(
    photo: np.ndarray,
    faces: Sequence[np.ndarray],
    original: np.ndarray,
    aligned: face_crops.AlignedFace,
) -> list[np.ndarray]:
    """The photograph with each synthesised face pasted back at full size.

    ``faces`` (one per target) and ``original`` (the crop as taken) are in the
    photograph's units. Each face gets the original crop's colour and
    brightness under a feathered mask over eyes, nose and mouth (the crop's
    inscribed ellipse when it was taken without landmarks), then goes back
    through the inverse of the crop's transform, sampled once for all
    (:func:`dmask.core.alignment.paste_with`). The results have the
    photograph's dtype; outside the mask they are the photograph itself.
    """
    mask = alignment.face_mask(original.shape[:2], aligned.points)
    where = alignment.paste_map(photo.shape, aligned.matrix, mask)
    matched = [alignment.match_colour(face, original, mask) for face in faces]
    return alignment.paste_with(photo, matched, where)


def _write_png(
    path: str,
    values: np.ndarray,
    peak: float,
    display: str = "clip",
    stages: dict[str, float] | None = None,
) -> None:
    """A PNG file: atomic locally, one object written whole at a URL."""
    started = _clock()
    encoded = photographs.encode_png(values, peak, display)
    started = _add(stages, "encode", started)
    if is_local(path):
        photographs.write_file(path, encoded)
    else:
        fs, where = batches.filesystem(path)
        fs.pipe_file(where, encoded)
    _add(stages, "write", started)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _places(folder: str | os.PathLike, out: str | os.PathLike) -> tuple[str, str]:
    """The input and output folders as tasks use them, checked.

    Local ones absolute; URLs as given. The input must be a folder, the output
    neither inside it nor inside a Zarr store.
    """
    given_folder, given_out = os.fspath(folder), os.fspath(out)
    if is_local(given_folder):
        source = Path(given_folder).resolve()
        if not source.is_dir():
            raise InputError(f"input folder {folder} does not exist or is not a folder")
        folder_path = str(source)
    else:
        fs, where = batches.filesystem(given_folder)
        if not fs.isdir(where):
            raise InputError(f"input folder {folder} does not exist or is not a folder")
        folder_path = given_folder.rstrip("/")
    if is_local(given_out):
        destination = Path(given_out).resolve()
        if is_local(folder_path) and _inside(destination, Path(folder_path)):
            raise InputError(f"output folder {out} is inside the input folder {folder}")
        for place in (destination, *destination.parents):
            if (place / "zarr.json").is_file():
                raise InputError(
                    f"output folder {out} is inside the Zarr store {place}"
                )
        return folder_path, str(destination)
    out_path = given_out.rstrip("/")
    if out_path == folder_path or out_path.startswith(folder_path + "/"):
        raise InputError(f"output folder {out} is inside the input folder {folder}")
    fs, where = batches.filesystem(out_path)
    place = where.rstrip("/")
    while place:
        if fs.isfile(f"{place}/zarr.json"):
            raise InputError(f"output folder {out} is inside the Zarr store {place}")
        place = place.rpartition("/")[0]
    return folder_path, out_path


class _Lines:
    """Report lines as they come: the first :data:`HELD_LINES` held, all spooled."""

    def __init__(self, held: list[str]) -> None:
        self.held = held
        self.count = 0
        self.spool = tempfile.TemporaryFile("w+", encoding="utf-8")

    def add(self, line: str) -> None:
        self.count += 1
        if len(self.held) < HELD_LINES:
            self.held.append(line)
        self.spool.write(line.replace("\n", " ") + "\n")

    def copy_to(self, handle: Any, prefix: str) -> None:
        self.spool.seek(0)
        for line in self.spool:
            handle.write(prefix + line)

    def close(self) -> None:
        self.spool.close()


def _write_report(out: str, problems: _Lines, notes: _Lines, summary: str) -> None:
    """``report.txt``: every problem and note, then the summary."""
    path = batches.join(out, REPORT_NAME)
    if not is_local(out):
        import fsspec

        with fsspec.open(path, "w", encoding="utf-8") as handle:
            problems.copy_to(handle, "skipped ")
            notes.copy_to(handle, "note ")
            handle.write(summary + "\n")
        return
    with atomic.atomic_path(path) as partial, open(partial, "x", encoding="utf-8") as f:
        problems.copy_to(f, "skipped ")
        notes.copy_to(f, "note ")
        f.write(summary + "\n")


#: What a batch task returns (:func:`_run_batch`).
_BatchResult = tuple[
    list[tuple[str, str]], list[tuple[str, str]], dict[str, int], int, _Stages
]


def _run_batch(
    item: tuple[str | None, list[str]],
    *,
    out: str,
    names: Sequence[str],
    output: str,
    resume: bool,
    **options: Any,
) -> _BatchResult:
    """Task: one batch of files (:func:`predict_files`), recorded once all are written.

    ``item`` is the batch's record name (None: keep no record) and its files.
    With ``resume``, files whose outputs all exist are left out. A batch with a
    file skipped (unreadable, no face) is not recorded: the next run tries
    that file again. Returns :func:`predict_files`' three, the count of
    files left out, and the seconds spent in each of :data:`STAGES`.
    """
    record, relatives = item
    stages = dict.fromkeys(STAGES, 0.0)
    todo = [
        r
        for r in relatives
        if not (resume and all(_exists(p) for p in _outputs(out, names, r, output)))
    ]
    if todo:
        problems, notes, methods = predict_files(
            todo, out=out, names=names, output=output, stages=stages, **options
        )
    else:
        problems, notes = [], []
        methods = dict.fromkeys(face_crops.ALIGN_METHODS, 0)
    if record is not None and not problems:
        batches.record_batch(out, record, len(relatives))
    return problems, notes, methods, len(relatives) - len(todo), stages


@locks.locks_output("out")
def apply_to_folder(
    model: Model,
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    targets: Sequence[str] | None = None,
    crop: str = "auto",
    margin: float = 0.25,
    block: int | None = None,
    resume: bool = True,
    convert_channels: bool = False,
    resize: str = "lanczos",
    display: str = "clip",
    strength: float = 1.0,
    output: str = "both",
    manifest: str | os.PathLike | None = None,
) -> BatchReport:
    """Synthesise every face photograph under a folder into PNG files.

    The folder is listed as it is walked and cut into batches of ``block``
    files as it goes, submitted a bounded number at a time: neither the
    client nor the graph ever holds the whole collection.

    Parameters
    ----------
    model : Model
        Model to apply, in memory or opened from a store.
    folder : str or path
        Input folder, searched recursively for image files (hidden ones left
        out), in the order of its sorted listing; a local path or an fsspec
        URL (``s3://bucket/photos``, ``memory://photos``).
    out : str or path
        Output folder (local or URL): the photographs with the synthesised
        face pasted back at ``out/<target>/<relative path>.png`` (full size),
        the synthesised crops at ``out/crops/<target>/...`` and the aligned
        input crops at ``out/aligned/...`` (see ``output``), plus
        ``report.txt`` and the records of finished batches in
        ``out/.dmask-progress/``.
    targets : sequence of str, optional
        Subset of the model's targets.
    crop : {"auto", "align", "detect", "center", "none"}
        How faces are taken (:func:`dmask.io.face_crops.align_face`):
        ``align`` moves the face's landmarks to where the model's training
        faces have theirs (:attr:`dmask.Model.landmarks`), else takes the
        square around the face box, else the centre, one report line per file
        that falls back; ``auto`` (default) takes an image that is a face
        crop already (square, at most twice the model's side:
        :func:`dmask.io.face_crops.is_face_crop`) whole and aligns the others.
    margin : float
        Margin around a detected face, as a fraction of its side.
    block : int, optional
        Files per task (a batch); by default :func:`default_block`'s (85
        for 128 x 128 RGB faces and one target, 16 where photographs are
        written).
    resume : bool
        Skip the batches an earlier run recorded as done (one listing of
        ``out/.dmask-progress/``), and in the others the files whose outputs
        all exist. False redoes everything (and forgets the records). The
        records trust the outputs: files deleted from ``out`` by hand are not
        redone unless ``.dmask-progress`` goes too.
    convert_channels : bool
        Turn colour photographs grey for a one-channel model; by default such
        files are skipped, each with a report line (grey photographs given to a
        colour model have their channel copied, with a note).
    resize : {"lanczos", "bilinear", "area"}
        How faces are resized (:func:`dmask.io.face_crops.resize_image`).
    display : {"clip", "stretch"}
        How the synthesised crops become 8-bit pixels: clipped to [0, 1], or
        each image's minimum and maximum stretched to 0 and 255
        (:func:`dmask.io.photographs.to_uint8`); pasted-back photographs are
        always clipped (they keep the photograph's own values around the face).
    strength : float
        Expression strength (see :meth:`dmask.Model.predict`).
    output : {"photo", "crop", "both", "synthesised"}
        Write the pasted-back photographs, the crops (synthesised and
        aligned input), both, or only the synthesised crops (one PNG per
        target and input file, ``out/crops/<target>/...``: for inputs that
        are aligned face crops already, whose aligned copy would be the
        input again).
    manifest : str or path, optional
        A file listing the files to do instead of a listing of the folder:
        paths relative to ``folder``, one per line, or the first column of a
        CSV file (:func:`dmask.apply.batches.read_manifest`), done in the
        manifest's order. It is read twice, streamed: once to check every
        entry before any work, once to run.

    Returns
    -------
    BatchReport

    Raises
    ------
    InputError
        A bad folder, option or manifest (one line naming it).
    """
    started = time.perf_counter()
    source, destination = _places(folder, out)
    check_choice("crop", crop, face_crops.CROP_MODES)
    check_choice("output", output, OUTPUT_KINDS)
    if block is not None and block < 1:
        raise InputError(f"block must be a positive number of files, got {block}")
    strength = check_strength(strength)
    face_crops.check_resize(resize)
    photographs.check_display(display)
    names = list(targets) if targets else model.targets
    for name in names:
        model._target(name)
        if name in (CROPS, ALIGNED):
            raise InputError(
                f"target {name!r} would share its output folder with the "
                f"{name} folder of {out}; rename the target"
            )
    if block is None:
        block = default_block(model.image_shape, model.channels, len(names), output)
    if model.channels not in (1, 3):
        raise InputError(
            f"model {model.dataset.encoding.get('dmask_path', '')} applies to "
            f"{model.channels}-channel images; photographs are grey or RGB"
        )
    if manifest is not None:
        listed = batches.check_manifest(manifest, source)
        logger.info("manifest %s lists %d files", manifest, listed)
        files = batches.read_manifest(manifest)
    else:
        files = batches.nonempty(
            batches.walk_images(source),
            lambda: InputError(f"no image files under {folder}"),
        )
    report = BatchReport(source, destination, names)
    held = sum(
        model.dataset[name].nbytes // model.dataset.sizes["target"] * len(names)
        for name in MODEL_ARRAYS
        if name in model.dataset
    )
    runtime.check_task_memory(
        2 * held, f"applying {model} to photographs (each worker holds the model)"
    )
    canonical = model.landmarks
    if canonical is None and crop in ("auto", "align"):
        logger.warning(
            "model %s records no landmark positions: faces are taken by their "
            "face box, not aligned", model,
        )  # fmt: skip
    if not is_local(destination):
        fs, where = batches.filesystem(destination)
        fs.makedirs(where, exist_ok=True)
    else:
        os.makedirs(destination, exist_ok=True)
    if resume:
        done = batches.done_batches(destination)
    else:
        batches.clear_progress(destination)
        done = set()
    batches.prepare_progress(destination)
    stored = model.dataset.encoding.get("dmask_path")
    if stored:
        arrays: Any = str(stored)
    else:
        arrays = _model_arrays(model.dataset.sel(target=names))
        client = runtime.current_client()
        if client is not None:  # sent to every worker once, not with each task
            arrays = client.scatter([arrays], broadcast=True)[0]
    salt = f"{output}:" + ",".join(names)
    in_flight = max(BLOCKS_IN_FLIGHT, 2 * runtime.task_threads())
    logger.info(
        "synthesising the images %s %s into %s: %d files per task, "
        "%d tasks in flight, %d batches recorded done",
        "listed in" if manifest is not None else "under",
        manifest if manifest is not None else source,
        destination, block, in_flight, len(done),
    )  # fmt: skip

    def todo() -> Iterator[tuple[str, list[str]]]:
        for part in batches.batched(files, block):
            report.scanned += len(part)
            report.batches += 1
            name = batches.batch_id(part, salt)
            if name in done:
                report.batches_done += 1
                report.already_done += len(part)
                continue
            yield name, part

    problems, notes = _Lines(report.problems), _Lines(report.notes)
    report.methods = dict.fromkeys(face_crops.ALIGN_METHODS, 0)

    def finished(item: tuple[str, list[str]], result: Any) -> None:
        found, remarks, methods, already, stages = result
        report.already_done += already
        for stage, seconds in stages.items():
            report.stages[stage] += seconds
        report.written += len(item[1]) - already - len(found)
        for f, why in found:
            problems.add(f"{f}: {why}")
        for f, why in remarks:
            notes.add(f"{f}: {why}")
        for way, n in methods.items():
            report.methods[way] += n

    def submitted(count: int) -> None:
        if count == 1:
            report.first_task = time.perf_counter() - started
            logger.info("first task submitted after %.2f s", report.first_task)

    try:
        report.tasks = batches.run_bounded(
            _run_batch,
            todo(),
            finished,
            kwargs={
                "folder": source,
                "out": destination,
                "names": names,
                "arrays": arrays,
                "field_size": model.field,
                "normalize": model.normalize == "minmax",
                "crop": crop,
                "margin": margin,
                "convert_channels": convert_channels,
                "resize": resize,
                "display": display,
                "strength": strength,
                "canonical": canonical,
                "output": output,
                "resume": resume,
            },
            in_flight=in_flight,
            name="predict_files",
            phase="synthesising images",
            submitted=submitted,
        )
        report.problem_count, report.note_count = problems.count, notes.count
        report.seconds = time.perf_counter() - started
        _write_report(destination, problems, notes, report.summary())
    finally:
        problems.close()
        notes.close()
    logger.info(
        "batch synthesis: %s; %d batches, %d recorded done before, %d tasks",
        report.summary(), report.batches, report.batches_done, report.tasks,
    )  # fmt: skip
    return report


@dataclass
class Synthesised:
    """One input file of a finished batch run, for figures and reports.

    Images are ``(H, W, C)`` floats in [0, 1].

    Attributes
    ----------
    photo : numpy.ndarray
        The photograph as read, in the model's channels.
    crop : numpy.ndarray
        The face as the model saw it: the aligned crop, min-max normalised
        where the model normalises.
    crops : dict of str to numpy.ndarray
        Per target, the synthesised crop (where the run wrote crops).
    photos : dict of str to numpy.ndarray
        Per target, the photograph with the face pasted back (where written).
    """

    photo: np.ndarray
    crop: np.ndarray
    crops: dict[str, np.ndarray]
    photos: dict[str, np.ndarray]


def read_synthesised(
    model: Model,
    folder: str | os.PathLike,
    out: str | os.PathLike,
    resize: str = "lanczos",
    crop: str = "auto",
    max_side: int | None = 512,
) -> dict[str, Synthesised]:
    """Inputs and outputs of a finished batch run, for figures and reports.

    ``resize`` and ``crop`` are the run's (:func:`apply_to_folder`); they
    retake the aligned crop where the run wrote none (``output="photo"``).
    Photographs are read shrunk to at most ``max_side`` pixels on their
    longer side (None: full size), so a folder of large ones stays small.

    Returns
    -------
    dict of str to Synthesised
        Per input file (its relative path without suffix), with the targets
        the run wrote (a run of ``targets=[...]`` wrote some). Files with no
        output are left out.
    """
    found = {}
    for relative in scan_images(folder):
        crops = {t: _output_path(os.path.join(str(out), CROPS), t, relative)
                 for t in model.targets}  # fmt: skip
        photos = {t: _output_path(str(out), t, relative) for t in model.targets}
        crops = {t: p for t, p in crops.items() if os.path.exists(p)}
        photos = {t: p for t, p in photos.items() if os.path.exists(p)}
        if not crops and not photos:
            continue
        try:
            image = photographs.read_image(os.path.join(folder, relative))
        except photographs.ImageReadError:
            continue
        image = face_crops.convert_channels(image, model.channels)
        aligned_file = _aligned_path(str(out), relative)
        if os.path.exists(aligned_file):
            face = face_crops.convert_channels(
                photographs.read_image(aligned_file), model.channels
            )
        else:
            taken = face_crops.align_face(
                image, model.image_shape, crop, model.landmarks,
                channels=model.channels, resize=resize,
            )  # fmt: skip
            if taken is None:
                continue
            face = taken.face
        x = face[None].astype(np.float64) / photographs.dtype_peak(face.dtype)
        shown = minmax.normalize_images(x)[0] if model.normalize == "minmax" else x[0]
        found[str(Path(relative).with_suffix(""))] = Synthesised(
            photo=_shrunk(image, max_side),
            crop=shown,
            crops={t: photographs.read_image(p) / 255.0 for t, p in crops.items()},
            photos={
                t: _shrunk(photographs.read_image(p), max_side)
                for t, p in photos.items()
            },
        )
    return found


def _shrunk(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """An image in [0, 1], its longer side at most ``max_side`` (area average)."""
    peak = photographs.dtype_peak(image.dtype)
    longer = max(image.shape[:2])
    if max_side is None or longer <= max_side:
        return image / peak
    size = tuple(max(1, round(v * max_side / longer)) for v in image.shape[:2])
    return face_crops.resize_image(image, size, "area") / peak
