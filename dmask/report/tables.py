"""The report's tables of rows: readable headers, one precision per column."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["FORMATS", "HEADERS", "NOT_MEASURED", "header", "rows_table"]


#: Column headers of the row keys that ``dmask compare`` and ``dmask tune`` write.
HEADERS = {
    "method": "method",
    "expression": "expression",
    "n_train": "train pairs",
    "n_test": "test pairs",
    "n": "training pairs N",
    "mse": "MSE",
    "mse_std": "MSE sd",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "n_parameters": "parameters",
    "train_seconds": "training (s)",
    "peak_mib": "peak memory (MiB)",
    "peak_memory_mib": "peak memory (MiB)",
    "status": "status",
    "field": "field r",
    "lam": "lambda",
    "lam_median": "median lambda chosen",
    "folds": "folds",
    "best": "best",
}


#: Format of the numbers of a column; columns not named here get as many
#: decimals as their smallest non-zero value needs (see :func:`_decimals`).
FORMATS = {
    "psnr": ".2f",
    "ssim": ".4f",
    "train_seconds": ".3f",
    "peak_mib": ".1f",
    "peak_memory_mib": ".1f",
    "lam": "g",
    "lam_median": ".3g",
}


#: Columns where 0 means that nothing was measured (and a value too small for
#: the column's precision is said as ``< 0.1``).
MEASURED = ("peak_mib", "peak_memory_mib")


#: What such a cell says.
NOT_MEASURED = "not measured"


#: Significant digits of the smallest value of a column of chosen decimals.
DIGITS = 3


#: Fixed-point text longer than this is written in scientific notation.
LONGEST = 12


def header(key: str) -> str:
    """The column header of a row key (``mse_std`` -> ``MSE sd``)."""
    return HEADERS.get(key, key.replace("_", " "))


def _finite_floats(values: Sequence[Any]) -> list[float]:
    return [
        float(v)
        for v in values
        if isinstance(v, (float, np.floating))
        and not isinstance(v, bool)
        and math.isfinite(v)
    ]


def _decimals(values: Sequence[Any]) -> int:
    """Decimals that show the smallest non-zero ``|value|`` with :data:`DIGITS`."""
    magnitudes = [abs(v) for v in _finite_floats(values) if v != 0]
    if not magnitudes:
        return DIGITS
    exponent = math.floor(math.log10(min(magnitudes)))
    return max(0, min(8, DIGITS - 1 - exponent))


def _cell(key: str, value: Any, spec: str) -> tuple[str, bool]:
    """Text of one cell and whether it is a number."""
    if key in MEASURED and (value is None or value == 0):
        return NOT_MEASURED, False
    if value is None:
        return "", False
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else ""), False
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}", True
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "", True
        if math.isinf(value):
            return ("inf" if value > 0 else "-inf"), True
        text = format(value, spec)
        if key in MEASURED and 0 < value and float(text) == 0:  # below the precision
            return f"< {format(10 ** -int(spec.strip('.f')), spec)}", True
        if len(text) > LONGEST:
            text = format(value, f".{DIGITS - 1}e")
        return text, True
    return str(value), False


def rows_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    row_class: Callable[[Mapping[str, Any]], str | None] | None = None,
    table_id: str | None = None,
    text: Mapping[str, Callable[[Any], str]] | None = None,
) -> str:
    """An HTML table of ``rows``, one column per key, headers from :data:`HEADERS`.

    Numbers of a column share one format (:data:`FORMATS`, else the decimals
    its smallest value needs), right-aligned; ``text`` maps a key to a function
    giving the cell of a value that is not a number (``lam``: ``gcv``).
    """
    specs = {
        key: FORMATS.get(key, f".{_decimals([row.get(key) for row in rows])}f")
        for key in columns
    }
    head = "".join(f"<th>{html.escape(header(key))}</th>" for key in columns)
    lines = [f"<tr>{head}</tr>"]
    for row in rows:
        cells = []
        for key in columns:
            value = row.get(key)
            if text and key in text and isinstance(value, str):
                shown, numeric = text[key](value), False
            else:
                shown, numeric = _cell(key, value, specs[key])
            css = ' class="num"' if numeric else ""
            cells.append(f"<td{css}>{html.escape(shown)}</td>")
        css = row_class(row) if row_class else None
        lines.append(f"<tr{f' class={css!r}' if css else ''}>{''.join(cells)}</tr>")
    where = f" id='{html.escape(table_id)}'" if table_id else ""
    return f"<table class='data'{where}>{''.join(lines)}</table>"
