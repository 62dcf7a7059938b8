"""The reference's whole pipeline against dmask's, end to end, with OpenCV.

The reference side is written here as the reference code runs: ``cv2.imread``
(BGR), ``cv2.resize`` with its default ``INTER_LINEAR``, min-max scaling over
all channels, ``W_c @ [x_c; 1]`` per channel with its weight files
``mr_weights_<date>_<c>.npz`` (c = 1 blue, 2 green, 3 red), then
``cv2.normalize(..., NORM_MINMAX)`` to 8 bits and ``cv2.imwrite``. dmask's side is
``dmask import`` of those files and ``dmask apply --resize bilinear --display
stretch`` on the photographs.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import LOCAL_CLUSTER, random_pairs
from PIL import Image

import dmask
from dmask.cli import main
from dmask.interop import export_reference


def reference_pipeline(cv2, path, matrices, size):
    bgr = cv2.imread(str(path))
    x = cv2.resize(bgr, (size[1], size[0])).astype(np.float64)  # INTER_LINEAR
    x = (x - x.min()) / (x.max() - x.min())
    y = np.empty_like(x)
    for c, matrix in enumerate(matrices):
        y[..., c] = (matrix @ np.append(x[..., c].ravel(), 1.0)).reshape(size)
    return cv2.normalize(y, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)


def test_reference_pipeline_end_to_end(rng, tmp_path):
    cv2 = pytest.importorskip("cv2")
    size = (20, 16)
    sources, targets = random_pairs(rng, 12, *size, 3)
    trained = dmask.fit(sources, targets, field=3, lam=0.4)
    files = export_reference(trained, tmp_path / "ref", naming="reference")
    bare = tmp_path / "bare"  # as the reference leaves them: no manifest
    bare.mkdir()
    weight_files = []
    for path in sorted(files[:-1]):  # _1 (blue), _2, _3
        weight_files.append(str(bare / path.name))
        shutil.copy(path, weight_files[-1])
    matrices = [sp.load_npz(p) for p in weight_files]

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):  # larger than the model, not square: resized, not cropped
        pixels = rng.integers(0, 256, size=(47, 41, 3), dtype=np.uint8)
        pixels[..., 0] //= 2  # the channels differ, so their order matters
        Image.fromarray(pixels).save(photos / f"p_{i}.png")

    model = tmp_path / "m.zarr"
    size_args = ["--size", str(size[0]), str(size[1])]
    assert main(["import", *weight_files, *size_args, "--out", str(model)]) == 0
    out = tmp_path / "out"
    argv = ["apply", str(model), str(photos), "--out", str(out), "--crop", "none",
            "--resize", "bilinear", "--display", "stretch", *LOCAL_CLUSTER]  # fmt: skip
    assert main(argv) == 0
    apply_argv = list(argv)
    for i in range(3):
        theirs = reference_pipeline(cv2, photos / f"p_{i}.png", matrices, size)
        ours = cv2.imread(str(out / "crops" / "target" / f"p_{i}.png"))
        assert ours.shape == theirs.shape
        difference = np.abs(ours.astype(int) - theirs.astype(int))
        # OpenCV resizes 8-bit images in fixed point: a level here and there
        assert difference.max() <= 3 and difference.mean() < 0.5, difference.max()
    # read as R, G, B instead, the same files predict something else
    wrong = tmp_path / "wrong.zarr"
    argv = ["import", *weight_files, *size_args, "--channel-order", "rgb", "--out",
            str(wrong)]  # fmt: skip
    assert main(argv) == 0
    out_wrong = tmp_path / "out_wrong"
    argv = apply_argv
    argv[1] = str(wrong)
    argv[4] = str(out_wrong)
    assert main(argv) == 0
    theirs = reference_pipeline(cv2, photos / "p_0.png", matrices, size)
    ours = cv2.imread(str(out_wrong / "crops" / "target" / "p_0.png"))
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() > 10
