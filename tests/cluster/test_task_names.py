"""Every task of dmask has a name that explains itself, listed in cluster/README."""

from __future__ import annotations

import collections
import re

import pytest
from dask.utils import key_split
from helpers import ROOT

from dmask.cli import main

#: Names that say nothing of what a task does.
BARE = {"tuple", "list", "dict", "value", "apply", "lambda", "identity", "prepare"}

#: dask's own names (xarray and dask.array operations), as cluster/README lists them.
DASK_OWN = re.compile(
    r"^(open_dataset-.*|getitem|astype|.*-aggregate|.*store-map|finalize-.*|"
    r"array|array-finalize-.*|from-value.*|original|shuffle-.*|concatenate.*|"
    r".*_chunk|rechunk-.*)$"
)


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    from distributed import LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    seen: collections.Counter[str] = collections.Counter()

    class Names(SchedulerPlugin):
        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "processing":
                seen[key_split(key)] += 1

    where = tmp_path_factory.mktemp("names")
    faces, model = where / "f.zarr", where / "m.zarr"
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        cluster.scheduler.add_plugin(Names())
        at = ["--scheduler", cluster.scheduler_address, "--no-progress"]
        runs = [
            ["synth", "--out", str(faces), "--subjects", "8", "--size", "24"],
            ["train", str(faces), "--out", str(model), "--targets", "happy"],
            ["train", str(faces), "--out", str(where / "loo.zarr"), "--lam", "loo",
             "--targets", "happy", "--keep-statistics", str(where / "s.zarr"),
             "--statistics-field", "5"],
            ["solve", str(where / "s.zarr"), "--out", str(where / "solved.zarr"),
             "--field", "3", "--lam", "1"],
            ["apply", str(model), str(faces), "--out", str(where / "p.zarr"),
             "--png", str(where / "png")],
            ["evaluate", str(model), str(faces)],
            ["tune", str(faces), "--fields", "1", "--lams", "0.4", "--targets",
             "happy"],
            ["apply", str(model), str(where / "png"), "--out",
             str(where / "synthesised"), "--crop", "none"],
        ]  # fmt: skip
        for argv in runs:
            assert main(argv + at) == 0, argv
    return seen


def test_no_task_has_a_bare_name(names):
    assert names, "no task seen"
    assert not BARE & set(names), sorted(BARE & set(names))


def test_every_task_name_of_dmask_is_listed_in_the_cluster_readme(names):
    text = (ROOT / "cluster" / "README.md").read_text()
    listed = set(re.findall(r"`([a-z_]+)`", text))
    ours = {name for name in names if not DASK_OWN.match(name)}
    assert {"read_images", "statistics_and_solve", "write_tile"} <= ours
    assert ours <= listed, sorted(ours - listed)
