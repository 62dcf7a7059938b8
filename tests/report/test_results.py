"""The report's numbers: headline, readable tables, refusals once, charts, footer,
and the rows ``dmask tune`` writes with ``gcv`` read back by ``dmask report``."""

from __future__ import annotations

import csv
import datetime
import json
import math
import re
from html.parser import HTMLParser
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from helpers import LOCAL_CLUSTER

from dmask.cli import main
from dmask.core import minmax
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.errors import InputError
from dmask.evaluation.tune import _fold_mean
from dmask.io import dataset_store
from dmask.report.html import colour_bar_figure
from dmask.report.page import write_report
from dmask.report.sections import faces_section
from dmask.report.tables import rows_table

EXPRESSIONS = ["happy", "sad", "surprised", "angry", "afraid", "disgusted"]

#: Per method that ran: MSE, PSNR and peak MiB of its first expression.
RAN = {
    "mr r=1": (0.0115, 19.81, 12.0),
    "mr r=3": (0.00265, 26.14, 20.5),
    "mr r=5": (0.00267, 26.25, 0.0),
    "full_ridge": (0.0244, 17.02, 0.5),
    "identity": (0.00032, 36.20, None),
    "mean_difference": (0.00034, 35.74, 0.01),
}

#: What ``dmask compare`` says of the lasso and OMP at a size they cannot take.
REFUSAL = (
    "refused: needs 3.2 GiB, more than the memory budget of 1.0 GiB (memory_budget)"
)


def compare_rows() -> list[dict]:
    """Rows shaped as :func:`dmask.evaluation.compare.compare` writes them."""
    rows = []
    for method, (mse, psnr, peak) in RAN.items():
        group = [
            {
                "method": method,
                "expression": name,
                "n_train": 9,
                "n_test": 3,
                "mse": mse * (1 + 0.01 * i),
                "psnr": psnr - 0.01 * i,
                "ssim": 0.9,
                "n_parameters": 30_720,
                "train_seconds": 0.125,
                "peak_mib": peak,
                "status": "ok",
            }
            for i, name in enumerate(EXPRESSIONS)
        ]
        mean = {**group[0], "expression": "mean"}
        mean["mse"] = float(np.mean([r["mse"] for r in group]))
        mean["psnr"] = float(np.mean([r["psnr"] for r in group]))
        rows += [*group, mean]
    for method in ("lasso", "omp"):
        rows += [
            {
                "method": method,
                "expression": name,
                "n_train": 9,
                "n_test": 3,
                "mse": None,
                "psnr": None,
                "ssim": None,
                "n_parameters": None,
                "train_seconds": None,
                "peak_mib": None,
                "status": REFUSAL,
            }
            for name in [*EXPRESSIONS, "mean"]
        ]
    return rows


def means(rows: list[dict], method: str) -> dict:
    return next(r for r in rows if r["method"] == method and r["expression"] == "mean")


