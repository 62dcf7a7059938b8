"""Masked ridge regression as a scikit-learn estimator (Pipeline, GridSearchCV).

``X`` and ``y`` are the source and target faces, one sample per row: images
``(sample, y, x, channel)`` (scikit-learn's splitters index the first axis of
any array), or flat rows ``(sample, features)`` with ``image_shape`` saying how
each row is an image. ``predict`` returns the layout ``X`` came in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator, RegressorMixin

from dmask.core import minmax
from dmask.errors import InputError
from dmask.graph import inputs
from dmask.model import Model, fit

__all__ = ["MaskedRidgeRegression"]


class MaskedRidgeRegression(RegressorMixin, BaseEstimator):
    """Masked ridge regression of one target expression (Khan et al., IJCV 2020).

    Parameters
    ----------
    field : int
        Odd receptive field size ``r``: each output pixel regresses on the
        ``r x r`` window of input pixels around it.
    lam : float
        Ridge penalty ``lambda``.
    normalize : {"none", "minmax"}
        ``"minmax"`` scales every image to [0, 1] by its own minimum and
        maximum before fitting (the paper's); predictions and :meth:`score`
        are then in that scale.
    image_shape : (int, int) or (int, int, int), optional
        ``(height, width[, channels])`` of each row when ``X`` is 2-D.

    Attributes
    ----------
    model_ : dmask.Model
        The fitted model.
    """

    def __init__(
        self,
        field: int = 3,
        lam: float = 0.4,
        normalize: str = "none",
        image_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.field = field
        self.lam = lam
        self.normalize = normalize
        self.image_shape = image_shape

    def _images(self, array: Any, name: str) -> np.ndarray:
        if isinstance(array, xr.DataArray) and array.ndim != 2:  # by dimension name
            array = inputs.ordered_images(array, name).values
        array = np.asarray(array)
        if array.ndim == 4:
            return array
        if array.ndim != 2:
            raise InputError(
                f"{name} must be images (sample, y, x, channel) or rows "
                f"(sample, features), got shape {array.shape}"
            )
        if self.image_shape is None:
            raise InputError(f"{name} is 2-D: give image_shape=(height, width)")
        shape = tuple(int(v) for v in self.image_shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or int(np.prod(shape)) != array.shape[1]:
            raise InputError(
                f"{name} rows have {array.shape[1]} values; image_shape "
                f"{self.image_shape} holds {int(np.prod(shape))}"
            )
        return array.reshape(array.shape[0], *shape)

    def fit(self, X: Any, y: Any) -> MaskedRidgeRegression:
        """Fit on source faces ``X`` and target faces ``y`` (same shape)."""
        sources, targets = self._images(X, "X"), self._images(y, "y")
        self.model_: Model = fit(
            sources,
            targets,
            field=self.field,
            lam=self.lam,
            normalize=self.normalize,
        )
        self.n_features_in_ = int(np.prod(sources.shape[1:]))
        return self

    def _fitted(self) -> Model:
        model = getattr(self, "model_", None)
        if model is None:
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("MaskedRidgeRegression is not fitted: call fit")
        return model

    def predict(self, X: Any) -> np.ndarray:
        """Predicted target faces, in the layout (4-D or rows) of ``X``."""
        model = self._fitted()
        flat = np.asarray(X).ndim == 2
        predicted = model.predict(self._images(X, "X"))
        return predicted.reshape(predicted.shape[0], -1) if flat else predicted

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """R² of the predictions over all pixels: ``1 - SSE / SST``.

        With ``normalize="minmax"`` each target image is scaled by its own
        bounds first, as the model's predictions are.
        """
        from sklearn.metrics import r2_score

        truth = self._images(y, "y").astype(np.float64)
        if self.normalize == "minmax":
            truth = minmax.normalize_images(truth)
        predicted = self._images(self.predict(X), "predictions")
        n = truth.shape[0]
        return float(
            r2_score(
                truth.reshape(n, -1),
                predicted.reshape(n, -1),
                sample_weight=sample_weight,
                multioutput="variance_weighted",
            )
        )
