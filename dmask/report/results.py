"""The report's sections of numbers: the headline, the comparison, tuning, N."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dmask.checks import LAM_SELECTIONS
from dmask.errors import InputError
from dmask.model import Model
from dmask.report.html import figure_uri, new_figure
from dmask.report.sections import HeldOut
from dmask.report.tables import rows_table

__all__ = ["COMPARISON_KEYS", "IDENTITY"]


#: Columns of the comparison tables, in order (others follow).
COMPARISON_KEYS = (
    "method", "expression", "mse", "psnr", "ssim", "n_parameters",
    "train_seconds", "peak_mib", "peak_memory_mib", "status",
)  # fmt: skip


#: The method name of the identity baseline (the source face unchanged).
IDENTITY = "identity"


def _number(row: Mapping[str, Any], key: str, name: str, i: int) -> float:
    value = row[key]
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"{name} row {i}: {key} must be a number, got {value!r}"
        ) from None


def _float(value: Any) -> float:
    """A row's value as a float; NaN when it is not a number."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _is_mr(method: Any) -> bool:
    text = str(method).strip().lower()
    return text == "mr" or text.startswith(("mr ", "mr-", "mr_", "mr(", "dmask"))


def _is_identity(method: Any) -> bool:
    return str(method).strip().lower() == IDENTITY


def _done(row: Mapping[str, Any]) -> bool:
    """A row that ran: status ``ok`` (``ok (5 of 6)``) or none given."""
    status = row.get("status")
    return status is None or str(status).strip().lower().startswith("ok")


# ------------------------------------------------------------------ headline


def _method_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method that ran: its ``mean`` row's MSE and PSNR (else the mean of
    its rows'), and the number of expressions."""
    out: dict[str, dict[str, Any]] = {}
    methods = dict.fromkeys(str(row.get("method", "")) for row in rows)
    for method in methods:
        own = [r for r in rows if str(r.get("method", "")) == method and _done(r)]
        means = [r for r in own if r.get("expression") == "mean"]
        parts = [r for r in own if r.get("expression") != "mean"]
        chosen = means[:1] or parts
        mse = [_float(r.get("mse")) for r in chosen]
        mse = [v for v in mse if math.isfinite(v)]
        if not mse:
            continue
        psnr = [_float(r.get("psnr")) for r in chosen]
        psnr = [v for v in psnr if math.isfinite(v)]
        out[method] = {
            "method": method,
            "mse": float(np.mean(mse)),
            # PSNR of the mean MSE (peak 1) where the rows give none
            "psnr": float(np.mean(psnr)) if psnr else _psnr(float(np.mean(mse))),
            "expressions": len(parts) or None,
        }
    return out


def _psnr(mse: float) -> float:
    """PSNR in dB of an MSE at peak 1 (infinite for a perfect prediction)."""
    return math.inf if mse <= 0 else -10 * math.log10(mse)


def _against(mr: Mapping[str, float], other: Mapping[str, float], what: str) -> str:
    """One line: MR against ``other``, in dB of PSNR and as a ratio of MSE."""
    gain = mr["psnr"] - other["psnr"]
    ratio = mr["mse"] / other["mse"] if other["mse"] > 0 else math.inf
    if ratio < 1:
        change = f"{100 * (1 - ratio):.0f}% lower"
    elif math.isfinite(ratio):
        change = f"{ratio:.2f} times as large"
    else:
        change = "infinitely larger"
    word = "better" if gain > 0 else "worse" if gain < 0 else "no different"
    return (
        f"<li>against {what} (MSE {other['mse']:#.3g}, PSNR {other['psnr']:.2f} dB): "
        f"<b>{gain:+.2f} dB</b> ({word}); MR's MSE is {change}</li>"
    )


