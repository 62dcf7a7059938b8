"""-v and -q anywhere on the command line, and one log format for every line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import LOCAL_CLUSTER, ROOT

from dmask.cli import verbosity
from dmask.cli.app import _build_parser

LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def _synth(tmp_path, *flags: str, threads: bool = True) -> subprocess.CompletedProcess:
    cluster = LOCAL_CLUSTER if threads else [
        "--workers", "1", "--dashboard-address", "127.0.0.1:0", "--no-progress"
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    return subprocess.run(
        [sys.executable, "-m", "dmask", "synth", "--out", str(tmp_path / "f.zarr"),
         "--subjects", "3", "--size", "24", "--overwrite", *cluster, *flags],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip


def test_counts_before_and_after_the_subcommand():
    parser = _build_parser()
    for argv, verbose, quiet in (
        (["synth", "--out", "x"], 0, False),
        (["-v", "synth", "--out", "x"], 1, False),
        (["synth", "--out", "x", "-v"], 1, False),
        (["-v", "synth", "--out", "x", "-vv"], 3, False),
        (["synth", "-q", "--out", "x"], 0, True),
    ):
        args = parser.parse_args(argv)
        assert verbosity.resolve(args) is None
        assert (args.verbose, args.quiet) == (verbose, quiet), argv
    args = parser.parse_args(["-q", "train", "d", "--out", "m", "-v"])
    assert verbosity.resolve(args) == "give -v or -q, not both"


def test_levels(tmp_path):
    quiet = _synth(tmp_path, "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
    plain = _synth(tmp_path)  # the dashboard's link, a message: on stderr
    assert plain.returncode == 0
    assert re.fullmatch(r"dashboard: http://127\.0\.0\.1:\d+/status\n", plain.stderr)
    one = _synth(tmp_path, "-v")
    lines = [x for x in one.stderr.splitlines() if not x.startswith("dashboard: ")]
    assert one.returncode == 0 and lines
    assert all(LINE.match(line) for line in lines), lines
    assert all(" dmask." in line for line in lines)  # dmask's own only
    assert "summary:" in one.stdout and "summary:" not in one.stderr


@pytest.mark.parametrize("threads", [True, False])
def test_distributed_logs_in_the_same_format_with_vv(tmp_path, threads):
    run = _synth(tmp_path, "-vv", threads=threads)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [x for x in run.stderr.splitlines() if not x.startswith("dashboard: ")]
    assert any(" distributed." in line for line in lines)
    assert any(" dmask." in line for line in lines)
    assert [line for line in lines if not LINE.match(line)] == []
    if not threads:  # a worker process's own lines too
        assert any(" distributed.worker" in line for line in lines)
    both = _synth(tmp_path, "-v", "-q")
    assert both.returncode == 2 and "give -v or -q, not both" in both.stderr