class Tables(HTMLParser):
    """Every table of a page by id (rows of cell texts), list items, images' alt
    texts, and the page's text without tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.headers: list[str] = []
        self.items: list[str] = []
        self.alts: list[str] = []
        self.text: list[str] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._item: list[str] | None = None
        self._header = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(
                attrs.get("id") or f"table {len(self.tables)}", []
            )
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell, self._header = [], tag == "th"
        elif tag == "li":
            self._item = []
        elif tag == "img":
            self.alts.append(attrs.get("alt", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell)
            if self._table is not None:
                self._table[-1].append(text)
            if self._header:
                self.headers.append(text)
            self._cell = None
        elif tag == "li" and self._item is not None:
            self.items.append(" ".join("".join(self._item).split()))
            self._item = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        for part in (self._cell, self._item):
            if part is not None:
                part.append(data)


def parse(path: Path) -> Tables:
    page = Tables()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def headline_text(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    section = re.search(r"<section id='headline'.*?</section>", text, re.S)
    assert section, "no headline"
    blocks = re.sub(r"</?(section|h2|p|ul|li)\b[^>]*>", " ", section.group(0))
    return " ".join(re.sub(r"<[^>]+>", "", blocks).split())


def column(table: list[list[str]], name: str) -> list[str]:
    index = table[0].index(name)
    return [row[index] for row in table[1:]]


@pytest.fixture(scope="module")
def compared(trained, tmp_path_factory):
    ds, model = trained
    path = tmp_path_factory.mktemp("results") / "compared.html"
    write_report(path, model, ds, comparison=compare_rows(), command=["dmask", "x"])
    return path


# ------------------------------------------------------------------ headline


def test_headline_mr_against_the_best_baseline_and_the_identity(compared):
    rows = compare_rows()
    mr, best, same = (means(rows, m) for m in ("mr r=3", "mean_difference", "identity"))
    text = headline_text(compared)
    assert text.startswith("Headline MR (mr r=3, the best of 3 MR settings compared)")
    assert f"test MSE {mr['mse']:#.3g}, PSNR {mr['psnr']:.2f} dB" in text
    assert "mean over 6 expressions" in text
    for other, name in ((best, "the best baseline, mean_difference"),
                        (same, "the identity (input as is)")):  # fmt: skip
        gain = mr["psnr"] - other["psnr"]
        ratio = mr["mse"] / other["mse"]
        assert (
            f"against {name} (MSE {other['mse']:#.3g}, PSNR {other['psnr']:.2f} dB): "
            f"{gain:+.2f} dB (worse); MR's MSE is {ratio:.2f} times as large"
        ) in text
    # the headline comes first, before the navigation and every other section
    page = compared.read_text(encoding="utf-8")
    assert page.index("id='headline'") < page.index("<nav>") < page.index("id='model'")


def test_headline_when_mr_wins_and_without_an_identity(trained, tmp_path):
    ds, model = trained
    rows = [
        {"method": "mr r=3", "expression": "mean", "mse": 0.001, "psnr": 30.0},
        {"method": "kernel_ridge", "expression": "mean", "mse": 0.004, "psnr": 24.0},
        {"method": "omp", "expression": "mean", "mse": None, "status": REFUSAL},
    ]
    path = write_report(tmp_path / "r.html", model, ds, comparison=rows)
    text = headline_text(path)
    assert "kernel_ridge (MSE 0.00400, PSNR 24.00 dB): +6.00 dB (better)" in text
    assert "MR's MSE is 75% lower" in text
    assert "the identity was not compared" in text


def test_headline_without_comparison_scores_the_faces_shown(trained, tmp_path):
    """MR and the identity on the held-out faces the page shows, computed here
    from the model's predictions and the normalised faces."""
    ds, model = trained
    _, _, held = faces_section(model, ds, "neutral", "test", 4)
    mr, same = [], []
    for target in model.targets:
        sources, truths = dataset_store.select_pairs(ds, "neutral", [target], "test")
        raw = sources.values[:4].astype(np.float64)
        truth = truths[target].values[:4].astype(np.float64)
        predicted = model.predict(raw)[target]
        seen, true = (
            np.concatenate(
                [
                    minmax.normalize_block(f, *minmax.minmax_parameters(f))
                    for f in np.split(faces, len(faces))
                ]
            )
            for faces in (raw, truth)
        )
        mr += list(((predicted - true) ** 2).mean(axis=(1, 2, 3)))
        same += list(((seen - true) ** 2).mean(axis=(1, 2, 3)))
    assert held.faces == len(mr) and held.targets == 2
    assert held.mse == pytest.approx(np.mean(mr), rel=1e-9)
    assert held.identity_mse == pytest.approx(np.mean(same), rel=1e-9)
    assert held.psnr == pytest.approx(np.mean(-10 * np.log10(mr)), rel=1e-9)
    path = write_report(tmp_path / "plain.html", model, ds)
    text = headline_text(path)
    assert f"This model on the {held.faces} held-out faces shown below" in text
    assert f"MSE {held.mse:#.3g}, PSNR {held.psnr:.2f} dB" in text
    assert f"identity (input as is) (MSE {held.identity_mse:#.3g}" in text
    assert "no baselines: give the rows of dmask compare --json" in text