def headline(
    comparison: Sequence[Mapping[str, Any]] | None, held_out: HeldOut | None
) -> str:
    """What the report finds, first: MR against the best baseline and the identity.

    From ``dmask compare``'s rows when they hold MR, else from the held-out
    faces the report shows (MR against the identity only).
    """
    means = _method_means(comparison or [])
    mrs = [m for name, m in means.items() if _is_mr(name)]
    parts = ["<section id='headline' class='headline'><h2>Headline</h2>"]
    if mrs:
        mr = min(mrs, key=lambda m: m["mse"])
        others = [m for name, m in means.items() if not _is_mr(name)]
        baselines = [m for m in others if not _is_identity(m["method"])]
        identity = [m for m in others if _is_identity(m["method"])]
        over = (
            f"mean over {mr['expressions']} expressions"
            if mr["expressions"]
            else "mean"
        )
        parts.append(
            f"<p>MR (<b>{html.escape(mr['method'])}</b>, the best of "
            f"{len(mrs)} MR setting{'s' if len(mrs) > 1 else ''} compared): test "
            f"MSE <b>{mr['mse']:#.3g}</b>, PSNR <b>{mr['psnr']:.2f} dB</b> ({over}, "
            "from <code>dmask compare</code>).</p><ul>"
        )
        if baselines:
            best = min(baselines, key=lambda m: m["mse"])
            name = f"the best baseline, <b>{html.escape(best['method'])}</b>"
            parts.append(_against(mr, best, name))
        else:
            parts.append("<li>no baseline (other than the identity) ran</li>")
        if identity:
            parts.append(_against(mr, identity[0], "the <b>identity</b> (input as is)"))
        else:
            parts.append("<li>the identity was not compared</li>")
        parts.append("</ul>")
    elif held_out is not None:
        mr = {"mse": held_out.mse, "psnr": held_out.psnr}
        same = {"mse": held_out.identity_mse, "psnr": held_out.identity_psnr}
        parts.append(
            f"<p>This model on the {held_out.faces} held-out face"
            f"{'s' if held_out.faces > 1 else ''} shown below ({held_out.targets} "
            f"target{'s' if held_out.targets > 1 else ''}): MSE "
            f"<b>{held_out.mse:#.3g}</b>, PSNR <b>{held_out.psnr:.2f} dB</b>.</p><ul>"
            + _against(mr, same, "the <b>identity</b> (input as is)")
            + "<li>no baselines: give the rows of <code>dmask compare --json</code> "
            "(<code>--comparison</code>) for them</li></ul>"
        )
    else:
        parts.append(
            "<p>No held-out faces and no comparison rows: nothing to score.</p>"
        )
    parts.append("</section>")
    return "".join(parts)


# ---------------------------------------------------------------- comparison


