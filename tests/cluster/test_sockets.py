"""Every server dmask starts listens on loopback unless a host is named.

Each mode is listed socket by socket: a LocalCluster of processes, one of
threads (--in-process), start-local.sh and the SSH launcher (in test_launch.py,
beside their fixtures).
"""

from __future__ import annotations

import os

import pytest
from helpers import LOOPBACK, listening_sockets, process_tree

from dmask.cli import main
from dmask.cluster.clients import ClusterOptions, bind_address, connect


def _own_sockets() -> list[tuple[int, str, int]]:
    return listening_sockets(process_tree(os.getpid()))


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
@pytest.mark.parametrize("dashboard", [":0", "127.0.0.1:0", None])
def test_local_clusters_listen_on_loopback_only(processes, dashboard):
    before = set(_own_sockets())
    options = ClusterOptions(
        n_workers=1, processes=processes, dashboard_address=dashboard
    )
    with connect(options) as client:
        opened = [s for s in _own_sockets() if s not in before]
        assert opened or not processes  # worker processes listen at least
        outside = [s for s in opened if s[1] not in LOOPBACK]
        assert not outside, outside
        if dashboard is not None:
            assert client.dashboard_link


def test_cli_prints_the_loopback_dashboard_of_a_threaded_cluster(capsys, tmp_path):
    from dmask.datasets.synthetic import make_synthetic_dataset

    faces = tmp_path / "f.zarr"
    make_synthetic_dataset(faces, 3, (16, 16), test_fraction=0)
    argv = [
        "train", str(faces), "--out", str(tmp_path / "m.zarr"), "--targets", "happy",
        "--workers", "1", "--in-process", "--dashboard-address", ":0",
    ]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("dashboard:")]
    assert line.startswith("dashboard: http://127.0.0.1:"), line


def test_bind_address_defaults_to_loopback():
    assert bind_address(":8787") == "127.0.0.1:8787"
    assert bind_address("8787") == "127.0.0.1:8787"
    assert bind_address("0.0.0.0:8787") == "0.0.0.0:8787"
    assert bind_address(None) is None
