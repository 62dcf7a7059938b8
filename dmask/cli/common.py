"""What several commands share: argument types, cluster options and the client."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dmask.errors import DmaskError

# ------------------------------------------------------------------ vocabulary
# One spelling for each idea across the commands:
#   lists           --targets happy sad (space-separated; a comma list works too)
#   one name        --source neutral, --target happy (import, ingest's pairs)
#   image sizes     --size H [W] (one number: square)
#   every sample    --split all, --source all
#   local cluster   --workers N --threads-per-worker N --in-process
#   outputs         --out PATH, --overwrite; --csv/--json FILE for tables
#   Dask's report   --performance-report FILE.html
#   TLS             --tls-ca-file, --tls-cert, --tls-key (as dask's own tools)
# An old spelling stays one release as a hidden alias that logs a warning.

#: Where :class:`_Renamed` and friends leave their deprecation warnings (logged
#: once logging is set up, see :func:`dmask.cli.app.main`).
DEPRECATIONS = "_deprecations"


class HelpFormatter(
    argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter
):
    """Every option's default in ``--help``; epilogs keep their lines.

    Defaults of None or False (nothing, a switch off) are not shown, nor where
    the help already says its default; lists show as typed (``1 3 5``).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
            or isinstance(action, argparse._CountAction)
        ):
            return text
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(v) for v in default)
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if isinstance(action, _Size):
            return "H [W]"
        return super()._format_args(action, default_metavar)


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    examples: Sequence[str],
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand's parser: its help, defaults shown, and an examples epilog."""
    lines = ["examples:", *(f"  {example}" for example in examples)]
    return sub.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog="\n".join(lines),
        formatter_class=HelpFormatter,
    )


def deprecated(namespace: argparse.Namespace, message: str) -> None:
    """Note an old spelling's warning, for :func:`dmask.cli.app.main` to log."""
    notes = list(getattr(namespace, DEPRECATIONS, []))
    notes.append(message)
    setattr(namespace, DEPRECATIONS, notes)


class _Renamed(argparse.Action):
    """An old spelling of an option: hidden, sets the new one's value, warns."""

    def __init__(
        self,
        option_strings: list[str],
        dest: str,
        new: str = "",
        convert: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["default"] = argparse.SUPPRESS
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)
        self.new = new
        self.convert = convert

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        value = self.const if self.nargs == 0 else values
        if self.convert is not None:
            value = self.convert(value)
        setattr(namespace, self.dest, value)
        deprecated(
            namespace,
            f"{option_string} is deprecated and will be removed: use {self.new}",
        )


def renamed(
    parser: argparse.ArgumentParser | Any, old: str, new: str, dest: str, **kwargs: Any
) -> None:
    """Keep ``old`` working as a hidden, warning alias of the option ``new``."""
    parser.add_argument(old, action=_Renamed, dest=dest, new=new, **kwargs)


class _List(argparse.Action):
    """Space-separated values (``--targets happy sad``); commas split them too.

    ``item`` converts each value; a bad one is a usage error naming the option.
    """

    def __init__(
        self,
        option_strings: list[str],
        dest: str,
        item: Callable[[str], Any] = str,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("nargs", "+")
        super().__init__(option_strings, dest, **kwargs)
        self.item = item

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, _items(self, values, self.item))


def _items(action: argparse.Action, values: Any, item: Callable[[str], Any]) -> list:
    out = []
    for value in [values] if isinstance(values, str) else values:
        for part in str(value).split(","):
            if not part.strip():
                continue
            try:
                out.append(item(part.strip()))
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                text = str(exc) if isinstance(exc, argparse.ArgumentTypeError) else ""
                raise argparse.ArgumentError(
                    action, text or f"invalid value {part.strip()!r}"
                ) from None
    return out


def names_option(
    parser: argparse.ArgumentParser | Any, name: str, help: str, **kwargs: Any
) -> None:
    """A list of names, such as ``--targets happy sad`` (or ``happy,sad``)."""
    kwargs.setdefault("metavar", "NAME")
    parser.add_argument(name, action=_List, help=help, **kwargs)


def numbers_option(
    parser: argparse.ArgumentParser | Any,
    name: str,
    item: Callable[[str], Any],
    help: str,
    **kwargs: Any,
) -> None:
    """A list of numbers, such as ``--fields 1 3 5`` (or ``1,3,5``)."""
    parser.add_argument(name, action=_List, item=item, help=help, **kwargs)


