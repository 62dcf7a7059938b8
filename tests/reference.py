"""Slow, obviously-right masked ridge regression: plain loops over pixels.

Written from design.md section 1 only, independently of dmask's kernels: the
window is clipped at the border (out-of-image pixels are absent, their weights
reported as zero), the bias column is regularised with the same lambda, and
every channel is its own problem.
"""

from __future__ import annotations

import numpy as np


def minmax(images: np.ndarray) -> np.ndarray:
    """Scale every image to [0, 1] over all its channels."""
    out = np.empty(images.shape, dtype=np.float64)
    for n, image in enumerate(images.astype(np.float64)):
        low, high = image.min(), image.max()
        out[n] = (image - low) / (high - low)
    return out


def reference_fit(
    sources: np.ndarray, targets: np.ndarray, field: int, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ridge solves.

    Returns weights ``(H, W, C, r*r)`` in row-major window order (zero for
    offsets outside the image) and bias ``(H, W, C)``.
    """
    n, height, width, channels = sources.shape
    b = field // 2
    weights = np.zeros((height, width, channels, field * field))
    bias = np.zeros((height, width, channels))
    for i in range(height):
        for j in range(width):
            for c in range(channels):
                columns = []
                slots = []
                for dy in range(-b, b + 1):
                    for dx in range(-b, b + 1):
                        y, x = i + dy, j + dx
                        if 0 <= y < height and 0 <= x < width:
                            columns.append(sources[:, y, x, c])
                            slots.append((dy + b) * field + (dx + b))
                design = np.column_stack([*columns, np.ones(n)])
                gram = design.T @ design + lam * np.eye(design.shape[1])
                solution = np.linalg.solve(gram, design.T @ targets[:, i, j, c])
                weights[i, j, c, slots] = solution[:-1]
                bias[i, j, c] = solution[-1]
    return weights, bias


def reference_predict(
    sources: np.ndarray, weights: np.ndarray, bias: np.ndarray, field: int
) -> np.ndarray:
    """Apply per-pixel weights with clipped windows."""
    n, height, width, channels = sources.shape
    b = field // 2
    out = np.zeros((n, height, width, channels))
    for i in range(height):
        for j in range(width):
            for c in range(channels):
                total = np.full(n, bias[i, j, c])
                for dy in range(-b, b + 1):
                    for dx in range(-b, b + 1):
                        y, x = i + dy, j + dx
                        if 0 <= y < height and 0 <= x < width:
                            slot = (dy + b) * field + (dx + b)
                            total += weights[i, j, c, slot] * sources[:, y, x, c]
                out[:, i, j, c] = total
    return out


def reference_joint_fit(
    sources: np.ndarray, targets: np.ndarray, field: int, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ridge solves in the joint colour mode.

    Every output channel of a pixel regresses on the clipped window in all
    channels. Returns weights ``(H, W, C, r*r*C)`` (feature ``a * C + c'``:
    window offset ``a`` row-major, input channel ``c'``; zero outside the image)
    and bias ``(H, W, C)``.
    """
    n, height, width, channels = sources.shape
    b = field // 2
    weights = np.zeros((height, width, channels, field * field * channels))
    bias = np.zeros((height, width, channels))
    for i in range(height):
        for j in range(width):
            columns = []
            slots = []
            for dy in range(-b, b + 1):
                for dx in range(-b, b + 1):
                    y, x = i + dy, j + dx
                    if 0 <= y < height and 0 <= x < width:
                        for c in range(channels):
                            columns.append(sources[:, y, x, c])
                            slots.append(((dy + b) * field + (dx + b)) * channels + c)
            design = np.column_stack([*columns, np.ones(n)])
            gram = design.T @ design + lam * np.eye(design.shape[1])
            for c in range(channels):
                solution = np.linalg.solve(gram, design.T @ targets[:, i, j, c])
                weights[i, j, c, slots] = solution[:-1]
                bias[i, j, c] = solution[-1]
    return weights, bias


def reference_joint_predict(
    sources: np.ndarray, weights: np.ndarray, bias: np.ndarray, field: int
) -> np.ndarray:
    """Apply joint-mode weights with clipped windows."""
    n, height, width, channels = sources.shape
    b = field // 2
    out = np.zeros((n, height, width, channels))
    for i in range(height):
        for j in range(width):
            for c in range(channels):
                total = np.full(n, bias[i, j, c])
                for dy in range(-b, b + 1):
                    for dx in range(-b, b + 1):
                        y, x = i + dy, j + dx
                        if 0 <= y < height and 0 <= x < width:
                            for e in range(channels):
                                slot = ((dy + b) * field + (dx + b)) * channels + e
                                total += weights[i, j, c, slot] * sources[:, y, x, e]
                out[:, i, j, c] = total
    return out
