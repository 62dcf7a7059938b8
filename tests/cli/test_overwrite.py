"""--overwrite replaces an output only when the new one is complete.

Every failure before that (bad settings found late, a missing input, an
unreachable scheduler, a crash while writing) leaves the old output whole.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import LOCAL_CLUSTER, assert_model_close, cli_error, usage_error

import dmask
from dmask.cli import main
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.graph import fit_tasks
from dmask.io import dataset_store, stores


@pytest.fixture
def kept(faces, tmp_path):
    """A finished model at ``keep.zarr`` and a copy of its numbers."""
    path = tmp_path / "keep.zarr"
    assert (
        main(
            [
                "train",
                str(faces),
                "--out",
                str(path),
                "--targets",
                "happy",
                *LOCAL_CLUSTER,
            ]
        )
        == 0
    )
    model = dmask.open_model(path)
    return path, (model.weights().values.copy(), model.bias().values.copy())


def _unchanged(path, numbers):
    model = dmask.open_model(path)
    assert_model_close(model, numbers, atol=0)
    assert not (path.parent / f".{path.name}{stores.STAGING_SUFFIX}").exists()


def test_bad_settings_keep_the_old_model(capsys, faces, kept, tmp_path):
    path, numbers = kept
    train = ["train", faces, "--out", path, "--overwrite", *LOCAL_CLUSTER]
    assert "nonsense" in cli_error(capsys, *train, "--targets", "nonsense")
    _unchanged(path, numbers)
    assert "--field" in usage_error(capsys, *train, "--field", "4")
    _unchanged(path, numbers)
    missing = tmp_path / "missing.zarr"
    message = cli_error(
        capsys, "train", missing, "--out", path, "--overwrite", *LOCAL_CLUSTER
    )
    assert str(missing) in message
    _unchanged(path, numbers)


def test_unreachable_scheduler_keeps_the_old_model(capsys, faces, kept):
    path, numbers = kept
    message = cli_error(
        capsys, "train", faces, "--out", path, "--overwrite",
        "--scheduler", "tcp://127.0.0.1:1",
    )  # fmt: skip
    assert "127.0.0.1:1" in message
    _unchanged(path, numbers)


def test_failed_apply_and_import_keep_the_old_output(capsys, faces, kept, tmp_path):
    path, numbers = kept
    out = tmp_path / "out.zarr"
    assert (
        main(["apply", str(path), str(faces), "--out", str(out), *LOCAL_CLUSTER]) == 0
    )
    before = dataset_store.open_dataset(out)["images"].values.copy()
    other = tmp_path / "other.zarr"
    make_synthetic_dataset(other, 2, (32, 20), test_fraction=0)
    message = cli_error(
        capsys, "apply", path, other, "--out", out, "--overwrite", *LOCAL_CLUSTER
    )
    assert "32x20x3" in message
    np.testing.assert_array_equal(
        dataset_store.open_dataset(out)["images"].values, before
    )
    text = tmp_path / "weights.npz"
    text.write_text("not a weight file")
    cli_error(
        capsys, "import", text, "--out", path, "--overwrite", "--size", "24", "20"
    )
    _unchanged(path, numbers)


def test_a_crash_while_writing_keeps_the_old_model(faces, kept, monkeypatch):
    path, numbers = kept
    ds = dataset_store.open_dataset(faces)
    src, tgt = dataset_store.select_pairs(ds, "neutral", ["happy"], "train")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fit_tasks, "write_model_tile", full_disk)
    with pytest.raises(OSError, match="No space"):
        dmask.fit(src, tgt, field=5, store=path, overwrite=True)
    model = dmask.open_model(path)
    assert_model_close(model, numbers, atol=0)
    monkeypatch.undo()
    # The next run clears what the failed one left, and replaces the model.
    replaced = dmask.fit(src, tgt, field=5, store=path, overwrite=True)
    assert replaced.field == 5 and dmask.open_model(path).field == 5
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_resume_finishes_a_crashed_overwrite(faces, kept, monkeypatch):
    path, numbers = kept
    ds = dataset_store.open_dataset(faces)
    src, tgt = dataset_store.select_pairs(ds, "neutral", ["happy"], "train")
    real = fit_tasks.write_model_tile
    calls = []

    def crash_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_tasks, "write_model_tile", crash_after_one)
    with pytest.raises(RuntimeError, match="killed"):
        dmask.fit(src, tgt, lam=1.0, store=path, overwrite=True, tile_shape=(12, 10))
    monkeypatch.undo()
    assert_model_close(dmask.open_model(path), numbers, atol=0)  # still the old one
    resumed = dmask.fit(src, tgt, lam=1.0, store=path, resume=True)
    fresh = dmask.fit(src, tgt, lam=1.0, tile_shape=(12, 10))
    assert resumed.lam == 1.0
    assert_model_close(dmask.open_model(path), fresh, atol=0)
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