class _Size(argparse.Action):
    """``--size H [W]``: an image's height and width; one number for a square."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs["nargs"] = "+"
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        numbers = _items(self, values, _positive_int)
        if len(numbers) > 2:
            raise argparse.ArgumentError(
                self, f"takes H or H W, got {len(numbers)} numbers"
            )
        setattr(namespace, self.dest, (numbers[0], numbers[-1]))


def size_option(parser: argparse.ArgumentParser | Any, help: str) -> None:
    """``--size H [W]``, stored as ``(H, W)`` (None when not given)."""
    parser.add_argument("--size", action=_Size, help=help)


def _image_size(size: tuple[int, int] | None, default: int | None) -> Any:
    """The ``(H, W)`` of ``--size``, or a square of ``default`` (None: none)."""
    if size is None:
        return None if default is None else (default, default)
    return tuple(size)


#: The word for "every split" (``--split all``); ``''`` is its old spelling.
ALL = "all"


class _Every(argparse.Action):
    """``--split``/``--source``: a name, or ``all`` for every one (None)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values == "":
            deprecated(
                namespace,
                f"{option_string} '' is deprecated and will be removed: use "
                f"{option_string} {ALL}",
            )
            values = ALL
        setattr(namespace, self.dest, values)


def every_option(
    parser: argparse.ArgumentParser | Any, name: str, default: str, help: str
) -> None:
    """``--split NAME`` or ``--split all``; read it with :func:`_every`."""
    parser.add_argument(name, action=_Every, default=default, metavar="NAME", help=help)


def _every(value: str | None) -> str | None:
    """None for ``all`` (every split, every expression), else the name."""
    return None if value in (ALL, "", None) else value


#: ``--resize`` choices: :data:`dmask.io.face_crops.RESIZE_METHODS` (spelled out
#: here so that the command line starts without loading the image libraries).
RESIZE_METHODS = ["lanczos", "bilinear", "area"]


def _add_resize_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "--resize", default="lanczos", choices=RESIZE_METHODS, help=text
    )


#: ``--crop`` choices: :data:`dmask.io.face_crops.CROP_MODES` (spelled out, as
#: the resize methods, so ``--help`` loads no image code; a test checks both).
CROP_MODES = ["auto", "align", "detect", "center", "none"]


def _add_crop_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--crop", default="auto", choices=CROP_MODES, help=text)


def _add_overwrite_option(parser: argparse.ArgumentParser, text: str = "") -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=text
        or "replace an existing output (the old one stays until the new is complete)",
    )


