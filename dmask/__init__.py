"""dmask: masked ridge regression for facial expression synthesis on Dask and Zarr."""

from dmask.errors import DmaskError, InputError, StoreError
from dmask.model import Model, fit, open_model

__version__ = "0.1.0"

__all__ = [
    "DmaskError",
    "InputError",
    "Model",
    "StoreError",
    "__version__",
    "fit",
    "open_model",
]
