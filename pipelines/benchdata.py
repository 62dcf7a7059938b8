"""Synthetic training data of the benchmarks: cases and their faces.

Kept apart from the benchmarks so that a new process can make a case's data
with no more imports than dmask itself needs (for its peak memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmask.datasets.drawing import EXPRESSIONS, render_face, subject_params


@dataclass(frozen=True)
class Case:
    """One training job."""

    size: int
    n: int
    field: int
    channels: int = 1
    targets: int = 1

    @property
    def label(self) -> str:
        """Short description."""
        return (
            f"{self.size}x{self.size} N={self.n} r={self.field} "
            f"C={self.channels} T={self.targets}"
        )


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] image to 8 bits."""
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def faces(case: Case) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Synthetic sources and targets of a case (subjects cycle past 500)."""
    names = list(EXPRESSIONS[1 : 1 + case.targets])
    shape = (case.n, case.size, case.size, case.channels)
    sources = np.empty(shape, dtype=np.uint8)
    targets = {name: np.empty(shape, dtype=np.uint8) for name in names}
    cache: dict[tuple[int, str], np.ndarray] = {}
    for i in range(case.n):
        subject = i % 500
        params = subject_params(0, subject)
        for name, out in [("neutral", sources), *targets.items()]:
            key = (subject, name)
            if key not in cache:
                cache[key] = to_uint8(render_face(params, name, case.size, case.size))
            out[i] = cache[key][..., : case.channels]
    return sources, targets
