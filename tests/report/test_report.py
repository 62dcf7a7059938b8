"""The HTML report: self-contained, escaped, loads in a real browser; field maps."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from helpers import HALF_LEVEL, NEAR_ZERO, TIGHT
from PIL import Image

import dmask
from dmask.core import field_maps, minmax, windows
from dmask.errors import InputError, StoreError
from dmask.io import dataset_store
from dmask.report.html import MAX_SIDE
from dmask.report.page import write_report

TARGETS = ["happy", "sad"]
PNG = "data:image/png;base64,"


# ------------------------------------------------------------------- fields


@pytest.mark.parametrize("field", [1, 3, 5])
def test_field_maps_match_plain_loops(rng, field):
    height, width, channels, k = 5, 4, 2, field * field
    weights = rng.normal(size=(height, width, channels, k))
    centre = field_maps.centre_weight(weights, field)
    mass = field_maps.off_centre_mass(weights, field)
    b = field // 2
    for y in range(height):
        for x in range(width):
            for c in range(channels):
                total = 0.0
                for a in range(k):
                    dy, dx = a // field - b, a % field - b
                    if (dy, dx) == (0, 0):
                        assert centre[y, x, c] == weights[y, x, c, a]
                    else:
                        total += abs(weights[y, x, c, a])
                assert mass[y, x, c] == pytest.approx(total, rel=TIGHT, abs=NEAR_ZERO)
            window = field_maps.field_at(weights, field, y, x)
            assert window.shape == (channels, field, field)
            for c in range(channels):
                for i in range(field):
                    for j in range(field):
                        assert window[c, i, j] == weights[y, x, c, i * field + j]
    # (H, W, k) works too, and the layout matches the model store's offsets
    plain = weights[..., 0, :]
    np.testing.assert_array_equal(
        field_maps.centre_weight(plain, field), centre[..., 0]
    )
    assert field_maps.field_at(plain, field, 4, 3).shape == (field, field)
    offsets = windows.window_offsets(field)
    centre_index = int(np.flatnonzero((offsets == 0).all(axis=1))[0])
    np.testing.assert_array_equal(centre[..., 0], plain[..., centre_index])


def test_field_maps_refuse_bad_input(rng):
    weights = rng.normal(size=(4, 4, 9))
    with pytest.raises(InputError, match="field must be an odd"):
        field_maps.centre_weight(weights, 2)
    with pytest.raises(InputError, match="last axis must hold field \\* field = 25"):
        field_maps.off_centre_mass(weights, 5)
    with pytest.raises(InputError, match="x = 4 is outside the image"):
        field_maps.field_at(weights, 3, 0, 4)
    with pytest.raises(InputError, match="expected \\(H, W, k\\)"):
        field_maps.field_at(weights[0], 3, 0, 0)


# ------------------------------------------------------------------- report


class _Page(HTMLParser):
    """Images (attributes), table cells (text) and row classes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.cells: list[str] = []
        self.row_classes: list[str | None] = []
        self.items: list[str] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None
        self._item: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "tr":
            self.row_classes.append(attrs.get("class"))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "li":
            self._item = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None
        elif tag == "li" and self._item is not None:
            self.items.append("".join(self._item))
            self._item = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._item is not None:
            self._item.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _decode(src: str) -> Image.Image:
    assert src.startswith(PNG)
    raw = base64.b64decode(src[len(PNG) :], validate=True)
    Image.open(io.BytesIO(raw)).verify()
    image = Image.open(io.BytesIO(raw))
    assert image.format == "PNG"
    image.load()
    return image


