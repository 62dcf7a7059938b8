"""Compile dmask's numba kernels ahead, into numba's on-disk cache.

    python -m dmask.cli.warmup          # what pipelines/env.sh runs after an install

The kernels (:mod:`dmask.core._engine`, :mod:`dmask.core._engine_sums`) are
compiled on first use for the argument types of that use and cached on disk
(``cache=True``): in the package's ``__pycache__`` folders, or under
``NUMBA_CACHE_DIR`` when it is set. Without this warm-up a fresh install's first
training waits several seconds for the compiler (once in every worker process
that finds the cache empty).

The warm-up runs tiny fits (and predictions with the models of those in
memory) through the public API, so it compiles exactly the
signatures real runs use: sources and targets as uint8, uint16, float32 and
float64 arrays in memory and uint8 images from a dataset store (with and
without a statistics store); independent and joint colour modes; fixed, GCV
and leave-one-out penalties; the displacement and covariance methods; systems
solved eight per vector register (r <= 5), four per register (r = 7 to 13) and by
LAPACK (larger). With a
cold cache it takes about 25 s of CPU (2-core machine; 26 signatures), with a
warm one a few seconds (the imports and the cache loads). It never fails its
caller: a tiny fit that fails is reported on one line; a cache numba cannot
write falls back to its user-wide cache folder, and with none writable at all
the kernels compile in each process (dmask.core._engine.jit).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator

__all__ = ["cache_counts", "kernels", "main", "warm_up"]


def kernels() -> dict[str, object]:
    """The numba dispatchers of dmask's compiled kernels that are loaded now,
    by qualified name."""
    from dmask.core import _engine

    if not _engine.AVAILABLE:
        return {}
    from numba.core.dispatcher import Dispatcher

    found = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith("dmask."):
            continue
        for name, value in list(vars(module).items()):
            if isinstance(value, Dispatcher) and value.__module__ == module_name:
                found[f"{module_name}.{name}"] = value
    return found


def cache_counts() -> dict[str, int]:
    """Signatures compiled in this process (``misses``) and loaded from the
    on-disk cache (``hits``), over every kernel."""
    hits = misses = 0
    for dispatcher in kernels().values():
        stats = dispatcher.stats  # type: ignore[attr-defined]
        hits += sum(stats.cache_hits.values())
        misses += sum(stats.cache_misses.values())
    return {"hits": hits, "misses": misses}


def _faces(rng, n: int, size: int, channels: int, dtype: str):
    """``n`` random ``size x size`` images, scaled to the dtype's range."""
    import numpy as np

    values = rng.random((n, size, size, channels))
    if np.dtype(dtype).kind == "u":
        return (values * np.iinfo(dtype).max).astype(dtype)
    return values.astype(dtype)


def _runs(folder: str) -> Iterator[tuple[str, Callable[[], object]]]:
    """The tiny fits, by label; each compiles the kernels of one use."""
    import numpy as np

    import dmask
    from dmask.datasets.synthetic import make_synthetic_dataset
    from dmask.io import dataset_store

    rng = np.random.default_rng(0)
    n, size = 6, 12

    def memory(dtype: str, channels: int = 1, targets: int = 1, **kwargs):
        sources = _faces(rng, n, size, channels, dtype)
        named = {f"t{i}": _faces(rng, n, size, channels, dtype) for i in range(targets)}
        # each fit predicts its sources too: the forward pass per dtype
        return lambda: dmask.fit(sources, named, **_fit_args(kwargs)).predict(sources)

    for dtype in ("uint8", "uint16", "float32", "float64"):
        for field in (3, 7):
            yield (
                f"{dtype} r={field}",
                memory(dtype, channels=3, targets=2, field=field),
            )
    yield "float64 r=5 covariance", memory("float64", field=5, method="covariance")
    yield "float64 r=7 covariance", memory("float64", field=7, method="covariance")
    for lam in ("gcv", "loo"):
        yield f"float64 r=3 lam={lam}", memory("float64", field=3, lam=lam)
    for field in (3, 7):
        yield (
            f"float64 RGB r={field} joint",
            memory("float64", channels=3, field=field, channels_mode="joint"),
        )
    yield "float64 r=3 unnormalised", memory("float64", field=3, normalize="none")

    def stored(**kwargs):
        def run() -> object:
            path = os.path.join(folder, "faces.zarr")
            if not os.path.exists(path):
                make_synthetic_dataset(path, 4, (16, 16), test_fraction=0.25)
            ds = dataset_store.open_dataset(path)
            sources, targets = dataset_store.stored_pairs(
                ds, "neutral", ["happy", "sad"], "train"
            )
            return dmask.fit(sources, targets, **kwargs)

        return run

    for field in (3, 7):
        yield (
            f"store r={field}",
            stored(
                field=field,
                store=os.path.join(folder, f"model{field}.zarr"),
                overwrite=True,
            ),
        )
    yield (
        "store r=3 statistics",
        stored(field=3, statistics=os.path.join(folder, "stats.zarr")),
    )
    yield "store r=3 joint", stored(field=3, channels="joint")


def _fit_args(kwargs: dict) -> dict:
    """``channels_mode`` (the test images' channel count is ``channels``) as
    ``fit``'s ``channels``."""
    if "channels_mode" in kwargs:
        kwargs = dict(kwargs)
        kwargs["channels"] = kwargs.pop("channels_mode")
    return kwargs


def warm_up(verbose: bool = False) -> dict[str, object]:
    """Compile (or load from the cache) every kernel for the signatures dmask
    uses; return what happened: seconds, cache ``hits`` and ``misses``,
    whether numba was available, and any run that failed (a message)."""
    started = time.perf_counter()
    from dmask.core import _engine

    if not _engine.enabled():
        return {"available": False, "seconds": 0.0, "hits": 0, "misses": 0}
    import dask

    failures: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory(prefix="dmask_warmup_") as folder,
        dask.config.set(scheduler="synchronous"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        for label, run in _runs(folder):
            began = time.perf_counter()
            try:
                run()
            except Exception as error:  # a warm-up never fails its caller
                first = str(error).strip().splitlines()[:1] or [""]
                failures[label] = f"{type(error).__name__}: {first[0][:300]}"
            if verbose:
                print(f"  {label}: {time.perf_counter() - began:.2f} s", flush=True)
    cache_warnings = sorted(
        {str(w.message) for w in caught if "cache" in str(w.message).lower()}
    )
    return {
        "available": True,
        "seconds": time.perf_counter() - started,
        **cache_counts(),
        "failures": failures,
        "cache_warnings": cache_warnings,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the warm-up and print one line; 0 unless ``--strict`` and it failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="time each run")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when any tiny fit failed"
    )
    args = parser.parse_args(argv)
    result = warm_up(verbose=args.verbose)
    if not result["available"]:
        print("dmask kernels: numba not in use, nothing to compile")
        return 0
    print(
        f"dmask kernels: {result['misses']} signatures compiled, "
        f"{result['hits']} loaded from the cache, in {result['seconds']:.1f} s"
    )
    for label, message in result["failures"].items():  # type: ignore[union-attr]
        print(f"  warm-up run {label} failed: {message}", file=sys.stderr)
    for message in result["cache_warnings"]:  # type: ignore[union-attr]
        print(f"  numba: {message}", file=sys.stderr)
    return 1 if args.strict and result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
