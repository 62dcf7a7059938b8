"""Ingest of photographs into a dataset store: find faces, crop, resize, write."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import dask
import numpy as np

from dmask.core import alignment
from dmask.core.resize import check_size
from dmask.datasets.layouts import LAYOUTS, ImageRecord, display, scan
from dmask.errors import InputError, check_choice
from dmask.graph import runtime
from dmask.io import atomic, dataset_store, landmarks, locations, locks, stores
from dmask.io.face_crops import (
    ALIGN_METHODS,
    CROP_MODES,
    check_resize,
    crop_box,
    crop_resize,
    find_crop,
    is_face_crop,
    warp_face,
)
from dmask.io.photographs import ImageReadError, image_files, read_image

logger = logging.getLogger(__name__)

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_SIDE",
    "FileInfo",
    "IngestReport",
    "SCAN_BLOCK",
    "canonical_landmarks",
    "ingest",
    "inspect_files",
    "write_samples",
]


#: Bytes of one chunk of images aimed at (as :mod:`dmask.datasets.synthetic`).
CHUNK_BYTES = 2 * 2**20


#: Largest spatial chunk side.
CHUNK_SIDE = 128


#: Files per pass-1 task by default.
SCAN_BLOCK = 16


@dataclass(frozen=True)
class FileInfo:
    """What pass 1 learned about one file.

    Attributes
    ----------
    status : str
        ``"ok"``, ``"unreadable"`` or ``"no_face"``.
    shape : tuple of int or None
        ``(H, W)`` as read.
    dtype : str or None
        ``"uint8"`` or ``"uint16"``.
    channels : int or None
        1 or 3.
    box : tuple of int or None
        Crop box ``(y0, y1, x0, x1)``.
    message : str
        Why the file is unreadable.
    precropped : bool
        Taken whole as a face crop already (crop ``auto``).
    points : tuple or None
        The five landmarks ``((x, y), ...)`` in the image's pixels, when found
        (:func:`dmask.io.landmarks.detect_landmarks`).
    method : str
        How the face is taken, one of :data:`dmask.io.face_crops.ALIGN_METHODS`.
    """

    status: str
    shape: tuple[int, int] | None = None
    dtype: str | None = None
    channels: int | None = None
    box: tuple[int, int, int, int] | None = None
    message: str = ""
    precropped: bool = False
    points: tuple[tuple[float, float], ...] | None = None
    method: str = "face box"


@dataclass
class IngestReport:
    """Outcome of :func:`ingest`.

    Attributes
    ----------
    store, report_path : str
        The dataset store and its report file.
    layout : str
        The layout used.
    files : int
        Image files (or manifest rows) scanned.
    taken : int
        Samples written to the store.
    skipped_views, unmatched, unreadable, no_face, duplicates : int
        Files left out, by reason.
    precropped : int
        Files taken whole as face crops already (crop ``auto``).
    methods : dict of str to int
        How the stored faces were taken
        (:data:`dmask.io.face_crops.ALIGN_METHODS`).
    landmarks : int
        Stored faces whose landmarks were found (their mean is the dataset's
        canonical positions).
    subjects_kept, subjects_left_out : int
        Subjects in the store, and those without a usable pair.
    train, test : int
        Samples of each split.
    lines : list of str
        One line per problem, then the summary.
    """

    store: str
    report_path: str
    layout: str
    files: int = 0
    taken: int = 0
    skipped_views: int = 0
    unmatched: int = 0
    unreadable: int = 0
    no_face: int = 0
    duplicates: int = 0
    precropped: int = 0
    methods: dict[str, int] = field(default_factory=dict)
    landmarks: int = 0
    subjects_kept: int = 0
    subjects_left_out: int = 0
    train: int = 0
    test: int = 0
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The one-line summary that ends the report."""
        return (
            f"summary: layout {self.layout}, files scanned {self.files}, "
            f"taken {self.taken} (train {self.train}, test {self.test}), "
            f"skipped views {self.skipped_views}, unmatched names {self.unmatched}, "
            f"unreadable {self.unreadable}, no face {self.no_face}, "
            f"duplicates {self.duplicates}, face crops taken whole "
            f"{self.precropped}, subjects kept {self.subjects_kept}, "
            f"subjects left out {self.subjects_left_out}, landmarks found "
            f"{self.landmarks}"
            + "".join(f", by {way} {n}" for way, n in self.methods.items() if n)
        )

    def left_out(self) -> str:
        """What was left out, counted by reason (the nonzero counts)."""
        counts = {
            "unmatched names": self.unmatched,
            "unreadable": self.unreadable,
            "no face": self.no_face,
            "duplicates": self.duplicates,
            "subjects without a pair": self.subjects_left_out,
        }
        parts = [f"{name} {n}" for name, n in counts.items() if n]
        return "left out: " + (", ".join(parts) if parts else "nothing")