COMPARISON = [
    {"method": "mr", "expression": "happy", "mse": 0.00123, "psnr": 29.1,
     "ssim": 0.91, "n_parameters": 12_345, "train_seconds": 0.5,
     "peak_memory_mib": 40.0, "status": "ok"},
    {"method": "<script>alert(1)</script>", "expression": "happy & sad",
     "mse": float("nan"), "status": "failed: <oom>"},
    {"method": "full_ridge", "expression": "happy", "mse": 0.0021, "psnr": 26.9,
     "status": "ok"},
    {"method": "identity", "expression": "happy", "mse": 0.0031, "psnr": 25.2,
     "status": "ok"},
]  # fmt: skip
TUNING = [
    {"field": f, "lam": lam, "expression": e, "mse": 0.01 / f + lam / 1000}
    for f in (1, 3, 5)
    for lam in (0.01, 0.4, 1.0)
    for e in TARGETS
]
SIZE = [
    {"method": m, "n": n, "mse": s / n**0.5}
    for m, s in (("mr", 1.0), ("pix2pix", 1.5))
    for n in (10, 40, 160)
]


@pytest.fixture(scope="module")
def report(trained, tmp_path_factory):
    ds, model = trained
    rng = np.random.default_rng(3)
    photographs = {
        "big <photo>": (
            rng.random((300, 260, 3)),
            {"happy": rng.random((24, 20, 3)), "sad": rng.random((24, 20, 1))},
        )
    }
    path = tmp_path_factory.mktemp("page") / "report.html"
    written = write_report(
        path, model, ds, comparison=COMPARISON, tuning=TUNING, size_curve=SIZE,
        photographs=photographs,
    )  # fmt: skip
    assert written == path
    return path


def test_report_is_self_contained_and_escaped(report, trained):
    _, model = trained
    text = report.read_text(encoding="utf-8")
    page = _parse(report)
    # 2 targets x (2 test subjects x 4 cells + colour bar); 2 targets x 5
    # strengths; photographs 1 + 2; marked mean face + 2 targets x (maps +
    # windows); tuning; size curve
    assert len(page.images) == 2 * (2 * 4 + 1) + 2 * 5 + 3 + 1 + 2 * 2 + 1 + 1
    for attrs in page.images:
        _decode(attrs["src"])
    assert "script" not in page.tags and "link" not in page.tags
    assert "http://" not in text and "https://" not in text
    assert list(report.parent.iterdir()) == [report]  # no temporary left

    # header: settings and dataset summary
    assert model.dataset.attrs["training_fingerprint"] in page.cells
    assert "24 x 20 x 3" in page.cells and "test: 2 subjects, train: 6 subjects" in (
        page.cells
    )
    # comparison table: escaped text, MR highlighted, numbers formatted; the
    # row that failed is said under the table, not as a row of blanks
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>alert(1)</script>" not in page.cells
    (failed,) = [item for item in page.items if item.startswith("failed")]
    assert failed.startswith("failed: <oom> (said once for 1 row: <script>")
    assert "happy &amp; sad" in text
    assert "12,345" in page.cells and "0.00123" in page.cells
    assert page.row_classes.count("mr") == 1
    assert "Lowest test MSE: r = 5, lambda = 0.01" in text
    # a large photograph is downscaled for the page
    big = _decode(
        next(a for a in page.images if a["alt"] == "big <photo> aligned crop")["src"]
    )
    assert max(big.size) == MAX_SIDE


