"""Shared pieces of the benchmarks: what machine they ran on."""

from __future__ import annotations

import os
import platform

import dask
import distributed
import numpy as np
import psutil
import threadpoolctl

import dmask


def machine() -> dict[str, object]:
    """Cores, memory, BLAS libraries and versions of this machine."""
    blas = [
        f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture')}"
        f" ({lib.get('num_threads')} threads)"
        for lib in threadpoolctl.threadpool_info()
        if lib.get("user_api") == "blas"
    ]
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "blas": "; ".join(blas) or "unknown",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "dmask": dmask.__version__,
    }
