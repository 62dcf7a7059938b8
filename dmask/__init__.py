"""dmask: masked ridge regression for facial expression synthesis on Dask and Zarr.

The whole public API is here; everything else is internal. Importing dmask is
cheap: the numerical stack loads on first use of :func:`fit`, :func:`open_model`
or :class:`Model`.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from dmask.errors import DmaskError, InputError, StoreError
from dmask.options import set_options

if TYPE_CHECKING:
    from dmask.estimator import MaskedRidgeRegression
    from dmask.io.dataset_store import open_dataset, select_pairs
    from dmask.model import Model, fit, open_model

try:
    __version__ = version("dmask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "DmaskError",
    "InputError",
    "MaskedRidgeRegression",
    "Model",
    "StoreError",
    "__version__",
    "fit",
    "open_dataset",
    "open_model",
    "select_pairs",
    "set_options",
]

_LAZY = {
    "Model": "dmask.model",
    "fit": "dmask.model",
    "open_model": "dmask.model",
    "open_dataset": "dmask.io.dataset_store",
    "select_pairs": "dmask.io.dataset_store",
    "MaskedRidgeRegression": "dmask.estimator",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dmask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