def test_report_shows_the_models_predictions(report, trained):
    ds, model = trained
    page = _parse(report)
    sources, truths = dataset_store.select_pairs(ds, "neutral", ["sad"], "test")
    subject = str(sources["subject"].values[0])
    raw = sources.values[:1]
    expected = model.predict(raw)["sad"][0]
    truth = truths["sad"].values[:1].astype(np.float64)
    truth = minmax.normalize_block(truth, *minmax.minmax_parameters(truth))[0]
    by_alt = {a["alt"]: a for a in page.images}
    shown = np.asarray(_decode(by_alt[f"{subject} sad synthesised"]["src"]))
    assert shown.shape == expected.shape
    np.testing.assert_allclose(shown, np.clip(expected, 0, 1) * 255, atol=HALF_LEVEL)
    true = np.asarray(_decode(by_alt[f"{subject} sad true"]["src"]))
    np.testing.assert_allclose(true, truth * 255, atol=HALF_LEVEL)
    # the strength strip: 0 is the input as the model sees it, 1 the model
    by_alt = {a["alt"]: a for a in page.images}
    strip = sorted(a for a in by_alt if " sad strength " in a)
    assert [a.rsplit(" ", 1)[1] for a in strip] == ["0", "0.5", "1", "1.5", "2"]
    who = strip[0].split(" ")[0]
    index = int(
        np.flatnonzero(
            (ds["subject"].values == who) & (ds["expression"].values == "neutral")
        )[0]
    )
    face = ds["images"].values[index : index + 1].astype(np.float64)
    seen = minmax.normalize_block(face, *minmax.minmax_parameters(face))[0]
    zero = np.asarray(_decode(by_alt[f"{who} sad strength 0"]["src"]))
    np.testing.assert_allclose(zero, seen * 255, atol=HALF_LEVEL)
    one = np.asarray(_decode(by_alt[f"{who} sad strength 1"]["src"]))
    model_out = np.clip(model.predict(face)["sad"][0], 0, 1)
    np.testing.assert_allclose(one, model_out * 255, atol=HALF_LEVEL)
    # small faces are enlarged on the page, pixel for pixel
    assert by_alt[f"{subject} sad true"]["width"] == str(20 * 4)
    error = np.asarray(_decode(by_alt[f"{subject} sad absolute error"]["src"]))
    assert error.shape == (24, 20, 3) and len(np.unique(error.reshape(-1, 3), 0)) > 5


def test_report_options_and_refusals(trained, tmp_path):
    ds, _ = trained
    sources, targets = dataset_store.select_pairs(ds, "neutral", ["happy"], "train")
    model = dmask.fit(sources, targets, field=1, lam=1.0, normalize="none")
    path = tmp_path / "plain.html"
    write_report(path, model, ds, subjects=1, pixels={"nose": (12, 10)})
    text = path.read_text(encoding="utf-8")
    page = _parse(path)
    assert "id='comparison'" not in text and "id='tuning'" not in text
    assert len(page.images) == (4 + 1) + 5 + 1 + 2
    for attrs in page.images:
        _decode(attrs["src"])
    # without normalisation, faces are shown as stored values / 255
    test_sources, test_targets = dataset_store.select_pairs(
        ds, "neutral", ["happy"], "test"
    )
    subject = str(test_sources["subject"].values[0])
    by_alt = {a["alt"]: a["src"] for a in page.images}
    true = np.asarray(_decode(by_alt[f"{subject} happy true"]))
    np.testing.assert_array_equal(true, test_targets["happy"].values[0])
    expected = model.predict(test_sources.values[:1])["happy"][0]
    shown = np.asarray(_decode(by_alt[f"{subject} happy synthesised"]))
    np.testing.assert_allclose(shown, np.clip(expected, 0, 255), atol=HALF_LEVEL)

    with pytest.raises(StoreError, match="already exists"):
        write_report(path, model, ds)
    write_report(path, model, ds, overwrite=True)
    with pytest.raises(InputError, match=r"pixels\['eye'\] = \(30, 1\) is outside"):
        write_report(tmp_path / "x.html", model, ds, pixels={"eye": (30, 1)})
    with pytest.raises(InputError, match="tuning row 0 has no 'lam'"):
        write_report(tmp_path / "x.html", model, ds, tuning=[{"field": 3}])
    with pytest.raises(InputError, match="subjects must be a positive integer"):
        write_report(tmp_path / "x.html", model, ds, subjects=0)
    with pytest.raises(InputError, match=r"photographs\['a'\] input must be"):
        write_report(
            tmp_path / "x.html", model, ds, photographs={"a": (np.zeros(5), {})}
        )
    with pytest.raises(InputError, match="no folder"):
        write_report(tmp_path / "missing" / "x.html", model, ds)
    assert not (tmp_path / "x.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.html"]


# ------------------------------------------------------------------ browser


