"""Small jobs do not pay for a process cluster: threads in this process."""

from __future__ import annotations

import psutil
import pytest

from dmask.cli import main
from dmask.cluster.clients import ClusterOptions


@pytest.mark.parametrize(
    ("processes", "size", "remote", "expected"),
    [
        ("auto", 10 * 2**20, False, False),  # small: threads here
        ("auto", 2**30, False, True),  # large: processes
        ("auto", None, False, True),  # size unknown: processes
        ("auto", 10, True, True),  # an existing scheduler: not ours to choose
        (True, 10, False, True),  # asked for
        (False, 2**30, False, False),
    ],
)
def test_auto_decides_by_the_size_of_the_job(processes, size, remote, expected):
    options = ClusterOptions(
        processes=processes, scheduler="tcp://127.0.0.1:1" if remote else None
    )
    assert options.for_job(size).processes is expected


def test_the_threshold_is_a_setting():
    from dmask.options import set_options

    with set_options(**{"cluster.small-job": 100}):
        assert ClusterOptions(processes="auto").for_job(99).processes is False
        assert ClusterOptions(processes="auto").for_job(100).processes is True


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def started(monkeypatch) -> set[int]:
    """The processes this one has started by the time synth draws its faces."""
    from dmask.datasets import synthetic

    before, seen = _children(), set()
    original = synthetic.make_synthetic_dataset

    def watched(*args, **kwargs):
        seen.update(_children() - before)
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic, "make_synthetic_dataset", watched)
    return seen


def test_a_small_synth_starts_no_worker_process(tmp_path, caplog, started):
    argv = ["synth", "--out", str(tmp_path / "f.zarr"), "--subjects", "3",
            "--size", "16", "--dashboard-address", ":0", "-v"]  # fmt: skip
    assert main(argv) == 0
    assert not started, "worker processes started for a small job"
    assert "a small job" in caplog.text


def test_processes_asked_for_start_worker_processes(tmp_path, started):
    argv = ["synth", "--out", str(tmp_path / "f.zarr"), "--subjects", "3",
            "--size", "16", "--dashboard-address", ":0", "--processes",
            "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    assert started


def test_in_process_and_processes_together_are_a_usage_error(tmp_path, capsys):
    argv = ["synth", "--out", str(tmp_path / "f.zarr"), "--subjects", "3",
            "--in-process", "--processes"]  # fmt: skip
    assert main(argv) == 2
    assert "not allowed with argument --in-process" in capsys.readouterr().err