# -------------------------------------------------------------------- tables


def test_table_headers_are_readable(compared, trained, tmp_path):
    page = parse(compared)
    means_table = page.tables["comparison-means"]
    assert means_table[0] == [
        "method", "MSE", "PSNR (dB)", "SSIM", "parameters", "training (s)",
        "peak memory (MiB)", "train pairs", "test pairs",
    ]  # fmt: skip
    assert page.tables["comparison-table"][0][:3] == ["method", "expression", "MSE"]
    ds, model = trained
    tuning = [
        {"field": f, "lam": lam, "expression": "mean", "mse": 0.01 / f + lam,
         "mse_std": 0.001, "psnr": 20.0 + f, "folds": 5}
        for f in (1, 3) for lam in (0.1, 1.0)
    ]  # fmt: skip
    path = write_report(tmp_path / "t.html", model, ds, tuning=tuning)
    assert parse(path).tables["tuning-table"][0] == [
        "field r", "lambda", "MSE", "MSE sd", "PSNR (dB)",
    ]  # fmt: skip
    for name in (compared, path):
        headers = parse(name).headers
        assert headers and not [h for h in headers if "_" in h], headers


def test_one_precision_per_column(compared):
    table = parse(compared).tables["comparison-means"]
    mse = column(table, "MSE")
    # the smallest MSE, 0.000339, shown with 3 significant digits: 6 decimals
    assert all(re.fullmatch(r"0\.\d{6}", v) for v in mse), mse
    assert all(re.fullmatch(r"\d+\.\d\d", v) for v in column(table, "PSNR (dB)"))
    assert all(re.fullmatch(r"\d\.\d{4}", v) for v in column(table, "SSIM"))
    assert set(column(table, "training (s)")) == {"0.125"}
    assert set(column(table, "parameters")) == {"30,720"}
    # a value far too long in fixed point is written in scientific notation
    html = rows_table([{"mse": 0.001}, {"mse": 6.56e18}, {"mse": 0.02}], ["mse"])
    assert re.findall(r"<td class=\"num\">([^<]*)</td>", html) == [
        "0.00100", "6.56e+18", "0.02000",
    ]  # fmt: skip


def test_refusals_are_said_once(compared):
    page = parse(compared)
    text = compared.read_text(encoding="utf-8")
    assert text.count("needs 3.2 GiB") == 1
    (said,) = [item for item in page.items if "needs 3.2 GiB" in item]
    listed = ", ".join([*EXPRESSIONS, "mean"])
    assert said == (
        "refused: needs 3.2 GiB, more than the memory budget of 1.0 GiB "
        f"(memory_budget) (said once for 14 rows: lasso (7 rows: {listed}); "
        f"omp (7 rows: {listed}))"
    )
    for table in page.tables.values():
        methods = [row[0] for row in table[1:]]
        assert "lasso" not in methods and "omp" not in methods
        assert not [cell for row in table for cell in row if "refused" in cell]
    # every row that ran is 'ok': the status column says nothing and is left out
    assert "status" not in page.tables["comparison-table"][0]


def test_a_peak_of_zero_is_not_measured(compared):
    table = parse(compared).tables["comparison-means"]
    peaks = dict(
        zip(column(table, "method"), column(table, "peak memory (MiB)"), strict=True)
    )
    assert peaks == {
        "mr r=1": "12.0", "mr r=3": "20.5", "mr r=5": "not measured",
        "full_ridge": "0.5", "identity": "not measured", "mean_difference": "< 0.1",
    }  # fmt: skip


# -------------------------------------------------------------------- charts


def test_mse_against_r_from_the_comparison_when_several_r(compared, trained, tmp_path):
    assert "comparison: test MSE against r" in parse(compared).alts
    ds, model = trained
    one = [r for r in compare_rows() if r["method"] in ("mr r=3", "identity")]
    path = write_report(tmp_path / "one.html", model, ds, comparison=one)
    assert not [a for a in parse(path).alts if a.startswith("comparison")]


