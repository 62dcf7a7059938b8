"""Per-pixel sparse baselines over the whole image: lasso (l1) and OMP (l0)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
from sklearn.linear_model import LassoLars, OrthogonalMatchingPursuit

from dmask.errors import InputError
from dmask.evaluation.baselines import (
    _FLOAT,
    Baseline,
    _check_count,
    _check_pair,
    _check_positive,
)

logger = logging.getLogger(__name__)

__all__ = ["MAX_PIXELWISE_FEATURES", "PixelLasso", "PixelOMP", "Pixelwise"]


#: Largest image (``d = H * W * C``) the per-pixel l1 / l0 baselines accept:
#: 48 x 48 RGB. They fit ``d`` regressions over ``d`` features each.
MAX_PIXELWISE_FEATURES = 48 * 48 * 3


class Pixelwise(Baseline):
    """One sparse regression per output pixel over the whole image.

    ``fit(X, Y, pixels)`` fits the output columns ``pixels`` only (all by
    default), so that the pixels can be split across tasks; :meth:`concatenate`
    joins such fits. Weights are kept sparse (``coef_``: CSR, one row per fitted
    pixel) and the intercepts (not penalised, scikit-learn's ``fit_intercept``)
    dense.
    """

    max_features = MAX_PIXELWISE_FEATURES

    def _estimator(self, n: int, d: int) -> Any:
        raise NotImplementedError

    @staticmethod
    def memory_needed(n: int, d: int, outputs: int | None = None) -> int:
        """Two copies of ``X``, the targets and dense weights of ``outputs`` pixels."""
        out = d if outputs is None else outputs
        return _FLOAT * (2 * n * d + 2 * n * out + 2 * out * d)

    def check(
        self,
        n: int,
        d: int,
        memory_budget: int | None = None,
        outputs: int | None = None,
    ) -> None:
        """Refuse images larger than :data:`MAX_PIXELWISE_FEATURES`, then memory.

        Raises
        ------
        InputError
            Too large an image (``d``) or above ``memory_budget``.
        """
        if d > self.max_features:
            raise InputError(
                f"d = {d} pixel values is over {type(self).__name__}'s limit of "
                f"{self.max_features} (48 x 48 x 3; one regression per pixel)"
            )
        super().check(n, d, memory_budget, outputs)

    def fit(
        self, x: Any, y: Any, pixels: Sequence[int] | np.ndarray | None = None
    ) -> Pixelwise:
        """Fit the output pixels ``pixels`` (column indices of ``Y``; all if None)."""
        x, y = _check_pair(x, y)
        n, d = x.shape
        self.check(n, d)
        if pixels is None:
            index = np.arange(y.shape[1])
        else:
            index = np.asarray(pixels)
            if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
                raise InputError("pixels must be a 1-D sequence of integer indices")
            if index.size and (index.min() < 0 or index.max() >= y.shape[1]):
                raise InputError(
                    f"pixels must lie in [0, {y.shape[1]}), got {index.min()}.."
                    f"{index.max()}"
                )
        if index.size:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = self._estimator(n, d).fit(x, y[:, index])
            if caught:
                logger.info(
                    "%s on %d pixels: %d warnings, e.g. %s",
                    self,
                    index.size,
                    len(caught),
                    str(caught[0].message).split(".")[0],
                )
            coef = np.asarray(model.coef_).reshape(index.size, d)
            intercept = np.asarray(model.intercept_, dtype=np.float64).reshape(-1)
        else:
            coef = np.zeros((0, d))
            intercept = np.zeros(0)
        self.coef_ = scipy.sparse.csr_matrix(coef)
        self.intercept_ = intercept
        self.pixels_ = index.astype(np.int64)
        self._fitted_shape = (n, d, index.size)
        return self

    @classmethod
    def concatenate(cls, parts: Sequence[Pixelwise]) -> Pixelwise:
        """One model predicting the pixels of several fits, in their order."""
        if not parts:
            raise InputError("parts is empty: nothing to concatenate")
        shapes = {p._shape()[:2] for p in parts}
        if len(shapes) != 1:
            raise InputError(f"parts were fitted on different data shapes {shapes}")
        out = cls.__new__(cls)
        out.__dict__.update(parts[0].__dict__)
        out.coef_ = scipy.sparse.vstack([p.coef_ for p in parts], format="csr")
        out.intercept_ = np.concatenate([p.intercept_ for p in parts])
        out.pixels_ = np.concatenate([p.pixels_ for p in parts])
        n, d = shapes.pop()
        out._fitted_shape = (n, d, out.pixels_.size)
        return out

    def predict(self, x: Any) -> np.ndarray:
        """``(N, len(pixels_))`` predictions of the fitted pixels, in their order."""
        x = self._check_input(x)
        return np.asarray(self.coef_ @ x.T).T + self.intercept_

    @property
    def n_parameters(self) -> int:
        """Non-zero weights plus one intercept per fitted pixel."""
        self._shape()
        return int(self.coef_.nnz + self.intercept_.size)


class PixelLasso(Pixelwise):
    """l1 regression (the lasso) per output pixel.

    Minimises ``||y - X w - b||^2 / (2 N) + alpha ||w||_1`` for each pixel, solved
    by least-angle regression (scikit-learn's ``LassoLars``): the same problem as
    ``sklearn.linear_model.Lasso``, solved exactly in at most a few ``N`` steps,
    where coordinate descent on ``N << d`` correlated pixels converges slowly.

    Parameters
    ----------
    alpha : float
        l1 penalty (> 0).
    max_iter : int
        Most LARS steps per pixel.
    """

    name = "lasso"

    def __init__(self, alpha: float = 1e-3, max_iter: int = 500) -> None:
        self.alpha = _check_positive("alpha", alpha)
        self.max_iter = _check_count("max_iter", max_iter)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha})"

    def _estimator(self, n: int, d: int) -> Any:
        return LassoLars(
            alpha=self.alpha,
            fit_intercept=True,
            precompute=False,
            max_iter=self.max_iter,
            fit_path=False,
        )


class PixelOMP(Pixelwise):
    """l0 regression (orthogonal matching pursuit) per output pixel.

    Each pixel gets at most ``n_nonzero`` non-zero weights (scikit-learn's
    ``OrthogonalMatchingPursuit``, without a precomputed ``d x d`` Gram matrix).
    With the intercept the centred images span at most ``N - 1`` directions, so
    ``n_nonzero`` is clipped to ``min(n_nonzero, N - 1, d)`` (at least 1).

    Parameters
    ----------
    n_nonzero : int
        Non-zero weights per output pixel.
    """

    name = "omp"

    def __init__(self, n_nonzero: int = 9) -> None:
        self.n_nonzero = _check_count("n_nonzero", n_nonzero)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_nonzero={self.n_nonzero})"

    def _estimator(self, n: int, d: int) -> Any:
        return OrthogonalMatchingPursuit(
            n_nonzero_coefs=max(1, min(self.n_nonzero, n - 1, d)),
            fit_intercept=True,
            precompute=False,
        )
