"""dmask train --plan: the dry run's plan is the run's, and it touches nothing."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from dask.utils import key_split
from distributed.diagnostics.plugin import SchedulerPlugin

import dmask
from dmask.cli import main
from dmask.core import planning

#: The workers of the session's cluster (tests/conftest.py), told to the plan.
WORKERS = ["--workers", "2", "--threads-per-worker", "1", "--memory-limit", "2GB"]


class GraphRecorder(SchedulerPlugin):
    """On the scheduler: the keys of every graph submitted while registered."""

    name = "dmask-test-graphs"

    def __init__(self) -> None:
        self.graphs: list[list] = []

    def update_graph(self, scheduler, *, tasks, **kwargs) -> None:
        self.graphs.append([key_split(key) for key in tasks])


def _recorded_graphs(client) -> list[Counter]:
    graphs = client.run_on_scheduler(
        lambda dask_scheduler: dask_scheduler.plugins[GraphRecorder.name].graphs
    )
    return [Counter(graph) for graph in graphs]


def _plan(faces, out, tmp_path, capsys, *options) -> dict:
    path = tmp_path / "plan.json"
    code = main(["train", str(faces), "--out", str(out), "--plan", "--json",
                 str(path), *WORKERS, *options])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "tasks" in printed.out and f"written: {path}" in printed.out
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "options",
    [
        ["--tile", "8", "8", "--sample-block", "2"],
        [],  # tiles and sample blocks from the workers' memory
        ["--lam", "loo", "--tile", "12", "10", "--sample-block", "3"],
        ["--lam", "gcv", "--channels", "joint", "--sample-block", "1"],
    ],
    ids=["fixed", "defaults", "loo", "gcv-joint"],
)
def test_the_plan_is_the_graph_of_the_run(
    options, faces, tmp_path, capsys, cluster_client
):
    out = tmp_path / "model.zarr"
    common = ["--field", "3", "--targets", "happy", "sad", *options]
    plan = _plan(faces, out, tmp_path, capsys, *common)
    assert not out.exists()

    cluster_client.register_plugin(GraphRecorder())
    try:
        address = cluster_client.scheduler.address
        code = main(["train", str(faces), "--out", str(out), "--no-progress",
                     "--scheduler", address, *common])  # fmt: skip
        graphs = _recorded_graphs(cluster_client)
    finally:
        cluster_client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.remove_plugin(GraphRecorder.name)
        )
    assert code == 0, capsys.readouterr().err
    model = dmask.open_model(out)
    attrs = model.dataset.attrs
    assert list(model.tile_shape) == plan["tile"]["shape"]
    assert attrs["sample_block"] == plan["sample_block"]["size"]
    assert attrs["statistics_method"] == plan["method"]
    assert f"tiles {plan['tile']['count']}" in capsys.readouterr().out

    fit = [g for g in graphs if "write_tile" in g]
    bounds = [g for g in graphs if "read_bounds" in g]
    assert len(fit) == 1 and len(bounds) == 1
    assert dict(fit[0]) == plan["tasks"]["fit"]
    assert dict(bounds[0]) == plan["tasks"]["bounds"]
    assert plan["tasks"]["total"] == sum(fit[0].values()) + sum(bounds[0].values())


def test_the_plan_writes_nothing_and_starts_no_cluster(faces, tmp_path, capsys):
    from distributed.client import _global_clients
    from distributed.deploy.spec import SpecCluster

    out = tmp_path / "model.zarr"
    out.mkdir()
    (out / "kept.txt").write_text("an earlier run's")
    before = sorted(p.name for p in tmp_path.iterdir())
    clients, clusters = len(_global_clients), len(SpecCluster._instances)
    assert main(["train", str(faces), "--out", str(out), "--plan"]) == 0
    printed = capsys.readouterr()
    assert "estimated time" in printed.out and "dashboard" not in printed.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no lock either
    assert [p.name for p in out.iterdir()] == ["kept.txt"]
    assert len(_global_clients) == clients
    assert len(SpecCluster._instances) == clusters


def test_the_json_holds_what_the_table_shows(faces, tmp_path, capsys):
    rates = {
        "statistics_flops": 2e9, "combine_flops": 1e9, "solve_flops": 3e9,
        "read_bytes": 2e8, "write_bytes": 4e8, "task_overhead": 0.002,
    }  # fmt: skip
    rates_file = tmp_path / "rates.json"
    rates_file.write_text(json.dumps(rates))
    plan = _plan(faces, tmp_path / "m.zarr", tmp_path, capsys, "--field", "5",
                 "--plan-rates", str(rates_file), "--tile", "8", "10")  # fmt: skip
    assert plan["rates"] == {**rates, "from": str(rates_file)}
    assert plan["tile"] == {"shape": [8, 10], "grid": [3, 2], "count": 6}
    assert plan["training_pairs"] == 4 and plan["field"] == 5
    assert plan["targets"] == ["happy", "sad", "surprised", "angry", "afraid",
                               "disgusted"]  # fmt: skip
    # the weights (k = 25) and bias of 6 targets, float64
    assert plan["model_store_bytes"] == 6 * 24 * 20 * 3 * 26 * 8
    seconds = plan["estimate_seconds"]
    assert seconds["total"] == pytest.approx(
        seconds["bounds_wall"] + seconds["fit_wall"]
    )
    assert seconds["scheduler"] == pytest.approx(0.002 * plan["tasks"]["total"])
    # a plan's own JSON gives its rates back
    own = str(tmp_path / "plan.json")
    again = _plan(faces, tmp_path / "m.zarr", tmp_path, capsys, "--field", "5",
                  "--plan-rates", own, "--tile", "8", "10")  # fmt: skip
    assert again["estimate_seconds"] == seconds
    # and so does pipelines/bench_large.py's JSON (its measured_rates)
    bench = tmp_path / "bench-large.json"
    bench.write_text(json.dumps({"train_s": 373.1, "measured_rates": rates}))
    third = _plan(faces, tmp_path / "m.zarr", tmp_path, capsys, "--field", "5",
                  "--plan-rates", str(bench), "--tile", "8", "10")  # fmt: skip
    assert third["estimate_seconds"] == seconds


def test_rates_not_given_are_measured(faces, tmp_path, capsys):
    rates = tmp_path / "rates.json"
    rates.write_text('{"statistics_flops": 1e9}')
    plan = _plan(faces, tmp_path / "m", tmp_path, capsys, "--plan-rates", str(rates))
    assert plan["rates"]["statistics_flops"] == 1e9
    assert plan["rates"]["from"] == f"{rates}, the rest measured on this machine"
    assert all(value > 0 for key, value in plan["rates"].items() if key != "from")


def test_more_workers_take_less_time(faces, tmp_path, capsys):
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({
        "statistics_flops": 1e6, "combine_flops": 1e6, "solve_flops": 1e6,
        "read_bytes": 1e6, "write_bytes": 1e6, "task_overhead": 1e-6,
    }))  # fmt: skip
    common = ["--plan-rates", str(rates), "--tile", "4", "4", "--memory-limit", "1GB"]
    one = _plan(faces, tmp_path / "m", tmp_path, capsys, *common, "--workers", "1",
                "--threads-per-worker", "1")  # fmt: skip
    many = _plan(faces, tmp_path / "m", tmp_path, capsys, *common, "--workers", "4",
                 "--threads-per-worker", "1")  # fmt: skip
    assert many["workers"]["workers"] == 4
    assert many["estimate_seconds"]["fit_wall"] == pytest.approx(
        one["estimate_seconds"]["fit_wall"] / 4
    )


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["nowhere.zarr"], 1, "nowhere.zarr"),
        (["{faces}", "--field", "31"], 1, "field 31 is larger"),
        (["{faces}", "--tile", "1", "1", "--sample-block", "1"], 1, None),
        (["{faces}", "--plan-rates", "{tmp}/missing.json"], 1, "cannot read rates"),
        (["{faces}", "--plan-rates", "{tmp}/bad.json"], 1, "not valid JSON"),
        (["{faces}", "--plan-rates", "{tmp}/odd.json"], 1, "unknown rate(s) ['flops']"),
        (["{faces}", "--plan-rates", "{tmp}/negative.json"], 1, "must be positive"),
        (["{faces}", "--resume"], 2, "--plan shows a fresh run"),
        (["{faces}", "--scheduler", "tcp://127.0.0.1:1"], 2, "--workers"),
        (["{faces}", "--lam-grid", "1", "2"], 2, "--lam-grid"),
    ],
    ids=[
        "missing-dataset",
        "field",
        "too-many-tasks",
        "no-rates",
        "bad-rates",
        "unknown-rate",
        "negative-rate",
        "resume",
        "scheduler",
        "lam-grid",
    ],
)
def test_bad_input_is_refused_in_one_line(
    arguments, code, message, faces, tmp_path, capsys
):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "odd.json").write_text('{"flops": 1e9}')
    (tmp_path / "negative.json").write_text('{"solve_flops": -1}')
    given = [a.format(faces=faces, tmp=tmp_path) for a in arguments]
    with dmask.set_options(**{"max-tasks": 100}):
        result = main(["train", *given, "--out", str(tmp_path / "m.zarr"), "--plan"])
    err = capsys.readouterr().err.strip().splitlines()
    assert result == code
    assert len(err) == 1 and err[0].startswith("dmask train: error: ")
    if message:
        assert message in err[0]
    assert not (tmp_path / "m.zarr").exists()


def test_plan_options_need_plan(faces, tmp_path, capsys):
    result = main(["train", str(faces), "--out", str(tmp_path / "m.zarr"),
                   "--json", str(tmp_path / "p.json")])  # fmt: skip
    assert result == 2
    assert "--json go with --plan" in capsys.readouterr().err
    assert not (tmp_path / "m.zarr").exists()


def test_the_plan_of_a_large_model_is_instant():
    """4096 x 4096 RGB on 100 workers: the plan's arithmetic alone, no data."""
    plan = planning.plan_for_workers(
        200, (4096, 4096), 3, 5, 1, 8 * 2**30, sample_block=25, max_tasks=10**7
    )
    work = planning.fit_work(
        plan, 3, 5, 1, [range(200), range(200, 400)], (400, 4096, 4096, 3),
        (25, 128, 128, 3), 1,
    )  # fmt: skip
    assert len(plan.tiles) == 64 * 64 and len(plan.blocks) == 8
    assert work.tasks["statistics"] == 4096 * 8
    assert work.tasks["combine"] == 4096 * 7
