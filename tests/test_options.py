"""Every setting is one dask.config key under ``dmask.``, checked in one place."""

from __future__ import annotations

import dask.config
import pytest

import dmask
from dmask import options


@pytest.fixture
def fresh_config(monkeypatch):
    """Environment variables read anew, and the process's configuration restored."""
    yield monkeypatch
    monkeypatch.undo()
    dask.config.refresh()


def test_defaults_and_set_options():
    assert options.get("kernels") in ("numba", "numpy")
    assert options.get("max-tasks") == 100_000
    with dmask.set_options(max_tasks=7, kernels="numpy"):
        assert options.get("max-tasks") == 7 and options.get("kernels") == "numpy"
    assert options.get("max-tasks") == 100_000


def test_environment_variables_win_over_the_defaults(fresh_config):
    fresh_config.setenv("DASK_DMASK__MAX_TASKS", "1000")
    fresh_config.setenv("DASK_DMASK__KERNELS", "numpy")
    dask.config.refresh()
    assert options.get("max-tasks") == 1000
    assert options.get("max_tasks") == 1000
    assert options.get("kernels") == "numpy"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kernels": "cuda"}, "dmask.kernels must be one of"),
        ({"max_tasks": 0}, "dmask.max-tasks must be a positive integer"),
        ({"stall_timeout": -1}, "dmask.stall-timeout must be >= 0"),
        ({"no_such_thing": 1}, "unknown dmask option 'no-such-thing'"),
    ],
)
def test_bad_values_are_refused_where_they_are_set(settings, message):
    with pytest.raises(dmask.DmaskError, match=message):
        dmask.set_options(**settings)


def test_a_file_that_sets_a_section_to_a_number(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dmask:\n  cluster: 5\n")
    try:
        options.load_file(bad)
        with pytest.raises(dmask.DmaskError, match=r"dmask\.cluster must be a mapping"):
            options.get("cluster.workers")
    finally:
        dask.config.refresh()
    assert options.get("cluster.workers") is None
