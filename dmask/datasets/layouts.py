"""Folder layouts of face datasets (KDEF, RaFD, trainA/trainB pairs, manifests)."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dmask.errors import InputError, check_choice
from dmask.io.locations import absolute, as_path, is_local
from dmask.io.photographs import image_files

__all__ = [
    "ImageRecord",
    "KDEF_EXPRESSIONS",
    "LAYOUTS",
    "MANIFEST_COLUMNS",
    "RAFD_EXPRESSIONS",
    "SPLITS",
    "SYNONYMS",
    "Scan",
    "detect_layout",
    "has_pair_folders",
    "pair_folders",
    "scan",
    "scan_kdef",
    "scan_manifest",
    "scan_pairs",
    "scan_rafd",
]


LAYOUTS: tuple[str, ...] = ("auto", "kdef", "rafd", "pairs", "manifest")


#: KDEF expression codes.
KDEF_EXPRESSIONS = {
    "AF": "afraid",
    "AN": "angry",
    "DI": "disgusted",
    "HA": "happy",
    "NE": "neutral",
    "SA": "sad",
    "SU": "surprised",
}


#: Other spellings of expression names, mapped to dmask's vocabulary.
SYNONYMS = {
    "fearful": "afraid",
    "fear": "afraid",
    "anger": "angry",
    "disgust": "disgusted",
    "happiness": "happy",
    "sadness": "sad",
    "surprise": "surprised",
    "contempt": "contemptuous",
}


RAFD_EXPRESSIONS = frozenset(
    "angry contemptuous disgusted fearful happy neutral sad surprised".split()
)


SPLITS = ("train", "test")


MANIFEST_COLUMNS = ["path", "subject", "expression", "split"]


_KDEF = re.compile(r"([AB])([FM])(\d{2})(AF|AN|DI|HA|NE|SA|SU)(S|HL|HR|FL|FR)", re.I)


_RAFD = re.compile(
    r"rafd(\d{3})_(\d+)_([^_]+)_(female|male)_([a-z]+)_(frontal|left|right)", re.I
)


_PAIR_INDEX = re.compile(r"(?:^|_)(\d+)$")


@dataclass(frozen=True)
class ImageRecord:
    """One photograph of a layout.

    Attributes
    ----------
    path : str
        Absolute file path.
    subject : str
        Identity whose faces form pairs (a KDEF session of one person).
    person : str
        The unit kept on one side of the train/test split.
    expression : str
        Expression name in dmask's vocabulary.
    split : str or None
        ``"train"`` or ``"test"`` when the layout says, else None.
    """

    path: str
    subject: str
    person: str
    expression: str
    split: str | None = None


@dataclass
class Scan:
    """Records found by a layout scan and the problems met.

    Attributes
    ----------
    layout : str
        The layout scanned.
    records : list of ImageRecord
        Files taken, by path.
    lines : list of str
        One report line per problem.
    files : int
        Image files (or manifest rows) looked at.
    skipped_views : int
        Files of other camera views or gaze directions, left out silently.
    unmatched : int
        Files whose name does not follow the layout (or bad manifest rows).
    """

    layout: str
    records: list[ImageRecord] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    files: int = 0
    skipped_views: int = 0
    unmatched: int = 0


def display(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """A path relative to ``folder`` when inside it, else absolute (POSIX form;
    URLs as they are)."""
    if not (is_local(path) and is_local(folder)):
        text, root = str(path), str(folder).rstrip("/") + "/"
        return text[len(root) :] if text.startswith(root) else text
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(os.path.abspath(folder)).as_posix()
    except ValueError:
        return path.as_posix()


def _expression(name: str) -> str:
    name = name.strip().lower()
    return SYNONYMS.get(name, name)


def scan_kdef(folder: str | os.PathLike) -> Scan:
    """KDEF file names (``AF01NES.JPG``): straight views only.

    ``subject`` is session, sex and identity (``AF01``: pairs within one
    session), ``person`` sex and identity (``F01``).
    """
    result = Scan("kdef")
    for path in image_files(folder):
        result.files += 1
        match = _KDEF.fullmatch(path.stem)
        if match is None:
            result.unmatched += 1
            result.lines.append(f"not a KDEF file name: {display(path, folder)}")
            continue
        session, sex, ident, code, view = (g.upper() for g in match.groups())
        if view != "S":
            result.skipped_views += 1
            continue
        result.records.append(
            ImageRecord(
                absolute(path),
                f"{session}{sex}{ident}",
                f"{sex}{ident}",
                KDEF_EXPRESSIONS[code],
            )
        )
    return result


def scan_rafd(folder: str | os.PathLike) -> Scan:
    """RaFD file names (``Rafd090_01_Caucasian_female_happy_frontal.jpg``).

    Only camera angle 090 and frontal gaze are taken; ``subject`` and
    ``person`` are ``rafd`` and the identity number.
    """
    result = Scan("rafd")
    for path in image_files(folder):
        result.files += 1
        match = _RAFD.fullmatch(path.stem)
        if match is None:
            result.unmatched += 1
            result.lines.append(f"not a RaFD file name: {display(path, folder)}")
            continue
        angle, ident, _, _, expression, gaze = match.groups()
        if angle != "090" or gaze.lower() != "frontal":
            result.skipped_views += 1
            continue
        expression = expression.lower()
        if expression not in RAFD_EXPRESSIONS:
            result.unmatched += 1
            result.lines.append(
                f"unknown RaFD expression {expression!r}: {display(path, folder)}"
            )
            continue
        subject = f"rafd{ident}"
        result.records.append(
            ImageRecord(absolute(path), subject, subject, _expression(expression))
        )
    return result


def _halves(root: Path, nested: bool) -> dict[str, tuple[Path, Path]]:
    """Per split, the pair folders a tree may have: ``trainA`` or ``train/trainA``."""
    base = {split: root / split if nested else root for split in SPLITS}
    return {
        split: (base[split] / f"{split}A", base[split] / f"{split}B")
        for split in SPLITS
    }


def _any_half(root: Path, nested: bool) -> bool:
    return any(p.is_dir() for pair in _halves(root, nested).values() for p in pair)


def has_pair_folders(folder: str | os.PathLike) -> bool:
    """Whether a folder has any pair folder, flat or nested (:func:`scan_pairs`)."""
    return _any_half(as_path(folder), False) or _any_half(as_path(folder), True)


def pair_folders(folder: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """The source and target folders of each split present in a pairs tree.

    Raises
    ------
    InputError
        No pair folder, both the flat and the nested form, or a split with
        one half only.
    """
    root = as_path(folder)
    flat, nested = _any_half(root, False), _any_half(root, True)
    if flat and nested:
        raise InputError(
            f"{folder} has both trainA/-style folders and train/trainA/-style ones "
            "(give the folder of one of them)"
        )
    if not (flat or nested):
        raise InputError(
            f"{folder} has no trainA/, trainB/, testA/ or testB/ folder, neither "
            "at its top nor under train/ and test/"
        )
    found = {}
    for split, (a, b) in _halves(root, nested).items():
        if a.is_dir() != b.is_dir():
            have, lack = (a, b) if a.is_dir() else (b, a)
            raise InputError(
                f"{have.parent} has {have.name}/ but no {lack.name}/ "
                "(a split needs both halves)"
            )
        if a.is_dir():
            found[split] = (a, b)
    return found


def scan_pairs(
    folder: str | os.PathLike, source: str = "neutral", target: str = "happy"
) -> Scan:
    """The reference layout: ``trainA/`` sources and ``trainB/`` targets.

    Files pair by the number after the last underscore (``face_12.png``);
    ``testA/`` and ``testB/`` form the test split. The halves lie in the
    folder itself (``trainA/``, ``trainB/``, ``testA/``, ``testB/``: any
    split alone, as ``dataset/train/``) or one level down, as the reference
    implementation's tree (``train/trainA/``, ``train/trainB/``,
    ``test/testA/``, ``test/testB/``). A split without one of its halves is
    an error.
    """
    if source == target:
        raise InputError(f"source and target expressions are both {source!r}")
    halves = pair_folders(folder)
    result = Scan("pairs")
    for split, pair in halves.items():
        for sub, expression in zip(pair, (source, target), strict=True):
            for path in image_files(sub):
                result.files += 1
                match = _PAIR_INDEX.search(path.stem)
                if match is None:
                    result.unmatched += 1
                    result.lines.append(
                        f"no pair number in file name: {display(path, folder)}"
                    )
                    continue
                subject = f"{split}{int(match.group(1)):05d}"
                result.records.append(
                    ImageRecord(absolute(path), subject, subject, expression, split)
                )
    return result


def scan_manifest(manifest: str | os.PathLike) -> Scan:
    """A CSV manifest with header ``path,subject,expression[,split]``.

    Paths are relative to the manifest's folder or absolute. Bad rows (wrong
    field count, an empty field, a split other than train/test, a missing
    file) become report lines; an empty ``split`` leaves the split to the seed.

    Raises
    ------
    InputError
        The manifest cannot be read, has another header, or has no usable row.
    """
    name = os.fspath(manifest)
    base = as_path(absolute(name)).parent
    try:
        if is_local(name):
            with open(name, newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.reader(handle))
        else:
            import fsspec

            with fsspec.open(name, "r", newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise InputError(f"cannot read manifest {name}: {reason}") from exc
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if header not in (MANIFEST_COLUMNS[:3], MANIFEST_COLUMNS):
        raise InputError(
            f"manifest {name} must start with the header "
            "path,subject,expression[,split]"
        )
    result = Scan("manifest")
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        result.files += 1
        problem = _manifest_problem(row, header)
        values = [cell.strip() for cell in row]
        if problem is None:
            if not is_local(values[0]):
                path = as_path(values[0])
            else:
                path = Path(os.path.expanduser(values[0]))
                path = path if path.is_absolute() else base / path
            if not path.is_file():
                problem = f"file not found: {values[0]}"
        if problem is not None:
            result.unmatched += 1
            result.lines.append(f"manifest {name} line {number}: {problem}")
            continue
        split = values[3].lower() if len(values) > 3 and values[3] else None
        result.records.append(
            ImageRecord(
                absolute(path),
                values[1],
                values[1],
                _expression(values[2]),
                split,
            )
        )
    if not result.records:
        raise InputError(
            f"manifest {name} has no usable row ({len(result.lines)} bad rows)"
        )
    return result


def _manifest_problem(row: list[str], header: list[str]) -> str | None:
    if len(row) != len(header):
        return f"expected {len(header)} fields, got {len(row)}"
    for label, cell in zip(header[:3], row, strict=False):
        if not cell.strip():
            return f"empty {label}"
    if len(header) == 4 and row[3].strip() and row[3].strip().lower() not in SPLITS:
        return f"unknown split {row[3].strip()!r} (train or test)"
    return None


def detect_layout(folder: str | os.PathLike, manifest: str | None = None) -> str:
    """The layout of a folder: manifest, pairs, or kdef/rafd by file names.

    Raises
    ------
    InputError
        Nothing in the folder matches a layout.
    """
    if manifest is not None:
        return "manifest"
    if has_pair_folders(folder):
        return "pairs"
    stems = [p.stem for p in image_files(folder)]
    kdef = sum(_KDEF.fullmatch(s) is not None for s in stems)
    rafd = sum(_RAFD.fullmatch(s) is not None for s in stems)
    if kdef == rafd == 0:
        raise InputError(
            f"cannot tell the layout of {folder}: no KDEF or RaFD file names and no "
            "trainA/ and trainB/ folders, nor train/trainA/ ... (give a manifest)"
        )
    return "kdef" if kdef >= rafd else "rafd"


def scan(
    folder: str | os.PathLike,
    layout: str = "auto",
    manifest: str | os.PathLike | None = None,
    source: str = "neutral",
    target_expression: str = "happy",
) -> Scan:
    """Records of a folder in one of :data:`LAYOUTS`."""
    check_choice("layout", layout, LAYOUTS)
    if manifest is not None and layout not in ("auto", "manifest"):
        raise InputError(
            f"a manifest is read only with layout 'manifest', not {layout!r}"
        )
    if layout == "auto":
        layout = detect_layout(
            folder, None if manifest is None else os.fspath(manifest)
        )
    if layout == "manifest":
        if manifest is None:
            raise InputError("layout 'manifest' needs a manifest file")
        return scan_manifest(manifest)
    if layout == "pairs":
        return scan_pairs(folder, source, target_expression)
    return scan_kdef(folder) if layout == "kdef" else scan_rafd(folder)