def _not_run(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows that did not run, each distinct status said once, with its rows."""
    by_status: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        status = str(row.get("status"))
        method = str(row.get("method", ""))
        expressions = by_status.setdefault(status, {}).setdefault(method, [])
        expressions.append(str(row.get("expression", "")))
    items = []
    for status, methods in by_status.items():
        kind, _, why = status.partition(":")
        count = sum(len(e) for e in methods.values())
        applied = "; ".join(
            f"{html.escape(m)} ({len(e)} row{'s' if len(e) > 1 else ''}: "
            f"{html.escape(', '.join(e))})"
            for m, e in methods.items()
        )
        items.append(
            f"<li><b>{html.escape(kind.strip())}</b>"
            + (f": {html.escape(why.strip())}" if why.strip() else "")
            + f" <span class='note'>(said once for {count} "
            f"row{'s' if count > 1 else ''}: {applied})</span></li>"
        )
    return (
        "<p>Not run, so left out of the tables:</p>"
        f"<ul id='not-run'>{''.join(items)}</ul>"
    )


def _field_of(row: Mapping[str, Any]) -> int | None:
    """The receptive field of an MR row: its ``field``, else ``r=3`` in its name."""
    value = _float(row.get("field"))
    if math.isfinite(value):
        return int(value)
    found = re.search(r"\br\s*=\s*(\d+)", str(row.get("method", "")))
    return int(found.group(1)) if found else None


def _comparison_chart(rows: Sequence[Mapping[str, Any]]) -> str:
    """MR's mean MSE against r (each MR variant), baselines as lines; "" unless
    the rows hold several r."""
    means = _method_means(rows)
    series: dict[str, dict[int, float]] = {}
    for name, mean in means.items():
        field = _field_of({"method": name})
        if _is_mr(name) and field is not None:
            variant = re.sub(r"\s*\br\s*=\s*\d+", "", name).strip() or "mr"
            series.setdefault(variant, {})[field] = mean["mse"]
    if len({f for points in series.values() for f in points}) < 2:
        return ""
    figure, (axes,) = new_figure(1, 1.6, row_height=3.4)
    for variant, points in series.items():
        fields = sorted(points)
        axes.plot(fields, [points[f] for f in fields], marker="o", lw=2.4,
                  label=variant)  # fmt: skip
    others = sorted(
        (m for name, m in means.items() if not _is_mr(name)), key=lambda m: m["mse"]
    )
    shown = [m for m in others if not _is_identity(m["method"])][:3]
    shown += [m for m in others if _is_identity(m["method"])]
    top = max(v for points in series.values() for v in points.values())
    for i, other in enumerate(shown):
        if other["mse"] > 10 * top:  # far off the scale: said in the table
            continue
        axes.axhline(other["mse"], ls="--" if i % 2 else ":", lw=1.2,
                     color=f"C{len(series) + i}", label=other["method"])  # fmt: skip
    values = [line.get_ydata() for line in axes.get_lines()]
    drawn = [float(v) for line in values for v in np.atleast_1d(line) if v > 0]
    if drawn and max(drawn) / min(drawn) >= 20:
        axes.set_yscale("log")
    fields = sorted({f for points in series.values() for f in points})
    axes.set_xticks(fields)
    axes.set_xlabel("receptive field r")
    axes.set_ylabel("test MSE (mean over expressions)")
    axes.set_title("MR's test MSE against r, and the baselines", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return f'<img src="{figure_uri(figure)}" alt="comparison: test MSE against r">'


def comparison_section(rows: list[Mapping[str, Any]]) -> str:
    """Means per method, then every row (folded away), and what did not run."""
    ran = [row for row in rows if _done(row)]
    skipped = [row for row in rows if not _done(row)]
    present = {key for row in ran for key in row}
    columns = [k for k in COMPARISON_KEYS if k in present]
    columns += [
        k for k in dict.fromkeys(k for row in ran for k in row) if k not in columns
    ]
    if ran and all(str(row.get("status", "ok")).strip() == "ok" for row in ran):
        columns = [k for k in columns if k != "status"]  # all 'ok': said here

    def mr_class(row: Mapping[str, Any]) -> str | None:
        return "mr" if _is_mr(row.get("method", "")) else None

    parts = [
        "<h2 id='comparison'>Comparison</h2><p class='note'>MR rows highlighted; "
        "MSE and PSNR on the test split in the model's scale (PSNR peak 1)."
        "</p>"
    ]
    means = [row for row in ran if row.get("expression") == "mean"]
    if means:
        parts.append("<h3>Mean over expressions</h3>")
        parts.append(
            rows_table(
                means, [k for k in columns if k != "expression"], row_class=mr_class,
                table_id="comparison-means",
            )
        )  # fmt: skip
    parts.append(_comparison_chart(rows))
    table = rows_table(ran, columns, row_class=mr_class, table_id="comparison-table")
    if means:
        parts.append(
            f"<details><summary>Every row ({len(ran)})</summary>{table}</details>"
        )
    else:
        parts.append(table)
    if skipped:
        parts.append(_not_run(skipped))
    return "".join(parts)


# -------------------------------------------------------------------- tuning


def _mean_by(points: list[tuple[Any, float]]) -> dict[Any, float]:
    sums: dict[Any, list[float]] = {}
    for key, value in points:
        sums.setdefault(key, []).append(value)
    return {key: float(np.mean(values)) for key, values in sums.items()}


def _lam_key(row: Mapping[str, Any], i: int) -> float | str:
    """A row's lambda: a number, or ``gcv``/``loo`` (chosen per pixel)."""
    value = row["lam"]
    if isinstance(value, str) and value.strip().lower() in LAM_SELECTIONS:
        return value.strip().lower()
    return _number(row, "lam", "tuning", i)


def _lam_label(lam: float | str, medians: Mapping[Any, float] | None = None) -> str:
    if isinstance(lam, str):
        median = (medians or {}).get(lam)
        chosen = f", median {median:.3g}" if median is not None else ""
        return f"{lam} (per pixel{chosen})"
    return f"{lam:g}"


def _model_lam(model: Model) -> float | str:
    value = model.dataset.attrs.get("lam")
    return value if isinstance(value, str) else model.lam


def tuning_section(rows: list[Mapping[str, Any]], model: Model) -> str:
    """Test MSE of each setting: a table, and plots against r and lambda.

    ``gcv``/``loo`` settings (a penalty per pixel) are a line of their own
    against r, and a point at the median penalty they chose (``lam_median``,
    which ``dmask tune`` records) against lambda.
    """
    points = []
    for i, row in enumerate(rows):
        field = _number(row, "field", "tuning", i)
        lam = _lam_key(row, i)
        mse = _number(row, "mse", "tuning", i)
        finite = math.isfinite(field) and math.isfinite(mse)
        if finite and (isinstance(lam, str) or math.isfinite(lam)):
            points.append((int(field), lam, str(row["expression"]), mse, row))
    left = len(rows) - len(points)
    if any(p[2] == "mean" for p in points):
        points = [p for p in points if p[2] == "mean"]
        what = "the 'mean' rows"
    else:
        what = "mean over expressions"
    table = _mean_by([((f, lam), mse) for f, lam, _, mse, _ in points])
    medians = _mean_by(
        [
            ((f, lam), _float(row["lam_median"]))
            for f, lam, _, _, row in points
            if isinstance(lam, str) and math.isfinite(_float(row.get("lam_median")))
        ]
    )
    spread = _mean_by(
        [
            ((f, lam), _float(row["mse_std"]))
            for f, lam, _, _, row in points
            if math.isfinite(_float(row.get("mse_std")))
        ]
    )
    psnrs = _mean_by(
        [
            ((f, lam), _float(row["psnr"]))
            for f, lam, _, _, row in points
            if math.isfinite(_float(row.get("psnr")))
        ]
    )
    head = "<h2 id='tuning'>Tuning</h2>"
    if not table:
        return head + "<p>No tuning rows with a finite MSE.</p>"
    fields_ = sorted({f for f, _ in table})
    numeric = sorted({lam for _, lam in table if not isinstance(lam, str)})
    chosen = sorted({lam for _, lam in table if isinstance(lam, str)})
    (best_f, best_lam), best = min(table.items(), key=lambda item: item[1])
    parts = [head]
    panels = []
    if len(fields_) > 1:
        panels.append("r")
    if len(numeric) + len({lam for _, lam in medians}) > 1:
        panels.append("lambda")
    mine = (model.field, _model_lam(model))
    if panels:
        figure, axes = new_figure(len(panels), 1.35, row_height=3.2)
        by_panel = dict(zip(panels, axes, strict=True))
        if "r" in by_panel:
            ax = by_panel["r"]
            for lam in [*numeric, *chosen]:
                xs = [f for f in fields_ if (f, lam) in table]
                ax.plot(xs, [table[f, lam] for f in xs], marker="o",
                        ls="--" if isinstance(lam, str) else "-",
                        label=f"λ={_lam_label(lam)}")  # fmt: skip
            if mine in table:
                ax.plot(mine[0], table[mine], marker="*", ms=14, color="black",
                        ls="none", label="this model")  # fmt: skip
            ax.set_xlabel("receptive field r")
            ax.set_xticks(fields_)
        if "lambda" in by_panel:
            ax = by_panel["lambda"]
            for i, f in enumerate(fields_):
                xs = [lam for lam in numeric if (f, lam) in table]
                ax.plot(xs, [table[f, lam] for lam in xs], marker="o",
                        color=f"C{i}", label=f"r={f}")  # fmt: skip
                for lam in chosen:
                    if (f, lam) in medians:
                        ax.plot(medians[f, lam], table[f, lam], ls="none",
                                marker="D" if lam == "gcv" else "s", color=f"C{i}",
                                mfc="white", mew=1.8,
                                label=f"r={f}, {lam} at its median λ")  # fmt: skip
            if mine in table and (mine in medians or not isinstance(mine[1], str)):
                ax.plot(medians.get(mine, mine[1]), table[mine], marker="*", ms=14,
                        color="black", ls="none", label="this model")  # fmt: skip
            xs = [v for v in [*numeric, *medians.values()] if v > 0]
            if xs and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
            ax.set_xlabel("lambda")
        for name, ax in by_panel.items():
            ax.set_ylabel(f"test MSE ({what})")
            ax.set_title(f"test MSE against {name}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        alt = " and ".join(panels)
        parts.append(f'<img src="{figure_uri(figure)}" alt="test MSE against {alt}">')
    settings = [
        {
            "field": f,
            "lam": lam,
            **({"lam_median": medians[f, lam]} if (f, lam) in medians else {}),
            "mse": mse,
            **({"mse_std": spread[f, lam]} if (f, lam) in spread else {}),
            **({"psnr": psnrs[f, lam]} if (f, lam) in psnrs else {}),
        }
        for (f, lam), mse in sorted(
            table.items(), key=lambda item: (item[0][0], _order(item[0][1]))
        )
    ]
    columns = ["field", "lam"]
    columns += [k for k in ("lam_median", "mse", "mse_std", "psnr") if k in
                {key for row in settings for key in row}]  # fmt: skip

    def best_class(row: Mapping[str, Any]) -> str | None:
        return "best" if (row["field"], row["lam"]) == (best_f, best_lam) else None

    parts.append(
        rows_table(
            settings, columns, row_class=best_class, table_id="tuning-table",
            text={"lam": lambda lam: f"{lam} (per pixel)"},
        )
    )  # fmt: skip
    best_key = (best_f, best_lam)
    best_median = {best_lam: medians[best_key]} if best_key in medians else {}
    parts.append(
        f"<p class='note'>Lowest test MSE: r = {best_f}, lambda = "
        f"{html.escape(_lam_label(best_lam, best_median))} (MSE {best:.5g}), "
        f"highlighted; {len(points)} rows used ({what})"
        + (f", {left} left out (no finite MSE)" if left else "")
        + ".</p>"
    )
    return "".join(parts)


def _order(lam: float | str) -> tuple[int, float, str]:
    """Numbers first, in order, then ``gcv`` and ``loo``."""
    return (1, 0.0, lam) if isinstance(lam, str) else (0, lam, "")


# ---------------------------------------------------------------------- size


def size_section(rows: list[Mapping[str, Any]]) -> str:
    points = []
    for i, row in enumerate(rows):
        n = _number(row, "n_train" if "n_train" in row else "n", "size_curve", i)
        mse = _number(row, "mse", "size_curve", i)
        if math.isfinite(n) and math.isfinite(mse):
            points.append(((str(row["method"]), n), mse))
    table = _mean_by(points)
    head = "<h2 id='size'>Training set size</h2>"
    if not table:
        return head + "<p>No size-curve rows with a finite MSE.</p>"
    figure, (axes,) = new_figure(1, 1.6, row_height=3.4)
    methods = list(dict.fromkeys(m for m, _ in table))
    for method in methods:
        ns = sorted(n for m, n in table if m == method)
        mr = _is_mr(method)
        axes.plot(
            ns, [table[method, n] for n in ns], marker="o", label=method,
            lw=2.8 if mr else 1.3, zorder=3 if mr else 2,
        )  # fmt: skip
    ns = [n for _, n in table]
    if min(ns) > 0 and max(ns) / min(ns) >= 10:
        axes.set_xscale("log")
    axes.set_xlabel("training pairs N")
    axes.set_ylabel("test MSE")
    axes.set_title("test MSE against N", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return head + f'<img src="{figure_uri(figure)}" alt="test MSE against N">'