def inspect_files(
    paths: Sequence[str],
    crop: str,
    margin: float,
    size: tuple[int, int] | None = None,
) -> list[FileInfo]:
    """Task (pass 1): read files one by one and keep their metadata and crop box.

    ``size`` is the output size (None: chosen later), which crop ``auto``
    compares images with (:func:`dmask.io.face_crops.is_face_crop`). The
    landmarks are looked for in every image (where a detector is installed):
    ``align`` takes a face by them, and every mode measures where they lie
    in the crops (landmarks outside the crop box, of another face than the
    one cropped, are not counted). With ``align``, a face with landmarks has
    the square around the landmark detector's face box as its box.
    """
    infos = []
    for path in paths:
        try:
            image = read_image(path)
        except ImageReadError as exc:
            infos.append(FileInfo("unreadable", message=exc.reason or str(exc)))
            continue
        found = landmarks.detect_landmarks(image)
        precropped = crop == "auto" and is_face_crop(image.shape, size)
        if crop == "align" and found is not None:
            box, method = crop_box(image.shape, found[1], margin), "landmarks"
        else:
            box = find_crop(image, crop, margin, size)
            if found is not None and not _within(found[0], box):
                found = None  # dlib's face is not the one cropped: not measured
            method = (
                "whole image" if precropped or crop == "none"
                else "centre" if crop == "center" else "face box"
            )  # fmt: skip
        infos.append(
            FileInfo(
                "ok" if box is not None else "no_face",
                (int(image.shape[0]), int(image.shape[1])),
                image.dtype.name,
                int(image.shape[2]),
                None if box is None else tuple(int(v) for v in box),
                precropped=precropped,
                points=None
                if found is None
                else tuple((float(x), float(y)) for x, y in found[0]),
                method=method,
            )
        )
    return infos


