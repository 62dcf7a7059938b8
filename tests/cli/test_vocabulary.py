"""One command-line vocabulary: help with defaults and examples, old spellings
that still work with a warning, and exit codes 0, 1, 2 and 130."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import subprocess
import sys
import time

import pytest
from helpers import LOCAL_CLUSTER, ROOT, cli_error, usage_error

import dmask
from dmask.cli import main
from dmask.cli.app import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    _build_parser,
)
from dmask.cli.common import HelpFormatter
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser by its name (``cluster ssh`` too)."""
    parser = _build_parser()
    found = {}
    todo = [("", parser)]
    while todo:
        prefix, each = todo.pop()
        for action in each._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found[f"{prefix}{name}"] = child
                    todo.append((f"{prefix}{name} ", child))
    return found


COMMANDS = _commands()


def test_every_command_is_covered():
    assert set(COMMANDS) >= {
        "synth", "train", "solve", "update", "ingest", "apply", "export", "import",
        "cluster", "cluster ssh", "compare", "tune", "report", "evaluate", "verify",
    }  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_defaults_and_examples(command, capsys):
    assert main([*command.split(), "--help"]) == EXIT_OK
    text = capsys.readouterr().out
    examples = text.split("\nexamples:\n", 1)
    assert len(examples) == 2, text
    assert f"  dmask {command}" in examples[1], text
    parser = COMMANDS[command]
    formatter = HelpFormatter(f"dmask {command}")
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        name = action.option_strings[-1]
        assert action.help, f"dmask {command} {name} has no help"
        assert name in text
        if action.default not in (None, False, [], 0, argparse.SUPPRESS):
            assert "default" in formatter._get_help_string(action), (command, name)


def test_train_help_shows_its_defaults(capsys):
    assert main(["train", "--help"]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (("--field R", "3"), ("--lam LAM", "0.4"),
                            ("--split NAME", "train"), ("--source NAME", "neutral"),
                            ("--normalize {minmax,none}", "minmax")):  # fmt: skip
        entry = text.split(f" {option} ", 1)[1]
        assert entry.split(")", 1)[0].endswith(f"(default: {default}"), (option, entry)
    assert "--targets NAME [NAME ...]" in text and "--in-process" in text


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_example_parses(command):
    parser = _build_parser()
    epilog = COMMANDS[command].epilog or ""
    lines = [line.strip() for line in epilog.splitlines()[1:] if line.strip()]
    assert lines, f"{command} has no examples"
    for line in lines:
        argv = shlex.split(line, comments=True)
        assert argv[0] == "dmask", line
        if "--help" in argv:
            continue
        args = parser.parse_args(argv[1:])
        assert args.command == argv[1], line


# ----------------------------------------------------------- old spellings


def _parsed(*argv: str) -> argparse.Namespace:
    return _build_parser().parse_args(list(argv))


TRAIN = ("train", "faces.zarr", "--out", "m.zarr")


@pytest.mark.parametrize(
    ("old", "new", "dest", "value"),
    [
        ((*TRAIN, "--threads"), (*TRAIN, "--in-process"), "in_process", True),
        ((*TRAIN, "--report", "r.html"), (*TRAIN, "--performance-report", "r.html"),
         "performance_report", "r.html"),
        ((*TRAIN, "--tls-ca", "ca.pem"), (*TRAIN, "--tls-ca-file", "ca.pem"),
         "tls_ca_file", "ca.pem"),
        ((*TRAIN, "--split", ""), (*TRAIN, "--split", "all"), "split", "all"),
        (("apply", "m", "d", "--out", "o", "--source", ""),
         ("apply", "m", "d", "--out", "o", "--source", "all"), "source", "all"),
        (("export", "m", "--out", "o", "--target", "happy"),
         ("export", "m", "--out", "o", "--targets", "happy"), "targets", ["happy"]),
        (("ingest", "f", "--out", "o", "--target-expression", "sad"),
         ("ingest", "f", "--out", "o", "--target", "sad"), "target", "sad"),
        (("cluster", "ssh", "h", "--threads", "4"),
         ("cluster", "ssh", "h", "--threads-per-worker", "4"),
         "threads_per_worker", 4),
        (("cluster", "ssh", "h", "--port", "9000"),
         ("cluster", "ssh", "h", "--scheduler-port", "9000"), "scheduler_port", 9000),
    ],
)  # fmt: skip
def test_an_old_spelling_means_the_new_one_and_is_noted(old, new, dest, value):
    before, after = _parsed(*old), _parsed(*new)
    assert getattr(before, dest) == getattr(after, dest) == value
    notes = before._deprecations
    assert len(notes) == 1 and "deprecated" in notes[0], notes
    assert not hasattr(after, "_deprecations")


def test_old_spellings_are_hidden_from_help(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for old in ("--threads ", "--report ", "--tls-ca "):
        assert old not in text
    assert main(["synth", "--help"]) == 0
    assert "--width" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        ((*TRAIN, "--targets", "happy", "sad"), "targets", ["happy", "sad"]),
        ((*TRAIN, "--targets", "happy,sad"), "targets", ["happy", "sad"]),
        (("compare", "d", "--fields", "1,3", "5"), "fields", [1, 3, 5]),
        (("compare", "d", "--methods", "mr,identity"), "methods", ["mr", "identity"]),
        (("tune", "d", "--lams", "0.1", "gcv"), "lams", [0.1, "gcv"]),
        (("synth", "--out", "f", "--size", "32", "24"), "size", (32, 24)),
        (("synth", "--out", "f", "--size", "32"), "size", (32, 32)),
        (("ingest", "f", "--out", "o", "--size", "64"), "size", (64, 64)),
        (("import", "w.npz", "--out", "o", "--size", "24", "20"), "size", (24, 20)),
    ],
)
def test_lists_and_sizes(argv, dest, value):
    args = _parsed(*argv)
    assert getattr(args, dest) == value
    assert not hasattr(args, "_deprecations")