def _tuning(fields, lams) -> list[dict]:
    return [
        {"field": f, "lam": lam, "expression": "mean",
         "mse": 0.01 / f + (lam if isinstance(lam, float) else 0.001),
         "psnr": 25.0, **({"lam_median": 0.03} if lam == "gcv" else {})}
        for f in fields for lam in lams
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "lams", "chart"),
    [
        ((1, 3, 5), (0.4,), "test MSE against r"),
        ((3,), (0.1, 1.0, 10.0), "test MSE against lambda"),
        ((1, 3), (0.1, 1.0), "test MSE against r and lambda"),
        ((3,), (0.4, "gcv"), "test MSE against lambda"),  # gcv at its median
        ((3,), (0.4,), None),
    ],
)
def test_tuning_charts_when_several_r_or_lambda(trained, tmp_path, fields, lams, chart):
    ds, model = trained
    path = write_report(tmp_path / "t.html", model, ds, tuning=_tuning(fields, lams))
    page = parse(path)
    charts = [a for a in page.alts if a.startswith("test MSE against")]
    assert charts == ([chart] if chart else [])
    assert len(page.tables["tuning-table"]) == 1 + len(fields) * len(lams)


def test_tuning_rows_of_penalties_chosen_per_pixel(trained, tmp_path):
    ds, model = trained
    rows = _tuning((1, 3), (0.1, 1.0, "gcv"))
    rows += [{**r, "lam": "loo", "lam_median": None} for r in _tuning((1, 3), ("x",))]
    path = write_report(tmp_path / "t.html", model, ds, tuning=rows)
    table = parse(path).tables["tuning-table"]
    assert column(table, "lambda") == [
        "0.1", "1", "gcv (per pixel)", "loo (per pixel)",
    ] * 2  # fmt: skip
    assert column(table, "median lambda chosen") == ["", "", "0.03", ""] * 2
    text = path.read_text(encoding="utf-8")
    assert "Lowest test MSE: r = 3, lambda = gcv (per pixel, median 0.03)" in text
    with pytest.raises(InputError, match="tuning row 0: lam must be a number, got 'x'"):
        write_report(tmp_path / "x.html", model, ds, tuning=_tuning((1,), ("x",)))


# ---------------------------------------------------------- colour bars, footer


def _overflow(figure) -> float:
    """How far (inches) what ``figure`` draws reaches outside it, at most."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    drawn = figure.get_tightbbox(canvas.get_renderer())
    box = figure.bbox_inches
    return max(
        box.x0 - drawn.x0, drawn.x1 - box.x1, box.y0 - drawn.y0, drawn.y1 - box.y1
    )


def test_colour_bar_labels_fit_their_figure():
    """Every tick label and the label of the error maps' colour bar are drawn
    inside its figure (constrained layout), whatever the scale's numbers."""
    for vmax in (0.0123, 0.56, 123.0, 0.000123):
        figure = colour_bar_figure(vmax, "mean |error| over channels")
        assert _overflow(figure) <= 0.0
    # the check does catch a label that leaves the figure (a fixed layout)
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    cramped = Figure(figsize=(0.6, 1.2))
    axes = cramped.add_axes((0.1, 0.05, 0.25, 0.9))
    cramped.colorbar(ScalarMappable(), cax=axes, label="mean |error| over channels")
    assert _overflow(cramped) > 0.1


