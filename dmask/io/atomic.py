"""Atomic writes: a file or a folder appears whole at its path, or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from dmask.errors import InputError

__all__ = [
    "OLD_MARK",
    "atomic_path",
    "replace_directory",
    "replace_remote",
    "write_text",
]

#: In the name of an output moved aside while its replacement goes in.
OLD_MARK = ".old-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary name beside ``path`` to write to; renamed onto it on success.

    The temporary name starts with a dot and ends in ``.partial``, so that a
    crash leaves nothing that looks like the finished file; on any error (or an
    interruption) the temporary file is removed and the error goes on.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    temporary = os.path.join(
        folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    )
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_text(path: str | os.PathLike, text: str, sync: bool = False) -> None:
    """Write a text file atomically (through fsspec for ``scheme://`` paths).

    ``sync`` flushes the data to disk before the rename, for files that must
    survive a power cut (reports), at the cost of a few milliseconds.
    """
    path = os.fspath(path)
    if "://" in path:
        import fsspec

        with fsspec.open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return
    with atomic_path(path) as temporary, open(temporary, "x", encoding="utf-8") as f:
        f.write(text)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def replace_directory(partial: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished folder ``partial`` to ``out_dir``.

    An existing ``out_dir`` is refused unless ``overwrite``; then it is moved
    aside first and removed only once the new one is in place.
    """
    if not os.path.lexists(out_dir):
        partial.rename(out_dir)
        return
    if not overwrite:
        raise InputError(f"output directory {out_dir} already exists (pass overwrite)")
    if out_dir.is_dir() and not out_dir.is_symlink():
        old = partial.parent / f".{out_dir.name}{OLD_MARK}{secrets.token_hex(6)}"
        out_dir.rename(old)
        partial.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out_dir.unlink()
        partial.rename(out_dir)


def replace_remote(staged: str, final: str, last: Sequence[str] = ()) -> None:
    """Put the finished folder at URL ``staged`` at URL ``final``; the old goes first.

    Object stores have no rename: the files are copied. The old folder's
    ``last`` files (its root metadata, its manifest) are removed first, so
    that from then on it cannot be opened as complete (never a mix of old and
    new files), and the new ``last`` files are copied after all the others: a
    copy that fails half-way leaves nothing at ``final`` that looks complete,
    while the whole staged folder stays where it is, for another try.
    """
    import fsspec

    fs, location = fsspec.core.url_to_fs(final)
    _, source = fsspec.core.url_to_fs(staged)
    if fs.exists(location):
        for name in last:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(f"{location}/{name}")
        fs.rm(location, recursive=True)
    files = sorted(fs.find(source))
    ending = {f"{source}/{name}" for name in last}
    for name in [f for f in files if f not in ending] + [
        f for f in files if f in ending
    ]:
        fs.copy(name, location + name[len(source) :])
    fs.rm(source, recursive=True)
