"""Checks of a fit before any work: settings, data bounds, the plan, resume.

Everything here raises :class:`dmask.InputError` with one line naming the
setting or the data at fault.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from typing import Any

import numpy as np

from dmask import options
from dmask.core import lambdas
from dmask.core.planning import (
    FitPlan,
    check_plan,
    plan_fit,
)
from dmask.errors import InputError, check_choice
from dmask.graph import runtime
from dmask.io import model_store

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LAM_GRID",
    "LAM_SELECTIONS",
    "NORMALIZATIONS",
    "RESUME_KEYS",
    "SINGLE_TARGET",
    "check_lam_grid",
    "check_settings",
    "check_strength",
]


NORMALIZATIONS = ("minmax", "none")


SINGLE_TARGET = "target"


#: Criteria by which each pixel may choose its penalty (``fit(lam=...)``).
LAM_SELECTIONS = ("loo", "gcv")


#: Penalties each pixel chooses from by default.
DEFAULT_LAM_GRID = lambdas.DEFAULT_LAM_GRID


def check_settings(field: Any, lam: Any, normalize: Any) -> None:
    """Validate the model settings, raising :class:`InputError`."""
    if isinstance(field, bool) or not isinstance(field, (int, np.integer)):
        raise InputError(f"field must be an odd integer >= 1, got {field!r}")
    if field < 1 or field % 2 == 0:
        raise InputError(f"field must be an odd integer >= 1, got {field}")
    if isinstance(lam, str) and lam in LAM_SELECTIONS:
        lam = 1.0
    try:
        lam_value = float(lam)
    except (TypeError, ValueError):
        raise InputError(
            f"lam must be a positive number, 'loo' or 'gcv', got {lam!r}"
        ) from None
    if not (math.isfinite(lam_value) and lam_value > 0):
        raise InputError(f"lam must be a positive finite number, got {lam!r}")
    check_choice("normalize", normalize, NORMALIZATIONS)


def check_lam_grid(lam_grid: Any) -> tuple[float, ...]:
    """Validate penalties to choose from: sorted, distinct, positive and finite.

    None gives :data:`DEFAULT_LAM_GRID`.
    """
    if lam_grid is None:
        return tuple(DEFAULT_LAM_GRID)
    try:
        values = np.asarray(lam_grid, dtype=np.float64)
    except (TypeError, ValueError):
        message = f"lam_grid must be positive numbers, got {lam_grid!r}"
        raise InputError(message) from None
    if values.ndim != 1 or values.size == 0:
        raise InputError(f"lam_grid must be a non-empty list, got {lam_grid!r}")
    if not np.all(np.isfinite(values) & (values > 0)):
        raise InputError(f"lam_grid must be positive finite numbers, got {lam_grid!r}")
    return tuple(float(v) for v in np.unique(values))


def _fingerprint(
    shape: tuple[int, ...], names: list[str], bounds: list[np.ndarray]
) -> str:
    digest = hashlib.sha256(repr((shape, names)).encode())
    for values in bounds:
        digest.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def _check_positive(name: str, value: Any) -> None:
    """Raise InputError unless ``value`` is None or positive integer(s)."""
    if value is None:
        return
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not values or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
        for v in values
    ):
        raise InputError(f"{name} must be positive integers, got {value!r}")


def _check_bounds(name: str, low: np.ndarray, high: np.ndarray) -> None:
    bad = ~(np.isfinite(low) & np.isfinite(high))
    if bad.any():
        raise InputError(
            f"{name} has NaN or infinite pixels (sample {int(np.flatnonzero(bad)[0])})"
        )
    flat = np.flatnonzero(low == high)
    if flat.size:  # min-max scales them to zeros: say so, they teach nothing
        logger.warning(
            "%s has %d constant image(s) (sample %d first): min-max normalisation "
            "makes them all zeros",
            name, flat.size, int(flat[0]),
        )  # fmt: skip


def _checked_plan(
    n: int,
    image_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    tile_shape: tuple[int, int] | None,
    sample_block: int | None,
    memory_limit: int | None,
    method: str,
    lam_grid: tuple[float, ...] | None,
) -> FitPlan:
    """The fit's plan, refused if it cannot finish (too many or too large tasks).

    ``method="joint"`` (the joint colour mode) is planned as displacement sums
    of ``C * C`` channel pairs, which its sums are.
    """
    joint = method == "joint"
    if joint:
        channels, method = channels * channels, "displacement"
    memory = runtime.thread_memory()  # one question to the scheduler
    per_thread = memory[0]
    if memory_limit is None:  # the planner aims below what a thread has
        memory_limit = min(runtime.task_memory_budget(memory), int(0.8 * per_thread))
    plan = plan_fit(
        n,
        image_shape,
        channels,
        field,
        n_targets,
        tile_shape=tile_shape,
        sample_block=sample_block,
        memory_limit=memory_limit,
        method=method,
        n_lams=len(lam_grid) if lam_grid else 0,
    )
    check_plan(plan, options.get("max-tasks"), per_thread, selecting=bool(lam_grid))
    return dataclasses.replace(plan, method="joint") if joint else plan


#: Attributes that must match for a run to resume another's store.
RESUME_KEYS = (
    "field", "lam", "normalize", "height", "width", "channels", "n_samples",
    "training_fingerprint", "tile_shape", "sample_block", "statistics_method",
    "kernels",
)  # fmt: skip


def _check_resumable(
    store: str,
    previous: model_store.ModelProgress,
    attrs: dict[str, Any],
    names: list[str],
) -> None:
    """Refuse to resume a store written by a different training."""
    if list(previous.targets) != list(names):
        raise InputError(
            f"cannot resume {store}: it holds targets {list(previous.targets)}, "
            f"this run trains {names}"
        )
    for key in (*RESUME_KEYS, "lam_grid"):
        before = previous.attrs.get(key)
        now = attrs.get(key)
        if isinstance(before, (list, tuple)):
            before = list(before)
        if before != now:
            raise InputError(
                f"cannot resume {store}: it was started with {key}={before!r}, "
                f"this run has {key}={now!r}"
            )


def check_strength(strength: Any) -> float:
    """An expression strength: a finite number, at least 0."""
    if isinstance(strength, bool):
        raise InputError(f"strength must be a number >= 0, got {strength!r}")
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise InputError(f"strength must be a number >= 0, got {strength!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"strength must be a finite number >= 0, got {strength!r}")
    return value