def test_footer_says_version_command_and_utc_time(compared, trained, tmp_path):
    text = compared.read_text(encoding="utf-8")
    footer = re.search(r"<footer[^>]*>(.*?)</footer>", text, re.S).group(1)
    assert f"dmask {version('dmask')}" in footer
    assert "command <code>dmask x</code>" in footer
    stamp = re.search(r"<time datetime='([^']+)'>\1</time> \(UTC\)", footer).group(1)
    written = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert written.utcoffset() == datetime.timedelta(0) and stamp.endswith("Z")
    now = datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(0) <= now - written < datetime.timedelta(minutes=10)
    assert footer in text.split("</h1>", 1)[1].split("</p>", 1)[0]  # header too
    # by default the dmask command running; from Python, said so
    from dmask.io.stores import recording_command

    ds, model = trained
    path = write_report(tmp_path / "d.html", model, ds)
    assert "command <code>(Python API)</code>" in path.read_text(encoding="utf-8")
    with recording_command(["dmask", "report", "m.zarr", "--out", "r.html"]):
        path = write_report(tmp_path / "e.html", model, ds, overwrite=True)
    assert "command <code>dmask report m.zarr --out r.html</code>" in path.read_text(
        encoding="utf-8"
    )


# ---------------------------------------------------- the README's tune + report


def test_tune_with_gcv_then_report_reads_its_rows(tmp_path, capsys):
    """The README's ``dmask tune ... --lams ... gcv --json t.json`` and then
    ``dmask report --tuning t.json``: the gcv rows are read, shown in the table
    with the median penalty they chose, and plotted."""
    data, model = str(tmp_path / "f.zarr"), str(tmp_path / "m.zarr")
    rows_file, page = str(tmp_path / "t.json"), tmp_path / "r.html"
    make_synthetic_dataset(data, 8, (24, 20), seed=2)
    tune = ["-q", "tune", data, "--fields", "1", "3", "--lams", "0.4", "gcv"]
    table = str(tmp_path / "t.csv")  # the same rows, one header: every row's keys
    tune += ["--targets", "happy", "--json", rows_file, "--csv", table]
    assert main([*tune, *LOCAL_CLUSTER]) == 0
    printed = capsys.readouterr().out  # the command's own table: the median too
    with open(rows_file) as handle:
        rows = json.load(handle)
    chosen = [r for r in rows if r["lam"] == "gcv"]
    for row in (r for r in chosen if r["expression"] == "mean"):
        assert f"gcv (median {row['lam_median']:.3g})" in printed
    assert len(chosen) == 4 and all(r["lam_median"] > 0 for r in chosen)
    assert all(r["lam_median"] is None for r in rows if r["lam"] != "gcv")
    with open(table) as handle:
        written = list(csv.DictReader(handle))
    assert [r["lam_median"] for r in written] == [
        "" if r["lam_median"] is None else str(r["lam_median"]) for r in rows
    ]
    assert main(["-q", "train", data, "--out", model, "--field", "3", "--lam", "gcv",
                 "--targets", "happy", *LOCAL_CLUSTER]) == 0  # fmt: skip
    assert main(["-q", "report", model, data, "--out", str(page), "--tuning",
                 rows_file, *LOCAL_CLUSTER]) == 0  # fmt: skip
    shown = parse(page)
    table = shown.tables["tuning-table"]
    assert column(table, "lambda") == ["0.4", "gcv (per pixel)"] * 2
    means = {r["field"]: r for r in chosen if r["expression"] == "mean"}
    assert column(table, "median lambda chosen") == [
        "", f"{means[1]['lam_median']:.3g}", "", f"{means[3]['lam_median']:.3g}",
    ]  # fmt: skip
    assert "test MSE against r and lambda" in shown.alts
    text = page.read_text(encoding="utf-8")
    assert "(r=3, lambda=gcv)</title>" in text and "nan" not in text.split("<body")[0]
    assert ["lambda", "gcv (chosen per pixel)"] in shown.tables["table 0"]


def test_folds_keep_the_median_penalty_chosen():
    fold = {"field": 3, "lam": "gcv", "expression": "mean", "n_train": 6,
            "n_test": 2, "psnr": 30.0}  # fmt: skip
    per_fold = [
        [{**fold, "mse": 0.001 * (1 + k), "lam_median": m}] for k, m in enumerate(
            (0.1, 0.4, 10.0)
        )
    ]  # fmt: skip
    (row,) = _fold_mean(per_fold, 3)
    assert row["lam_median"] == 0.4 and row["folds"] == 3
    assert math.isclose(row["mse"], 0.002)