def _within(points: np.ndarray, box: tuple[int, int, int, int] | None) -> bool:
    """Whether every point lies in the crop box ``(y0, y1, x0, x1)``."""
    if box is None:
        return False
    y0, y1, x0, x1 = box
    xs, ys = points[:, 0], points[:, 1]
    return bool(((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).all())


def canonical_landmarks(
    infos: Sequence[FileInfo], size: tuple[int, int]
) -> np.ndarray | None:
    """The mean position of the landmarks in their faces' crops, as fractions.

    Each face with landmarks contributes them as its box crop (resized to
    ``size``) has them; None when no face has landmarks.
    """
    found = [
        alignment.to_fractions(
            alignment.apply_transform(
                alignment.box_transform(info.box, size), np.asarray(info.points)
            ),
            size,
        )
        for info in infos
        if info.points is not None and info.box is not None
    ]
    return np.mean(found, axis=0) if found else None


def write_samples(
    path: str,
    start: int,
    files: Sequence[str],
    boxes: Sequence[tuple[int, int, int, int]],
    size: tuple[int, int],
    channels: int,
    dtype: str,
    resize: str = "lanczos",
    points: Sequence[tuple | None] | None = None,
    canonical: np.ndarray | None = None,
) -> tuple[int, int]:
    """Task (pass 2): crop, resize and write samples ``start:start+len(files)``.

    A face with ``points`` (and a ``canonical`` position for them) is moved
    by the similarity that takes its landmarks there; the others are cut by
    their box.
    """
    height, width = size
    out = np.empty((len(files), height, width, channels), dtype=dtype)
    for i, (name, box) in enumerate(zip(files, boxes, strict=True)):
        image = read_image(name)
        found = None if points is None or canonical is None else points[i]
        if found is not None:
            face, _ = warp_face(image, np.asarray(found), canonical, size, channels)
        else:
            face = crop_resize(image, box, size, channels, resize)
        if out.dtype == np.uint16 and face.dtype == np.uint8:
            face = face.astype(np.uint16) * 257
        out[i] = face
    return dataset_store.write_dataset_block(path, start, out)


@dataclass
class _Selection:
    samples: list[ImageRecord]
    lines: list[str]
    duplicates: int
    kept: list[str]
    left_out: int


def _select(
    records: Sequence[ImageRecord], source: str, folder: str | os.PathLike
) -> _Selection:
    """Drop duplicates and subjects without a pair; order expression-major."""
    lines: list[str] = []
    chosen: dict[tuple[str, str], ImageRecord] = {}
    duplicates = 0
    for record in sorted(records, key=lambda r: r.path):
        key = (record.subject, record.expression)
        if key in chosen:
            duplicates += 1
            lines.append(
                f"duplicate: {display(record.path, folder)} (subject {key[0]}, "
                f"{key[1]}; keeping {display(chosen[key].path, folder)})"
            )
        else:
            chosen[key] = record
    by_subject: dict[str, set[str]] = {}
    for subject, expression in chosen:
        by_subject.setdefault(subject, set()).add(expression)
    everything = {e for expressions in by_subject.values() for e in expressions}
    kept, left_out = [], 0
    for subject in sorted(by_subject):
        have = by_subject[subject]
        files = ", ".join(
            display(chosen[(subject, e)].path, folder) for e in sorted(have)
        )
        if source not in have:
            left_out += 1
            lines.append(f"subject {subject} left out: no {source} image ({files})")
        elif len(have) == 1:
            left_out += 1
            lines.append(f"subject {subject} left out: only a {source} image ({files})")
        else:
            kept.append(subject)
            missing = sorted(everything - have)
            if missing:
                lines.append(f"subject {subject} lacks {', '.join(missing)}")
    others = sorted({e for s in kept for e in by_subject[s]} - {source})
    samples = [
        chosen[(subject, expression)]
        for expression in [source, *others]
        for subject in kept
        if (subject, expression) in chosen
    ]
    return _Selection(samples, lines, duplicates, kept, left_out)


def _assign_splits(
    samples: Sequence[ImageRecord], seed: int, test_fraction: float
) -> tuple[dict[str, str], list[str]]:
    """Split per person: explicit splits win, the rest shuffled by ``seed``."""
    lines: list[str] = []
    explicit: dict[str, str] = {}
    for record in sorted(samples, key=lambda r: r.path):
        if record.split is None:
            continue
        known = explicit.setdefault(record.person, record.split)
        if known != record.split:
            lines.append(
                f"person {record.person} is given both splits; keeping {known} "
                f"({os.path.basename(record.path)} says {record.split})"
            )
    persons = sorted({r.person for r in samples})
    free = [p for p in persons if p not in explicit]
    n_test = round(test_fraction * len(free))
    if test_fraction > 0 and len(free) >= 2:
        n_test = min(max(1, n_test), len(free) - 1)
    order = np.random.default_rng(seed).permutation(len(free))
    test = {free[i] for i in order[:n_test]}
    splits = {p: ("test" if p in test else "train") for p in free}
    splits.update(explicit)
    return splits, lines


def _check_arguments(
    layout: str,
    size: Sequence[int] | None,
    crop: str,
    margin: float,
    channels: int | None,
    test_fraction: float,
    source: str,
    target_expression: str,
    resize: str = "lanczos",
) -> tuple[int, int] | None:
    check_resize(resize)
    check_choice("layout", layout, LAYOUTS)
    check_choice("crop", crop, CROP_MODES)
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
        raise InputError(f"margin must be a non-negative number, got {margin!r}")
    if channels not in (None, 1, 3):
        raise InputError(f"channels must be 1, 3 or None, got {channels!r}")
    if not (isinstance(test_fraction, int | float) and 0 <= test_fraction < 1):
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if not source or not target_expression:
        raise InputError("source and target_expression must be non-empty")
    if size is None:
        return None
    height, width = check_size(size)
    if height < 8 or width < 8:
        raise InputError(f"size must be at least 8x8, got {height}x{width}")
    return height, width


def _check_paths(folder: str | os.PathLike, out: str | os.PathLike) -> None:
    if not locations.as_path(folder).is_dir():
        raise InputError(f"input folder {folder} does not exist or is not a folder")
    if not (locations.is_local(out) and locations.is_local(folder)):
        if str(out).rstrip("/").startswith(str(folder).rstrip("/") + "/"):
            raise InputError(
                f"output store {out} is inside the input folder {folder}; "
                "choose another"
            )
        return
    inside = os.path.realpath(out)
    root = os.path.realpath(folder)
    if inside == root or inside.startswith(root.rstrip(os.sep) + os.sep):
        raise InputError(
            f"output store {out} is inside the input folder {folder}; choose another"
        )


def _report_path(out: str | os.PathLike) -> str:
    return str(out).rstrip("/").rstrip(os.sep) + ".report.txt"


def _fail(report: IngestReport, lines: Sequence[str], message: str) -> NoReturn:
    """Write the report of a failed ingest, then raise ``message`` pointing to it."""
    report.lines = [*lines, report.summary(), f"ingest failed: {message}"]
    atomic.write_text(report.report_path, "\n".join(report.lines) + "\n")
    raise InputError(f"{message}; {report.left_out()}; see {report.report_path}")


def _resolve_size(
    size: tuple[int, int] | None,
    crop: str,
    samples: Sequence[ImageRecord],
    infos: dict[str, FileInfo],
    folder: str | os.PathLike,
) -> tuple[int, int]:
    if size is not None:
        return size
    if crop == "none":
        first = samples[0]
        shape = infos[first.path].shape
        for record in samples[1:]:
            other = infos[record.path].shape
            if other != shape:
                raise InputError(
                    f"images differ in size: {display(first.path, folder)} is "
                    f"{shape[0]}x{shape[1]}, {display(record.path, folder)} is "
                    f"{other[0]}x{other[1]} (give a size or crop 'center')"
                )
        return shape
    side = min(infos[r.path].box[1] - infos[r.path].box[0] for r in samples)
    return side, side


def _chunks(n: int, size: tuple[int, int], channels: int, itemsize: int) -> tuple:
    tile = (min(size[0], CHUNK_SIDE), min(size[1], CHUNK_SIDE))
    per_sample = tile[0] * tile[1] * channels * itemsize
    block = int(max(1, min(n, CHUNK_BYTES // per_sample)))
    return (block, *tile, channels)


@locks.locks_output("out")
def ingest(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = "auto",
    manifest: str | os.PathLike | None = None,
    size: tuple[int, int] | None = (128, 128),
    crop: str = "auto",
    margin: float = 0.25,
    channels: int | None = None,
    source: str = "neutral",
    target_expression: str = "happy",
    seed: int = 0,
    test_fraction: float = 0.25,
    overwrite: bool = False,
    block: int | None = None,
    resize: str = "lanczos",
) -> IngestReport:
    """Build a dataset store from a folder of face photographs.

    Parameters
    ----------
    folder : str or path
        Input folder.
    out : str or path
        Output dataset store; the report goes to ``<out>.report.txt`` (also
        when the ingest fails for want of usable faces).
    layout : {"auto", "kdef", "rafd", "pairs", "manifest"}
        How file names map to subjects and expressions (pairs: ``trainA/``,
        ``trainB/``, ... or ``train/trainA/``, ...; see
        :func:`dmask.datasets.layouts.scan_pairs`).
    manifest : str or path, optional
        CSV ``path,subject,expression[,split]`` (implies layout "manifest").
    size : tuple of int or None
        Stored ``(H, W)``. None: the common size with crop "none", else the
        smallest crop.
    crop : {"auto", "align", "detect", "center", "none"}
        Face crop (see :func:`dmask.io.face_crops.prepare_face`): ``auto``
        takes images that are face crops already (square, at most twice the
        output's side) whole and finds the face box in the others; ``align``
        moves every face's landmarks to their mean position over the dataset
        (measured in the square around each face box), and takes a face
        without landmarks by its face box (one report line each). Every mode
        stores the landmarks' mean position in the crops as the ``landmarks``
        attribute (where any face has them), which a model trained on the
        store records, and the way each face was taken as ``taken_by``.
    margin : float
        Margin around detected faces, a fraction of the face side.
    channels : {1, 3, None}
        Stored channels; None: the most any file has.
    source : str
        Source expression; subjects without it are left out.
    target_expression : str
        Expression of ``trainB/`` and ``testB/`` in the pairs layout.
    seed : int
        Seed of the subject-level train/test split.
    test_fraction : float
        Fraction of persons held out for testing, in [0, 1).
    overwrite : bool
        Replace an existing store.
    block : int, optional
        Files per task (default 16 in pass 1, one chunk of samples in pass 2).
    resize : {"lanczos", "bilinear", "area"}
        How crops are resized (:func:`dmask.io.face_crops.resize_image`);
        ``bilinear`` is OpenCV's default, as the reference implementation's.

    Returns
    -------
    IngestReport
        Counts, report lines and the store's path.

    Raises
    ------
    InputError
        Bad arguments, a missing or empty folder, no pair of faces, an output
        inside the input folder, or mixed sizes with crop "none" and no size.
        Once files were scanned, the report is written first and the message
        names it.
    StoreError
        The output exists and ``overwrite`` is false.
    """
    size = _check_arguments(
        layout,
        size,
        crop,
        margin,
        channels,
        test_fraction,
        source,
        target_expression,
        resize,
    )
    if block is not None and int(block) < 1:
        raise InputError(f"block must be a positive integer, got {block!r}")
    if size is not None:  # a task's block of faces (16 bit at most), one face's
        n_channels = channels or 3  # float64 temporaries, and its photograph
        first = _chunks(1 << 30, size, n_channels, 1)[0]
        span = first * max(1, round(int(block) / first)) if block else first
        pixels = size[0] * size[1] * n_channels
        runtime.check_task_memory(
            span * pixels * 2 + 4 * pixels * 8, f"faces of {size[0]}x{size[1]}"
        )
    _check_paths(folder, out)
    if not overwrite:
        stores.prepare_output(out, overwrite=False)
    if manifest is None and not image_files(folder):
        raise InputError(f"input folder {folder} has no image files")

    found = scan(folder, layout, manifest, source, target_expression)
    report = IngestReport(
        store=locations.store_path(out),
        report_path=_report_path(out),
        layout=found.layout,
        files=found.files,
        skipped_views=found.skipped_views,
        unmatched=found.unmatched,
    )
    lines = list(found.lines)
    if not found.records:
        _fail(
            report,
            lines,
            f"no usable image in {folder} for layout {found.layout} "
            f"({found.files} files scanned)",
        )
    logger.info(
        "ingest: %d files of layout %s in %s", len(found.records), found.layout, folder
    )

    # Pass 1: metadata and crop boxes.
    paths = [r.path for r in found.records]
    step = int(block) if block else SCAN_BLOCK
    task = dask.delayed(inspect_files, pure=True)
    parts = runtime.compute(
        *[
            task(paths[i : i + step], crop, float(margin), size)
            for i in range(0, len(paths), step)
        ],
        phase="inspecting images",
    )
    infos = dict(zip(paths, [info for part in parts for info in part], strict=True))
    usable = []
    for record in found.records:
        info = infos[record.path]
        report.precropped += info.precropped
        if info.status == "unreadable":
            report.unreadable += 1
            lines.append(f"unreadable: {display(record.path, folder)}: {info.message}")
        elif info.status == "no_face":
            report.no_face += 1
            lines.append(f"no face found: {display(record.path, folder)}")
        else:
            usable.append(record)

    # Selection and split.
    chosen = _select(usable, source, folder)
    lines += chosen.lines
    report.duplicates = chosen.duplicates
    report.subjects_kept = len(chosen.kept)
    report.subjects_left_out = chosen.left_out
    if not chosen.samples:
        _fail(
            report,
            lines,
            f"no subject in {folder} has a {source} image and another expression "
            f"({len(usable)} usable images)",
        )
    splits, split_lines = _assign_splits(chosen.samples, seed, test_fraction)
    lines += split_lines
    samples = chosen.samples
    try:
        size = _resolve_size(size, crop, samples, infos, folder)
    except InputError as exc:
        _fail(report, lines, str(exc))
    report.methods = dict.fromkeys(ALIGN_METHODS, 0)
    for record in samples:
        info = infos[record.path]
        report.methods[info.method] += 1
        report.landmarks += info.points is not None
        if crop == "align" and info.method != "landmarks":
            lines.append(
                f"no landmarks found: face box: {display(record.path, folder)}"
            )
    canonical = canonical_landmarks([infos[r.path] for r in samples], size)
    if canonical is None:
        logger.warning(
            "ingest: no landmarks found in any face%s: models trained on %s will "
            "take photographs by their face box",
            "" if landmarks.available() else f" ({landmarks.missing_reason()})",
            out,
        )
    n_channels = channels or max(infos[r.path].channels for r in samples)
    dtype = (
        "uint16" if any(infos[r.path].dtype == "uint16" for r in samples) else "uint8"
    )
    peak = 65535 if dtype == "uint16" else 255

    # Pass 2: pixels, chunk by chunk.
    n = len(samples)
    chunks = _chunks(n, size, n_channels, np.dtype(dtype).itemsize)
    span = chunks[0] * max(1, round(int(block) / chunks[0])) if block else chunks[0]
    sample_split = [splits[r.person] for r in samples]
    report.train = sample_split.count("train")
    report.test = sample_split.count("test")
    report.taken = n
    report_path = report.report_path
    written = dataset_store.create_dataset_template(
        out,
        (n, *size, n_channels),
        chunks,
        {
            "subject": [r.subject for r in samples],
            "expression": [r.expression for r in samples],
            "split": sample_split,
            "person": [r.person for r in samples],
            "file": [display(r.path, folder) for r in samples],
            "taken_by": [infos[r.path].method for r in samples],
        },
        {
            "origin": "dmask ingest",
            "layout": found.layout,
            "folder": locations.absolute(folder),
            "manifest": None if manifest is None else locations.absolute(manifest),
            "crop": crop,
            "resize": resize,
            "margin": float(margin),
            "size": [int(size[0]), int(size[1])],
            "source": source,
            "seed": int(seed),
            "test_fraction": float(test_fraction),
            "n_subjects": len(chosen.kept),
            "value_range": [0, peak],
            **(
                {}
                if canonical is None
                else {
                    "landmarks": alignment.landmarks_attribute(
                        canonical, report.landmarks, "detected"
                    )
                }
            ),
        },
        dtype=dtype,
        overwrite=overwrite,
    )
    path = locations.store_path(written)
    write = dask.delayed(write_samples, pure=True)
    tasks = [
        write(
            path,
            s0,
            [r.path for r in samples[s0 : s0 + span]],
            [infos[r.path].box for r in samples[s0 : s0 + span]],
            tuple(size),
            n_channels,
            dtype,
            resize,
            [infos[r.path].points for r in samples[s0 : s0 + span]],
            canonical if crop == "align" else None,
        )
        for s0 in range(0, n, span)
    ]
    logger.info(
        "ingest: writing %d faces of %dx%dx%d %s in %d tasks to %s",
        n,
        size[0],
        size[1],
        n_channels,
        dtype,
        len(tasks),
        out,
    )
    runtime.compute(*tasks, phase="reading images")

    report.lines = [*lines, report.summary()]
    stores.finalize_store(written)  # then the report of the store now in place
    atomic.write_text(report_path, "\n".join(report.lines) + "\n")
    logger.info("ingest: %s", report.summary())
    return report
