"""The paper's baselines: whole-image regressions from source to target faces.

Every baseline maps flattened, normalised source images ``X`` (``N x d``,
``d = H * W * C``, float64) to target images ``Y`` (``N x d``) with ``fit(X, Y)``,
``predict(X)`` and ``n_parameters``. Only numpy, scipy and scikit-learn are used
here; :mod:`dmask.evaluation.compare` runs them on a Dask cluster against masked
ridge regression. The per-pixel sparse ones are in
:mod:`dmask.evaluation.pixelwise`.

Memory estimates (``memory_needed``) count the float64 arrays a fit and a
prediction of a few images allocate, not BLAS or Python overheads.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse

from dmask.core.planning import format_bytes
from dmask.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "Baseline",
    "FullRidge",
    "Identity",
    "KernelRidge",
    "MeanDifference",
    "ReducedRankRidge",
]


_FLOAT = 8  # bytes per float64


def _as_matrix(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"{name} must be a non-empty 2-D (samples, pixels) array")
    if not np.isfinite(array).all():
        raise InputError(f"{name} has NaN or infinite values")
    return array


def _check_pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = _as_matrix(x, "X")
    y = _as_matrix(y, "Y")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"X has {x.shape[0]} samples but Y has {y.shape[0]}")
    return x, y


def _check_positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return number


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _augment(x: np.ndarray) -> np.ndarray:
    """``[X, 1]``: the design matrix with the bias column."""
    return np.hstack([x, np.ones((x.shape[0], 1))])


class Baseline:
    """Common interface: ``fit``, ``predict``, ``n_parameters``, ``check``.

    Subclasses set ``_fitted_shape`` ``(n, d, d_out)`` in ``fit``.
    """

    name = "baseline"
    _fitted_shape: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @staticmethod
    def memory_needed(n: int, d: int, outputs: int | None = None) -> int:
        """Bytes a fit on ``n`` samples of ``d`` pixels and a prediction need."""
        return 0

    def check(
        self,
        n: int,
        d: int,
        memory_budget: int | None = None,
        outputs: int | None = None,
    ) -> None:
        """Refuse a fit on ``n x d`` data (``outputs`` pixels) beyond the limits.

        Raises
        ------
        InputError
            The fit would need more than ``memory_budget`` bytes.
        """
        if memory_budget is None:
            return
        needed = self.memory_needed(n, d, outputs)
        if needed > memory_budget:
            raise InputError(
                f"needs {format_bytes(needed)}, more than the memory budget of "
                f"{format_bytes(memory_budget)} (memory_budget)"
            )

    def _shape(self) -> tuple[int, int, int]:
        if self._fitted_shape is None:
            raise InputError(f"{type(self).__name__} is not fitted: call fit first")
        return self._fitted_shape

    def _check_input(self, x: Any) -> np.ndarray:
        _, d, _ = self._shape()
        x = _as_matrix(x, "X")
        if x.shape[1] != d:
            raise InputError(f"X has {x.shape[1]} pixels but the fit had {d}")
        return x

    @property
    def n_parameters(self) -> int:
        """Numbers a fitted model keeps to predict."""
        raise NotImplementedError

    def fit(self, x: Any, y: Any) -> Baseline:
        """Learn from sources ``x`` and targets ``y`` (``N x d`` each)."""
        raise NotImplementedError

    def predict(self, x: Any) -> np.ndarray:
        """Targets ``N x d_out`` for sources ``x`` (``N x d``)."""
        raise NotImplementedError


class Identity(Baseline):
    """The output is the input: ``Y = X``."""

    name = "identity"

    def fit(self, x: Any, y: Any) -> Identity:
        """Check shapes; nothing is learnt."""
        x, y = _check_pair(x, y)
        if x.shape != y.shape:
            raise InputError(f"X has shape {x.shape} but Y has shape {y.shape}")
        self._fitted_shape = (x.shape[0], x.shape[1], y.shape[1])
        return self

    def predict(self, x: Any) -> np.ndarray:
        """A float64 copy of ``X``."""
        return self._check_input(x).copy()

    @property
    def n_parameters(self) -> int:
        """0."""
        self._shape()
        return 0


class MeanDifference(Baseline):
    """The input plus the mean training difference: ``Y = X + mean(Y - X)``."""

    name = "mean_difference"

    def fit(self, x: Any, y: Any) -> MeanDifference:
        """Learn the mean difference ``mean over samples of (Y - X)``."""
        x, y = _check_pair(x, y)
        if x.shape != y.shape:
            raise InputError(f"X has shape {x.shape} but Y has shape {y.shape}")
        self.difference_ = (y - x).mean(axis=0)
        self._fitted_shape = (x.shape[0], x.shape[1], y.shape[1])
        return self

    def predict(self, x: Any) -> np.ndarray:
        """``X + difference_``."""
        return self._check_input(x) + self.difference_

    @property
    def n_parameters(self) -> int:
        """``d``: one difference per pixel."""
        return self._shape()[2]

    @staticmethod
    def memory_needed(n: int, d: int, outputs: int | None = None) -> int:
        """``N x d`` for the differences."""
        return _FLOAT * n * d


class FullRidge(Baseline):
    """l2 regression of every output pixel on the whole image plus a bias.

    ``W = (A^T A + lam I)^-1 A^T Y`` with ``A = [X, 1]``: the bias is penalised
    with the same ``lam``, as in masked ridge regression. When ``N < d + 1`` the
    dual form ``W = A^T (A A^T + lam I)^-1 Y`` is cheaper: then only the dual
    coefficients ``(A A^T + lam I)^-1 Y`` and the training images are kept and
    predictions are ``[X*, 1] A^T dual_coef_``; ``W`` is never formed.

    Parameters
    ----------
    lam : float
        Ridge penalty (> 0).
    form : {"auto", "primal", "dual"}
        Force one form; ``auto`` takes the dual when ``N < d + 1``.
    """

    name = "full_ridge"

    def __init__(self, lam: float = 0.4, form: str = "auto") -> None:
        self.lam = _check_positive("lam", lam)
        if form not in ("auto", "primal", "dual"):
            raise InputError(f"form must be 'auto', 'primal' or 'dual', got {form!r}")
        self.form = form

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam})"

    @staticmethod
    def dual(n: int, d: int) -> bool:
        """Whether ``auto`` solves in the dual form (``n < d + 1``)."""
        return n < d + 1

    @staticmethod
    def memory_needed(n: int, d: int, outputs: int | None = None) -> int:
        """Bytes of the arrays a fit (in the cheaper form) allocates.

        Dual: the training images, two ``N x N`` matrices, the right-hand sides
        and the dual coefficients. Primal: the design matrix, two
        ``(d + 1) x (d + 1)`` matrices and two ``(d + 1) x d`` ones (``A^T Y``
        and the weights).
        """
        out = d if outputs is None else outputs
        if FullRidge.dual(n, d):
            return _FLOAT * (n * (d + 1) + 2 * n * n + 2 * n * out)
        return _FLOAT * (n * (d + 1) + 2 * (d + 1) ** 2 + 2 * (d + 1) * out)

    def fit(self, x: Any, y: Any) -> FullRidge:
        """Solve the ridge problem for all output pixels at once."""
        x, y = _check_pair(x, y)
        n, d = x.shape
        use_dual = self.dual(n, d) if self.form == "auto" else self.form == "dual"
        a = _augment(x)
        if use_dual:
            gram = a @ a.T
            gram[np.diag_indices(n)] += self.lam
            self.dual_coef_ = scipy.linalg.solve(
                gram, y, assume_a="pos", overwrite_a=True
            )
            self.train_ = a
            self.coef_ = None
        else:
            gram = a.T @ a
            gram[np.diag_indices(d + 1)] += self.lam
            self.coef_ = scipy.linalg.solve(
                gram, a.T @ y, assume_a="pos", overwrite_a=True, overwrite_b=True
            )
            self.dual_coef_ = None
            self.train_ = None
        self.solved_dual_ = use_dual
        self._fitted_shape = (n, d, y.shape[1])
        logger.debug("full ridge on %d x %d, dual=%s", n, d, use_dual)
        return self

    def weights(self) -> np.ndarray:
        """The ``(d + 1) x d_out`` weight matrix, bias last (formed if dual)."""
        self._shape()
        if self.coef_ is not None:
            return self.coef_
        return self.train_.T @ self.dual_coef_

    def _predict_augmented(self, a: np.ndarray) -> np.ndarray:
        if self.coef_ is not None:
            return a @ self.coef_
        return (a @ self.train_.T) @ self.dual_coef_

    def predict(self, x: Any) -> np.ndarray:
        """``[X, 1] W``."""
        return self._predict_augmented(_augment(self._check_input(x)))

    @property
    def n_parameters(self) -> int:
        """``(d + 1) * d_out``: the weights and biases, however they are held."""
        _, d, out = self._shape()
        return (d + 1) * out


class ReducedRankRidge(FullRidge):
    """Full ridge regression projected onto the top principal output directions.

    ``W_rr = W P_q P_q^T`` with ``P_q`` the top ``rank`` right singular vectors of
    the fitted training outputs ``A W``. It is kept as the two factors
    ``B = W P_q`` (``(d + 1) x q``) and ``P_q`` (``d_out x q``). A ``rank`` larger
    than ``min(N, d_out)`` is clipped to it.

    Parameters
    ----------
    lam : float
        Ridge penalty (> 0).
    rank : int
        Number of output directions kept ``q``.
    form : {"auto", "primal", "dual"}
        Form of the full ridge solve.
    """

    name = "reduced_rank"

    def __init__(self, lam: float = 0.4, rank: int = 10, form: str = "auto") -> None:
        super().__init__(lam, form)
        self.rank = _check_count("rank", rank)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam}, rank={self.rank})"

    @staticmethod
    def memory_needed(n: int, d: int, outputs: int | None = None) -> int:
        """Full ridge's bytes plus the fitted outputs, their SVD and the factors."""
        out = d if outputs is None else outputs
        q = min(n, out)
        extra = _FLOAT * (3 * n * out + (d + 1) * q + out * q)
        return FullRidge.memory_needed(n, d, outputs) + extra

    def fit(self, x: Any, y: Any) -> ReducedRankRidge:
        """Fit full ridge, then keep the top ``rank`` output directions."""
        x, y = _check_pair(x, y)
        super().fit(x, y)
        n, _, out = self._shape()
        q = min(self.rank, n, out)
        if q < self.rank:
            logger.debug("rank %d clipped to %d", self.rank, q)
        a = _augment(x)
        if self.dual_coef_ is not None:
            fitted = (a @ self.train_.T) @ self.dual_coef_
        else:
            fitted = a @ self.coef_
        _, _, vt = np.linalg.svd(fitted, full_matrices=False)
        self.components_ = np.ascontiguousarray(vt[:q].T)  # P_q, d_out x q
        if self.dual_coef_ is not None:
            self.reduced_coef_ = self.train_.T @ (self.dual_coef_ @ self.components_)
        else:
            self.reduced_coef_ = self.coef_ @ self.components_
        self.rank_ = q
        # Only the factors are kept.
        self.coef_ = self.dual_coef_ = self.train_ = None
        return self

    def weights(self) -> np.ndarray:
        """``W_rr = B P_q^T``, ``(d + 1) x d_out``, bias last (formed here)."""
        self._shape()
        return self.reduced_coef_ @ self.components_.T

    def predict(self, x: Any) -> np.ndarray:
        """``[X, 1] B P_q^T``."""
        a = _augment(self._check_input(x))
        return (a @ self.reduced_coef_) @ self.components_.T

    @property
    def n_parameters(self) -> int:
        """``q * (d + 1) + q * d_out``: the two factors."""
        _, d, out = self._shape()
        return self.rank_ * (d + 1 + out)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(sq, 0.0, out=sq)