def _chromium() -> str:
    """A Chromium executable, installed from Debian when missing and allowed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("Chromium is not installed and cannot be (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    try:
        done = subprocess.run(install, capture_output=True, env=env, timeout=600)
        if done.returncode != 0:
            subprocess.run(
                ["apt-get", "update", "-q"], capture_output=True, env=env, timeout=300
            )
            done = subprocess.run(install, capture_output=True, env=env, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("installing Chromium with apt-get timed out")
    found = shutil.which("chromium")
    if done.returncode != 0 or found is None:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        pytest.skip(f"Chromium could not be installed with apt-get: {tail}")
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    return _chromium()


COUNTER = """<script>
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) loaded++;
  }
  var out = document.createElement("div");
  out.id = "probe";
  out.textContent = loaded + "/" + images.length;
  document.body.appendChild(out);
});
</script>"""


#: What the browser lays out of the headline: its place among the page's
#: sections, its size and the text as rendered (innerText: visible text only).
HEADLINE = """<script>
window.addEventListener("load", function () {
  var box = document.getElementById("headline");
  var out = document.createElement("div");
  out.id = "probe";
  if (box) {
    var rect = box.getBoundingClientRect();
    var sections = document.querySelectorAll("h2");
    var first = sections[0] === box.querySelector("h2") ? "first" : "not first";
    out.textContent = JSON.stringify({
      first: first, top: rect.top, width: rect.width, height: rect.height,
      visible: getComputedStyle(box).display !== "none", text: box.innerText,
    });
  } else {
    out.textContent = "{}";
  }
  document.body.appendChild(out);
});
</script>"""


def _in_browser(chromium: str, page: Path, tmp_path: Path, script: str) -> str:
    """Open a copy of ``page`` with ``script``; the text it puts in ``#probe``."""
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", script + "</body>"),
        encoding="utf-8",
    )
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-dev-shm-usage", "--no-first-run", "--virtual-time-budget=10000",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri(),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("Chromium did not finish rendering the report in 120 s")
    if done.returncode != 0 or "<html" not in done.stdout:
        tail = done.stderr.strip().splitlines()[-3:]
        pytest.skip(f"Chromium could not start here (exit {done.returncode}): {tail}")
    start = done.stdout.find('<div id="probe">')
    assert start >= 0, "the page's load event never ran"
    return html.unescape(
        done.stdout[start + len('<div id="probe">') :].split("</div>", 1)[0]
    )


def _loaded_in_browser(chromium: str, page: Path, tmp_path: Path) -> str:
    """``loaded/total`` images of ``page`` in Chromium."""
    return _in_browser(chromium, page, tmp_path, COUNTER)


def test_every_image_loads_in_chromium(report, chromium, tmp_path):
    total = len(_parse(report).images)
    assert _loaded_in_browser(chromium, report, tmp_path) == f"{total}/{total}"
    # the probe does notice a broken picture
    broken = tmp_path / "broken.html"
    broken.write_text(
        report.read_text(encoding="utf-8").replace(PNG, PNG + "AAAA", 1),
        encoding="utf-8",
    )
    assert _loaded_in_browser(chromium, broken, tmp_path) == f"{total - 1}/{total}"


def test_the_headline_is_rendered_first_in_chromium(report, chromium, tmp_path):
    """The headline as Chromium lays it out: the first section, on screen at the
    top, saying MR's figures and its gain over the best baseline and the identity
    (COMPARISON: mr 0.00123 / 29.1 dB, full_ridge 0.0021 / 26.9, identity 0.0031
    / 25.2)."""
    shown = json.loads(_in_browser(chromium, report, tmp_path, HEADLINE))
    assert shown, "no #headline element in the page as rendered"
    assert shown["first"] == "first" and shown["visible"]
    assert 0 < shown["top"] < 200 and shown["height"] > 40 and shown["width"] > 300
    text = " ".join(shown["text"].split())
    assert "test MSE 0.00123, PSNR 29.10 dB" in text
    assert "the best baseline, full_ridge (MSE 0.00210, PSNR 26.90 dB): +2.20 dB" in (
        text
    )
    assert "MR's MSE is 41% lower" in text
    assert "identity (input as is) (MSE 0.00310, PSNR 25.20 dB): +3.90 dB" in text
    # a page without the headline is noticed
    bare = tmp_path / "bare.html"
    bare.write_text(
        report.read_text(encoding="utf-8").replace("id='headline'", "id='x'"),
        encoding="utf-8",
    )
    assert json.loads(_in_browser(chromium, bare, tmp_path, HEADLINE)) == {}