def _checked(
    parse: Callable[[str], Any], ok: Callable[[Any], bool], wanted: str
) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text, refused unless ``ok`` (``wanted``)."""

    def check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    return check


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_at_least_two = _checked(int, lambda v: v >= 2, "at least 2")
#: An odd receptive field ``r >= 1``.
_field = _checked(int, lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1")
_positive_float = _checked(
    float, lambda v: math.isfinite(v) and v > 0, "a positive finite number"
)
_fraction = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _memory_limit(text: str) -> str:
    """``auto``, or a size dask understands (``4GB``, ``512MiB``, bytes)."""
    if text == "auto":
        return text
    from dask.utils import parse_bytes

    try:
        parse_bytes(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"must be a size such as 4GB or auto, got {text}"
        ) from None
    return text


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "cluster", "a local cluster (the default) or an existing one"
    )
    group.add_argument(
        "--scheduler", metavar="ADDRESS", help="address of an existing Dask scheduler"
    )
    group.add_argument(
        "--scheduler-file", metavar="FILE", help="scheduler file of an existing cluster"
    )
    group.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="local worker processes (default: one per core)",
    )
    group.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        metavar="N",
        help="threads per local worker (default: cores / workers)",
    )
    group.add_argument(
        "--memory-limit",
        type=_memory_limit,
        metavar="SIZE",
        help="memory limit per local worker, e.g. 4GB (default: the machine's, shared)",
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--in-process",
        action="store_true",
        help="run the local workers as threads in this process, not as processes",
    )
    renamed(group, "--threads", "--in-process", "in_process", nargs=0, const=True)
    where.add_argument(
        "--processes",
        action="store_true",
        help="run the local workers as processes even for a small job (by default "
        "a job of under 256 MiB of input runs on threads in this process; "
        "configuration dmask.cluster.processes)",
    )
    group.add_argument(
        "--dashboard-address",
        metavar="ADDRESS",
        help="local dashboard's address (default: 127.0.0.1:8787; a port alone, "
        ":8787, means 127.0.0.1)",
    )
    group.add_argument(
        "--performance-report",
        metavar="FILE",
        help="write Dask's performance report of the run (HTML) here",
    )
    renamed(group, "--report", "--performance-report", "performance_report")
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show progress on stderr: a live bar on a terminal, a plain line per "
        "phase and every 10 s otherwise",
    )
    group.add_argument(
        "--tls-ca-file",
        metavar="FILE",
        help="TLS: CA certificate (with --tls-cert and --tls-key)",
    )
    renamed(group, "--tls-ca", "--tls-ca-file", "tls_ca_file")
    group.add_argument(
        "--tls-cert", metavar="FILE", help="TLS: this client's certificate"
    )
    group.add_argument(
        "--tls-key", metavar="FILE", help="TLS: this client's private key"
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file of dask and dmask settings (the dmask: section; see "
        "cluster/README.md)",
    )


def _lam(text: str) -> float | str:
    """A positive penalty, or ``loo`` / ``gcv`` (chosen per pixel)."""
    if text in ("loo", "gcv"):
        return text
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a positive number, loo or gcv, got {text}"
        ) from None


@contextlib.contextmanager
def _cluster(args: argparse.Namespace, input_bytes: int | None = None) -> Iterator[Any]:
    """The client of the run; ``input_bytes`` (the size of its inputs, if
    known) lets a small job run its local workers as threads in this process."""
    from dmask.cluster.clients import ClusterOptions, connect
    from dmask.options import set_options

    if args.config:
        _load_config(args.config)
    options = ClusterOptions.from_config(
        scheduler=args.scheduler,
        scheduler_file=args.scheduler_file,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        processes=False if args.in_process else (True if args.processes else None),
        dashboard_address=args.dashboard_address,
        tls_ca_file=args.tls_ca_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        quiet=args.verbose < 2,  # scheduler and worker logs with -vv
    )
    options = options.for_job(input_bytes)
    _check_writable(args.performance_report)
    with connect(options) as client:
        # a message, not a result: stderr (stdout holds tables and results only)
        if not args.quiet:
            print(f"dashboard: {_dashboard_link(client, options)}", file=sys.stderr)
        report: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if args.performance_report:
            from distributed import performance_report

            report = performance_report(filename=args.performance_report)
        try:
            with report, set_options(progress=args.progress and not args.quiet):
                yield client
        except KeyboardInterrupt:
            _quiet_teardown()
            raise
        if args.performance_report:
            print(f"performance report: {args.performance_report}")


def _images_bytes(ds: Any) -> int:
    """Bytes of a dataset store's images (a job's size, for :func:`_cluster`)."""
    images = ds["images"]
    return int(math.prod(images.shape)) * int(images.dtype.itemsize)


def _quiet_teardown() -> None:
    """After Ctrl-C: the client's gathers it cancels, unretrieved, stay unlogged.

    (asyncio logs each as "Task exception was never retrieved" with a
    traceback while the cluster closes; the run ends with one line instead.)
    """
    import logging

    for name in ("asyncio", "distributed.client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _dashboard_link(client: Any, options: Any) -> str:
    """The dashboard's link; loopback when a local cluster's dashboard binds there.

    (An in-process cluster names the machine's address in its link although
    the dashboard listens on 127.0.0.1 only.)
    """
    from urllib.parse import urlsplit, urlunsplit

    from dmask.cluster.clients import bind_address

    link = str(client.dashboard_link)
    local = not (options.scheduler or options.scheduler_file)
    bound = bind_address(options.dashboard_address) or ""
    if local and bound.startswith("127.0.0.1:"):
        parts = urlsplit(link)
        if parts.port is not None:
            link = urlunsplit(parts._replace(netloc=f"127.0.0.1:{parts.port}"))
    return link


def _load_config(path: str) -> None:
    """Merge a YAML settings file into dask.config (it wins over other files)."""
    from dmask.options import load_file

    load_file(path)


def _summary(client: Any, started: float, **figures: Any) -> None:
    from dmask.cluster.clients import peak_worker_memory

    wall = time.perf_counter() - started
    parts = [f"{key.replace('_', ' ')} {value}" for key, value in figures.items()]
    parts.append(f"wall time {wall:.1f} s")
    peak = peak_worker_memory(client)
    if peak:
        parts.append(f"peak worker memory {peak / 2**20:.0f} MiB")
    print("summary: " + ", ".join(parts))


def _is_store(path: str) -> bool:
    import os

    return os.path.isfile(os.path.join(path, "zarr.json"))


def _json_rows(path: str | None) -> list[dict[str, Any]] | None:
    import json

    if not path:
        return None
    try:
        with open(path) as handle:
            rows = json.load(handle)
    except ValueError as exc:
        raise DmaskError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(rows, dict) and "rows" in rows:
        rows = rows["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DmaskError(f"{path} must hold a list of rows (JSON objects)")
    return rows


def _check_writable(*paths: str | None) -> None:
    """Refuse, before any work, an output file that cannot be written."""
    import os

    for path in paths:
        if not path or "://" in str(path):
            continue
        if os.path.isdir(path):
            raise DmaskError(f"cannot write {path}: it is a folder")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise DmaskError(f"cannot write {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise DmaskError(f"cannot write {path}: folder {parent} is not writable")


def _check_output_folder(folder: str | None) -> None:
    """Refuse, before any work, an output folder that cannot be made or written."""
    import os

    from dmask.io.locks import check_parent

    if not folder or "://" in str(folder):
        return
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise DmaskError(f"cannot write into {folder}: it is a file, not a folder")
    check_parent(os.path.join(folder, "x"))  # the nearest existing folder
    place = os.path.abspath(folder)
    while not os.path.exists(place):
        place = os.path.dirname(place)
    if not os.access(place, os.W_OK):
        raise DmaskError(f"cannot write into {folder}: {place} is not writable")


def _check_folders(*folders: str | None) -> None:
    """Refuse input folders that are not there."""
    import os

    for folder in folders:
        if folder and not os.path.isdir(folder):
            raise DmaskError(f"folder {folder} does not exist")