class KernelRidge(Baseline):
    """Kernel ridge regression with an RBF kernel on whole images.

    ``k(x, x') = exp(-gamma ||x - x'||^2)``. The targets are centred by their
    training mean, which is not penalised: ``alpha = (K + lam I)^-1 (Y - mean)``
    and predictions are ``K(X*, X) alpha + mean``.

    Parameters
    ----------
    lam : float
        Ridge penalty (> 0).
    gamma : float, optional
        Kernel width; default ``1 / (d * var(X))`` over the training images
        (``1 / d`` when they are constant).
    """

    name = "kernel_ridge"

    def __init__(self, lam: float = 0.4, gamma: float | None = None) -> None:
        self.lam = _check_positive("lam", lam)
        self.gamma = None if gamma is None else _check_positive("gamma", gamma)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam}, gamma={self.gamma})"

    @staticmethod
    def memory_needed(n: int, d: int, outputs: int | None = None) -> int:
        """The training images, two ``N x N`` matrices, centred targets, alpha."""
        out = d if outputs is None else outputs
        return _FLOAT * (n * d + 2 * n * n + 2 * n * out)

    def kernel(self, a: Any, b: Any) -> np.ndarray:
        """The RBF kernel matrix between the rows of ``a`` and ``b``."""
        return np.exp(-self.gamma_ * _squared_distances(a, b))

    def fit(self, x: Any, y: Any) -> KernelRidge:
        """Solve for the dual coefficients."""
        x, y = _check_pair(x, y)
        n, d = x.shape
        if self.gamma is None:
            variance = float(x.var())
            self.gamma_ = 1.0 / (d * variance) if variance > 0 else 1.0 / d
        else:
            self.gamma_ = self.gamma
        self.train_ = x.copy()
        self.mean_ = y.mean(axis=0)
        gram = self.kernel(x, x)
        gram[np.diag_indices(n)] += self.lam
        self.dual_coef_ = scipy.linalg.solve(
            gram, y - self.mean_, assume_a="pos", overwrite_a=True, overwrite_b=True
        )
        self._fitted_shape = (n, d, y.shape[1])
        return self

    def predict(self, x: Any) -> np.ndarray:
        """``K(X, X_train) alpha + mean``."""
        x = self._check_input(x)
        return self.kernel(x, self.train_) @ self.dual_coef_ + self.mean_

    @property
    def n_parameters(self) -> int:
        """``N * d_out + d_out``: alpha and the mean (the training images aside)."""
        n, _, out = self._shape()
        return n * out + out