def test_report_reads_the_size_curve_dmask_tune_writes(trained, tmp_path):
    """Rows of training_size_curve (``n_train``) plot as they are."""
    from dmask.evaluation.tune import training_size_curve

    ds, model = trained
    curve = training_size_curve(
        ds, targets=["happy"], sizes=[1, 2], include_full_ridge=False
    )
    assert curve and all("n_train" in row for row in curve)
    path = tmp_path / "curve.html"
    write_report(path, model, ds, size_curve=curve)
    assert "id='size'" in path.read_text(encoding="utf-8")


def test_report_reads_tuning_rows_with_penalties_chosen_per_pixel(trained, tmp_path):
    """``dmask tune --lams 0.4 gcv`` rows: the per-pixel ones are left off the plot."""
    ds, model = trained
    rows = [*TUNING, {"field": 3, "lam": "gcv", "expression": "mean", "mse": 0.01}]
    path = tmp_path / "gcv.html"
    write_report(path, model, ds, tuning=rows)
    assert "id='tuning'" in path.read_text(encoding="utf-8")


def test_report_of_a_sparse_model(trained, tmp_path):
    from dmask.evaluation.saved_models import sparse_from_rows

    ds, _ = trained
    d = 24 * 20 * 3
    rng = np.random.default_rng(5)
    rows = rng.integers(0, d, size=(d, 2))
    coef = scipy.sparse.csr_matrix(
        (rng.normal(size=2 * d), (np.repeat(np.arange(d), 2), rows.ravel())),
        shape=(d, d),
    )
    model = sparse_from_rows(
        {t: (coef, rng.normal(size=d)) for t in TARGETS}, (24, 20, 3), "test"
    )
    path = write_report(tmp_path / "sparse.html", model, ds)
    page = _parse(path)
    text = path.read_text(encoding="utf-8")
    assert "What the sparse model learned" in text and "Median distance read" in text
    alts = [image.get("alt", "") for image in page.images]
    assert [a for a in alts if a.endswith("slot maps")] == [
        f"{t} slot maps" for t in TARGETS
    ]
    assert not [a for a in alts if "fields at chosen pixels" in a]
    for image in page.images:
        _decode(image["src"])


def test_photographs_of_a_folder_run(trained, tmp_path):
    """Synthesised records: photograph | aligned crop | per target, synthesised and
    pasted back; photographs as JPEG, faces as PNG, pixel for pixel."""
    from dmask.apply.folder import Synthesised

    ds, model = trained
    rng = np.random.default_rng(4)
    crop = rng.random((24, 20, 3))
    entry = Synthesised(
        photo=rng.random((90, 70, 3)),
        crop=crop,
        crops={"happy": crop, "sad": crop},
        photos={"happy": rng.random((90, 70, 3))},
    )
    path = tmp_path / "r.html"
    write_report(path, model, ds, photographs={"p": entry})
    page = _parse(path)
    by_alt = {a["alt"]: a for a in page.images}
    for alt in ("p photo", "p happy pasted back"):
        src = by_alt[alt]["src"]
        assert src.startswith("data:image/jpeg;base64,")
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert Image.open(io.BytesIO(raw)).size == (70, 90)
    shown = np.asarray(_decode(by_alt["p happy synthesised"]["src"]))
    np.testing.assert_allclose(shown, crop * 255, atol=HALF_LEVEL)
    assert "p sad pasted back" not in by_alt and "p sad synthesised" in by_alt
    text = path.read_text(encoding="utf-8")
    assert "rowspan='2'" in text  # the photograph spans its two targets' rows
