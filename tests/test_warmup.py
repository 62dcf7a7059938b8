"""The kernels' warm-up (``python -m dmask.cli.warmup``): it compiles every
kernel into numba's on-disk cache, and a second process loads them from there;
and where that cache can be written at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT

pytest.importorskip("numba")

WARM_UP = (
    "import json; from dmask.cli.warmup import warm_up; print(json.dumps(warm_up()))"
)


def run_python(code: str, env: dict[str, str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_warm_up_compiles_then_loads_from_the_cache(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = run_python(WARM_UP, env, str(tmp_path))
    assert first.returncode == 0, first.stderr
    cold = json.loads(first.stdout.splitlines()[-1])
    assert cold["available"] and not cold["failures"], cold
    assert cold["misses"] >= 8 and cold["hits"] == 0, cold
    assert any((tmp_path / "cache").rglob("*.nbi"))

    second = run_python(WARM_UP, env, str(tmp_path))
    assert second.returncode == 0, second.stderr
    warm = json.loads(second.stdout.splitlines()[-1])
    assert not warm["failures"], warm
    assert warm["misses"] == 0 and warm["hits"] >= 8, warm


def test_main_prints_one_line(tmp_path, capsys, monkeypatch):
    from dmask.cli import warmup

    monkeypatch.setattr(
        warmup,
        "warm_up",
        lambda verbose=False: {
            "available": True, "seconds": 1.0, "hits": 8, "misses": 0,
            "failures": {"x": "boom"}, "cache_warnings": [],
        },
    )  # fmt: skip
    assert warmup.main([]) == 0
    assert warmup.main(["--strict"]) == 1
    out, err = capsys.readouterr()
    assert "0 signatures compiled, 8 loaded from the cache" in out
    assert "warm-up run x failed: boom" in err


IMPORT_AND_SOLVE = """
import numpy as np
import dmask, dmask.core._engine as engine, dmask.core._engine_sums
assert dmask.__file__.startswith({root!r}), dmask.__file__
gram = np.eye(3)[None].copy(); rhs = np.ones((1, 3, 1))
print(bool(engine.cholesky_solve(gram, rhs)[0]))
"""


def read_only_copy(tmp_path) -> str:
    """A copy of the package whose ``__pycache__`` folders cannot be made (a
    file stands in their place: unwritable even for root)."""
    root = tmp_path / "install"
    shutil.copytree(
        ROOT / "dmask", root / "dmask", ignore=shutil.ignore_patterns("__pycache__")
    )
    (root / "dmask" / "core" / "__pycache__").write_text("")
    return str(root)


def test_a_read_only_install_caches_in_the_user_cache(tmp_path):
    root = read_only_copy(tmp_path)
    env = {"PYTHONPATH": root, "XDG_CACHE_HOME": str(tmp_path / "user")}
    done = run_python(
        IMPORT_AND_SOLVE.format(root=root),
        {**env, "NUMBA_CACHE_DIR": ""},
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert any((tmp_path / "user" / "numba").rglob("*.nbi"))


def test_an_unwritable_numba_cache_dir_falls_back(tmp_path):
    (tmp_path / "a-file").write_text("")
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "a-file" / "cache")}
    done = run_python(IMPORT_AND_SOLVE.format(root=str(ROOT)), env, str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_no_writable_cache_location_at_all(tmp_path):
    root = read_only_copy(tmp_path)
    (tmp_path / "a-file").write_text("")
    env = {
        "PYTHONPATH": root,
        "XDG_CACHE_HOME": str(tmp_path / "a-file"),
        "NUMBA_CACHE_DIR": "",
    }
    done = run_python(IMPORT_AND_SOLVE.format(root=root), env, str(tmp_path))
    assert done.returncode == 0, done.stderr