def test_old_spellings_run_and_warn(tmp_path, capsys, caplog):
    """synth --width, --threads, --report: the same run as the new spellings."""
    out, report = tmp_path / "f.zarr", tmp_path / "r.html"
    with caplog.at_level(logging.WARNING, logger="dmask"):
        code = main(["synth", "--out", str(out), "--subjects", "2", "--size", "24",
                     "--width", "20", "--threads", "--report", str(report),
                     "--workers", "1", "--dashboard-address", "127.0.0.1:0",
                     "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert dataset_store.open_dataset(out)["images"].shape[1:3] == (24, 20)
    assert report.stat().st_size > 0
    warned = [r.getMessage() for r in caplog.records if r.name == "dmask.cli"]
    assert len(warned) == 3, warned
    assert any("--width is deprecated" in w and "--size H W" in w for w in warned)
    assert any("--threads is deprecated" in w and "--in-process" in w for w in warned)
    assert any("--report is deprecated" in w for w in warned)


def test_old_spelling_warning_on_stderr(tmp_path):
    """As a user sees it: one warning line in the log format, the run done."""
    run = subprocess.run(
        [sys.executable, "-m", "dmask", "synth", "--out", str(tmp_path / "f.zarr"),
         "--subjects", "2", "--size", "16", "--threads", "--workers", "1",
         "--dashboard-address", "127.0.0.1:0", "--no-progress"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, run.stderr
    assert "dmask.cli: --threads is deprecated" in warnings[0]


# -------------------------------------------------------------- exit codes


def test_exit_codes_are_defined_once():
    assert (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)


def test_a_failure_at_run_time_exits_1(capsys, tmp_path):
    missing = tmp_path / "missing.zarr"
    message = cli_error(capsys, "train", missing, "--out", tmp_path / "m.zarr")
    assert str(missing) in message and "does not exist" in message
    bad = tmp_path / "faces.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text("not json")
    message = cli_error(capsys, "evaluate", bad, bad, *LOCAL_CLUSTER)
    assert str(bad) in message


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ((*TRAIN, "--field", "2"), ("--field", "odd")),
        ((*TRAIN, "--lam", "0"), ("--lam",)),
        ((*TRAIN, "--tile", "0", "4"), ("--tile",)),
        ((*TRAIN, "--bogus"), ("unrecognized arguments",)),
        (("synth", "--out", "f", "--size", "1", "2", "3"), ("--size", "H or H W")),
        (("tune", "d", "--folds", "1"), ("--folds", "at least 2")),
        (("compare", "d", "--fields", "1,x"), ("--fields",)),
        (("synth", "--out", "f", "--memory-limit", "lots"), ("--memory-limit",)),
        (("synth", "--out", "f", "--test-fraction", "1"), ("--test-fraction",)),
        (("train",), ("required",)),
    ],
)
def test_argparse_usage_errors_exit_2(capsys, argv, words):
    line = usage_error(capsys, *argv)
    for word in words:
        assert word in line, line


def test_options_that_cannot_go_together_exit_2(capsys, faces, tmp_path):
    out = tmp_path / "m.zarr"
    line = cli_error(
        capsys, "train", faces, "--out", out, "--resume", "--overwrite", code=2
    )
    assert line == "dmask train: error: give --resume or --overwrite, not both"
    line = cli_error(
        capsys, "train", faces, "--out", out, "--statistics-folds", "3", code=2
    )
    assert "need --keep-statistics" in line
    line = cli_error(
        capsys, "synth", "--out", out, "--size", "24", "20", "--width", "16", code=2
    )
    assert "--size H W" in line
    assert not out.exists()


@pytest.fixture(scope="module")
def slow_faces(tmp_path_factory):
    """Faces that train for half a minute in many small tasks (to interrupt)."""
    path = tmp_path_factory.mktemp("slow") / "faces.zarr"
    make_synthetic_dataset(path, 8, (32, 32), seed=1, test_fraction=0.25)
    return path


def test_ctrl_c_exits_130(slow_faces, tmp_path):
    """SIGINT to a real ``dmask train`` once it computes: 130 and one line."""
    out = tmp_path / "m.zarr"
    process = subprocess.Popen(
        [sys.executable, "-m", "dmask", "train", str(slow_faces), "--out", str(out),
         "--field", "5", "--tile", "4", "4", "--sample-block", "1",
         "--workers", "1", "--in-process", "--dashboard-address", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        seen = []
        assert process.stderr is not None
        for line in process.stderr:  # the progress line of the fit's phase
            seen.append(line)
            if "fitting tiles" in line:
                break
        else:
            pytest.fail(f"the fit never started: {''.join(seen)}")
        time.sleep(1)
        if process.poll() is not None:
            pytest.skip("the run finished before it could be interrupted")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "dmask train: interrupted"
    assert "model:" not in stdout
    with pytest.raises(dmask.StoreError):  # not taken for a model
        dmask.open_model(out)
