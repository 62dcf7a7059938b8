"""Folders of millions of files: streamed listings, batches and progress records.

A folder is listed as it is walked (a depth-first walk, each directory's
entries sorted by name, so the order is the one of a sorted listing of the
whole tree), or read line by line from a manifest; the paths are cut into
batches of a fixed number of files as they come. Neither the listing nor the
batches are ever held whole: only one directory's names at a time, and the
batches in flight.

A batch is named by a hash of its paths and of what it writes
(:func:`batch_id`); when all of a batch's files are written its task leaves an
empty record ``<id>`` in the hidden folder :data:`PROGRESS` under the output.
A re-run lists that folder once (one name per batch, not per file) and skips
the batches recorded there; other batches check their files' outputs one by
one in their task. Local paths and fsspec URLs (``s3://``, ``memory://``, ...)
both work.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import logging
import os
import posixpath
import shutil
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dmask.errors import InputError
from dmask.graph import runtime
from dmask.io import atomic
from dmask.io.locations import is_local
from dmask.io.photographs import IMAGE_SUFFIXES

__all__ = [
    "PROGRESS",
    "batch_id",
    "batched",
    "check_manifest",
    "done_batches",
    "clear_progress",
    "join",
    "read_manifest",
    "record_batch",
    "walk_images",
]

logger = logging.getLogger(__name__)

#: Hidden folder under the output holding one record per finished batch.
PROGRESS = ".dmask-progress"


def join(base: str, *parts: str) -> str:
    """``base`` and relative POSIX ``parts``: joined by ``/`` for URLs."""
    if not is_local(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of a URL and the URL's path on it."""
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _local_entries(path: str) -> list[tuple[str, bool]]:
    """One local directory's visible entries ``(name, is_directory)``, sorted.

    Directories are not followed through symbolic links; files are (as
    :func:`dmask.io.photographs.image_files`).
    """
    entries = []
    with os.scandir(path) as scan:
        for entry in scan:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                entries.append((entry.name, True))
            elif _is_image(entry.name) and entry.is_file():
                entries.append((entry.name, False))
    entries.sort()
    return entries


def _remote_entries(fs: Any, path: str) -> list[tuple[str, bool]]:
    """One remote directory's visible entries ``(name, is_directory)``, sorted."""
    entries = []
    for info in fs.ls(path, detail=True):
        name = posixpath.basename(str(info["name"]).rstrip("/"))
        if not name or name.startswith("."):
            continue
        if info.get("type") == "directory":
            entries.append((name, True))
        elif _is_image(name):
            entries.append((name, False))
    entries.sort()
    return entries


def walk_images(folder: str | os.PathLike) -> Iterator[str]:
    """Relative POSIX paths of the image files under ``folder``, streamed.

    The order is that of the sorted list of every path (a depth-first walk
    with each directory's entries sorted by name); hidden files and folders
    (names starting with a dot) are left out. Only the directories on the
    way down are held, one list of names each.

    Parameters
    ----------
    folder : str or path
        A local folder or an fsspec URL of one.

    Yields
    ------
    str
        One image file's path relative to ``folder``.
    """
    folder = os.fspath(folder)
    if not is_local(folder):
        fs, root = filesystem(folder)
        root = root.rstrip("/")

        def entries(relative: str) -> list[tuple[str, bool]]:
            return _remote_entries(
                fs, posixpath.join(root, relative) if relative else root
            )
    else:

        def entries(relative: str) -> list[tuple[str, bool]]:
            return _local_entries(os.path.join(folder, relative))

    stack: list[tuple[str, Iterator[tuple[str, bool]]]] = [("", iter(entries("")))]
    while stack:
        prefix, names = stack[-1]
        entry = next(names, None)
        if entry is None:
            stack.pop()
            continue
        name, is_directory = entry
        relative = f"{prefix}{name}"
        if is_directory:
            stack.append((relative + "/", iter(entries(relative))))
        else:
            yield relative


def _open_text(path: str) -> Any:
    if not is_local(path):
        import fsspec

        return fsspec.open(path, "r", encoding="utf-8", newline="").open()
    return open(path, encoding="utf-8", newline="")


#: A first CSV row with one of these in its first column is a header.
_HEADERS = frozenset({"path", "file", "filename", "relative_path", "name"})


