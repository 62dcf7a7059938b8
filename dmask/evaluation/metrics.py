"""Error measures and result tables: PSNR, tables, CSV and JSON files."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["text_table", "psnr", "write_results"]


def psnr(mse: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """PSNR in dB of per-image mean squared errors (infinite where exact)."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(peak**2 / np.asarray(mse, dtype=np.float64))


def write_results(
    rows: Sequence[dict[str, Any]],
    csv_path: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
) -> None:
    """Write evaluation rows as CSV and/or JSON."""
    if csv_path is not None:
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if json_path is not None:
        with open(json_path, "w") as handle:
            json.dump(list(rows), handle, indent=2)


def text_table(lines: Sequence[Sequence[str]], free_last: bool = False) -> str:
    """Plain-text table of rows of cells (the first row is the header).

    Every column is right-aligned to its widest cell; with ``free_last`` the last
    column (free text such as a status) is left as it is.
    """
    aligned = len(lines[0]) - (1 if free_last else 0)
    widths = [max(len(line[i]) for line in lines) for i in range(aligned)]
    return "\n".join(
        "  ".join(
            [cell.rjust(w) for cell, w in zip(line[:aligned], widths, strict=True)]
            + list(line[aligned:])
        )
        for line in lines
    )