def _manifest_lines(manifest: str) -> Iterator[tuple[int, str]]:
    """``(line number, path)`` of each entry of a manifest, streamed."""
    try:
        handle = _open_text(manifest)
    except FileNotFoundError:
        raise InputError(f"manifest {manifest} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"manifest {manifest} is a folder, not a file") from None
    with handle:
        if manifest.lower().endswith(".csv"):
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or not row[0].strip():
                    continue
                if number == 1 and row[0].strip().lower() in _HEADERS:
                    continue
                yield number, row[0].strip()
            return
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                yield number, text


def _checked_entry(manifest: str, number: int, path: str) -> str:
    """A manifest entry as a relative POSIX path inside the folder, or an error."""
    relative = posixpath.normpath(path.replace("\\", "/"))
    if (
        not is_local(path)
        or posixpath.isabs(relative)
        or relative == ".."
        or relative.startswith("../")
        or relative == "."
    ):
        raise InputError(
            f"manifest {manifest} line {number}: {path!r} is not a path inside "
            "the input folder (give paths relative to it)"
        )
    return relative


def read_manifest(manifest: str | os.PathLike) -> Iterator[str]:
    """The relative paths a manifest lists, streamed, each checked.

    A manifest is a text file of paths relative to the input folder, one per
    line (blank lines and lines starting with ``#`` left out), or a CSV file
    (``.csv``) whose first column holds them (a first row ``path``, ``file``
    or ``name`` is a header). Paths keep the manifest's order.

    Raises
    ------
    InputError
        The manifest is missing, or an entry is absolute or leaves the folder
        (one line naming the manifest, the line and the entry).
    """
    manifest = os.fspath(manifest)
    for number, path in _manifest_lines(manifest):
        yield _checked_entry(manifest, number, path)


def check_manifest(manifest: str | os.PathLike, folder: str | os.PathLike) -> int:
    """Read a whole manifest once (streamed) and check every entry; the count.

    Entries must stay inside the folder (:func:`read_manifest`); under a
    local folder each must also be a file (under a URL that is left to the
    tasks, which report a missing file as unreadable, rather than asking the
    server about every file from here).

    Raises
    ------
    InputError
        The manifest is missing or empty, or an entry is bad or missing, in
        one line naming the manifest and the entry.
    """
    manifest, folder = os.fspath(manifest), os.fspath(folder)
    count = 0
    for number, path in _manifest_lines(manifest):
        relative = _checked_entry(manifest, number, path)
        if is_local(folder) and not os.path.isfile(os.path.join(folder, relative)):
            raise InputError(
                f"manifest {manifest} line {number}: {path} is not a file "
                f"under {folder}"
            )
        count += 1
    if not count:
        raise InputError(f"manifest {manifest} lists no files")
    return count


def batched(paths: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive batches of ``size`` paths (the last one shorter), streamed."""
    batch: list[str] = []
    for path in paths:
        batch.append(path)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def batch_id(paths: Iterable[str], salt: str = "") -> str:
    """A batch's name: a hash of its paths (in order) and ``salt``.

    ``salt`` holds what the batch writes (targets and output kinds), so that a
    run asking for more redoes the batches a narrower one recorded.
    """
    digest = hashlib.blake2b(salt.encode(), digest_size=16)
    for path in paths:
        digest.update(b"\0" + path.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def done_batches(out: str) -> set[str]:
    """The batches recorded under ``out``: one listing of :data:`PROGRESS`."""
    folder = join(out, PROGRESS)
    try:
        if not is_local(out):
            fs, path = filesystem(folder)
            names = [
                posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)
            ]
        else:
            names = os.listdir(folder)
    except FileNotFoundError:
        return set()
    return {n for n in names if not n.startswith(".")}


def prepare_progress(out: str) -> None:
    """Make the :data:`PROGRESS` folder (local outputs; object stores need none)."""
    if is_local(out):
        os.makedirs(os.path.join(out, PROGRESS), exist_ok=True)


def clear_progress(out: str) -> None:
    """Forget every recorded batch (a run that redoes everything)."""
    folder = join(out, PROGRESS)
    if not is_local(out):
        fs, path = filesystem(folder)
        with contextlib.suppress(FileNotFoundError):
            if fs.exists(path):
                fs.rm(path, recursive=True)
        return
    shutil.rmtree(folder, ignore_errors=True)


def record_batch(out: str, name: str, files: int) -> None:
    """Record a finished batch (in its task, once all its outputs are written).

    The record appears whole or not at all: renamed into place locally, one
    object written by one request on object storage.
    """
    atomic.write_text(join(out, PROGRESS, name), f"{files}\n")


def nonempty(items: Iterable[Any], empty: Callable[[], Exception]) -> Iterator[Any]:
    """``items`` again, after checking now (by taking it) that there is a first one.

    Raises
    ------
    Exception
        ``empty()``, when there is none.
    """
    iterator = iter(items)
    try:
        first = next(iterator)
    except StopIteration:
        raise empty() from None
    return itertools.chain([first], iterator)


def run_bounded(
    task: Callable[..., Any],
    items: Iterable[Any],
    finished: Callable[[Any, Any], None],
    *,
    kwargs: dict[str, Any],
    in_flight: int,
    name: str,
    phase: str,
    submitted: Callable[[int], None] | None = None,
) -> int:
    """Run ``task(item, **kwargs)`` for each item, at most ``in_flight`` at once.

    Items are taken from ``items`` only as tasks finish, so a generator of
    millions is never held: one task per item, submitted as the one before
    finishes, on the current distributed client (one key ``<name>-<token>``
    each, in the dashboard span ``phase``) or on a pool of threads (dask's
    ``num_workers``, else one per core; BLAS single-threaded, as in
    :func:`dmask.graph.runtime.compute`). ``finished(item, result)`` is called
    in this thread for every task, in the order they finish; ``submitted(n)``
    after each submission. On the first error the tasks not yet started are
    cancelled and the error goes on.

    Returns
    -------
    int
        The number of tasks run.
    """
    from dmask import options
    from dmask.graph import runtime

    display = None
    if options.get("progress"):
        from dmask.graph.progress import Display

        display = Display(phase)
    count = [0, 0]  # submitted, finished

    def submit_count() -> None:
        count[0] += 1
        if submitted is not None:
            submitted(count[0])

    def finish(item: Any, result: Any) -> None:
        count[1] += 1
        finished(item, result)
        if display is not None:
            display.update(count[1], count[0])

    ok = False
    try:
        client = runtime.current_client()
        if client is None:
            _run_threads(task, items, finish, kwargs, in_flight, submit_count)
        else:
            _run_distributed(
                client, task, items, finish, kwargs, in_flight, name, phase,
                submit_count,
            )  # fmt: skip
        ok = True
    finally:
        if display is not None:
            display.close(ok)
    return count[0]


def _run_threads(
    task: Callable[..., Any],
    items: Iterable[Any],
    finish: Callable[[Any, Any], None],
    kwargs: dict[str, Any],
    in_flight: int,
    submitted: Callable[[], None],
) -> None:
    import concurrent.futures as cf

    from threadpoolctl import threadpool_limits

    threads = runtime.local_threads()
    pending: dict[cf.Future[Any], Any] = {}

    def collect() -> None:
        ready, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        for future in ready:
            finish(pending.pop(future), future.result())

    with (
        threadpool_limits(limits=1, user_api="blas"),
        cf.ThreadPoolExecutor(threads, thread_name_prefix="dmask-batch") as pool,
    ):
        try:
            for item in items:
                while len(pending) >= in_flight:
                    collect()
                pending[pool.submit(task, item, **kwargs)] = item
                submitted()
            while pending:
                collect()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _run_distributed(
    client: Any,
    task: Callable[..., Any],
    items: Iterable[Any],
    finish: Callable[[Any, Any], None],
    kwargs: dict[str, Any],
    in_flight: int,
    name: str,
    phase: str,
    submitted: Callable[[], None],
) -> None:
    import uuid

    from distributed import as_completed, span

    pending: dict[Any, Any] = {}
    running = as_completed()

    def collect() -> None:
        future = next(running)
        item = pending.pop(future)
        finish(item, future.result())

    try:
        for item in items:
            while running.count() >= in_flight:
                collect()
            with span(phase):
                future = client.submit(
                    task, item, key=f"{name}-{uuid.uuid4().hex}", **kwargs
                )
            pending[future] = item
            running.add(future)
            submitted()
        while pending:
            collect()
    except BaseException:
        client.cancel(list(pending))
        raise
