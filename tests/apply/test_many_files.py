"""Folders of many files: a streamed listing, manifests, batch records, URLs."""

from __future__ import annotations

import functools
import os

import dask
import fsspec
import numpy as np
import pytest
from helpers import LOCAL_CLUSTER, error_lines
from PIL import Image

import dmask
from dmask.apply import batches, folder
from dmask.cli import main
from dmask.datasets.drawing import render_face, subject_params
from dmask.errors import InputError
from dmask.io import photographs

THREADS = LOCAL_CLUSTER


def _face(subject: int, expression: str, height: int, width: int) -> np.ndarray:
    image = render_face(subject_params(5, subject), expression, height, width)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    """A small two-target model on 16 x 16 RGB faces, saved to a store."""
    sources = np.stack([_face(s, "neutral", 16, 16) for s in range(8)])
    targets = {
        n: np.stack([_face(s, n, 16, 16) for s in range(8)]) for n in ("happy", "sad")
    }
    path = tmp_path_factory.mktemp("model") / "model.zarr"
    dmask.fit(sources, targets, field=3, store=path)
    return str(path)


#: Names whose sorted order is not the order of a plain string sort of the
#: whole path ("a/..." before "a.png", "B" before "a", "a-b" before "a.png").
NESTED = [
    "B.png",
    "a/z.png",
    "a/y/x.png",
    "a-b.png",
    "a.png",
    "c/d/e/f.jpg",
    "c/d/g.png",
    "c/h.PNG",
    "k/l.png",
]


@pytest.fixture
def photos(tmp_path):
    """A nested folder of 18 x 18 faces, with hidden files and folders besides."""
    root = tmp_path / "photos"
    for i, relative in enumerate(NESTED):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_face(10 + i, "neutral", 18, 18)).save(root / relative)
    (root / ".hidden").mkdir()
    Image.fromarray(_face(1, "neutral", 18, 18)).save(root / ".hidden" / "h.png")
    Image.fromarray(_face(2, "neutral", 18, 18)).save(root / "k" / ".h.png")
    (root / "k" / "notes.txt").write_text("not an image name")
    return root


def _tree(out) -> dict[str, bytes]:
    """Every PNG under a local folder or URL, by its relative path."""
    fs, root = fsspec.core.url_to_fs(str(out))
    root = root.rstrip("/")
    found = {}
    for path in fs.find(root):
        relative = path[len(root) + 1 :]
        if relative.endswith(".png") and not relative.startswith("."):
            found[relative] = fs.cat_file(path)
    return found


def _options():
    return {"crop": "none", "resize": "bilinear"}


def test_streamed_listing_is_the_sorted_listing(photos, tmp_path):
    os.symlink(photos / "c", photos / "linked")  # folders behind links: not followed
    old = [p.relative_to(photos).as_posix() for p in photographs.image_files(photos)]
    walked = list(batches.walk_images(photos))
    assert walked == old
    assert sorted(walked) != walked  # the order is not a plain string sort
    assert walked[:3] == ["B.png", "a/y/x.png", "a/z.png"]
    assert list(batches.batched(iter(walked), 4)) == [
        walked[0:4],
        walked[4:8],
        walked[8:],
    ]


def test_streamed_batches_write_what_each_file_alone_writes(
    model_store, photos, tmp_path
):
    model = dmask.open_model(model_store)
    report = folder.apply_to_folder(
        model, photos, tmp_path / "out", block=4, **_options()
    )
    assert (report.scanned, report.written, report.batches) == (9, 9, 3)
    assert report.tasks == 3 and report.first_task is not None
    # the old way: the whole sorted list, one file at a time
    every = [p.relative_to(photos).as_posix() for p in photographs.image_files(photos)]
    arrays = folder._model_arrays(model.dataset)
    for relative in every:
        folder.predict_files(
            [relative], str(photos), str(tmp_path / "alone"), model.targets,
            arrays, model.field, True, "none", 0.25, resize="bilinear",
        )  # fmt: skip
    assert _tree(tmp_path / "out") == _tree(tmp_path / "alone")
    assert len(_tree(tmp_path / "out")) == 9 * 5
    records = os.listdir(tmp_path / "out" / batches.PROGRESS)
    assert len(records) == 3


def test_a_manifest_gives_the_same_outputs(model_store, photos, tmp_path):
    model = dmask.open_model(model_store)
    folder.apply_to_folder(model, photos, tmp_path / "listed", **_options())
    text = tmp_path / "files.txt"
    text.write_text("# every file, in another order\n\n" + "\n".join(NESTED[::-1]))
    report = folder.apply_to_folder(
        model, photos, tmp_path / "text", manifest=text, block=2, **_options()
    )
    assert report.scanned == report.written == 9 and report.batches == 5
    assert _tree(tmp_path / "text") == _tree(tmp_path / "listed")
    table = tmp_path / "files.csv"
    table.write_text("path,label\n" + "".join(f"{p},x\n" for p in NESTED[:4]))
    report = folder.apply_to_folder(
        model, photos, tmp_path / "csv", manifest=table, **_options()
    )
    assert report.written == 4
    wanted = _tree(tmp_path / "listed")
    got = _tree(tmp_path / "csv")
    assert got and all(wanted[k] == v for k, v in got.items())


def test_interrupted_run_skips_recorded_batches(
    model_store, photos, tmp_path, monkeypatch
):
    model = dmask.open_model(model_store)
    folder.apply_to_folder(model, photos, tmp_path / "whole", **_options())
    out = tmp_path / "out"
    real_write = folder._write_png

    def failing_write(path, *args):
        if "c/d/e/f" in path:  # the third batch of two: a failure there
            raise OSError("disk on fire")
        real_write(path, *args)

    monkeypatch.setattr(folder, "_write_png", failing_write)
    with pytest.raises(OSError, match="disk on fire"), dask.config.set(num_workers=1):
        folder.apply_to_folder(model, photos, out, block=2, **_options())
    monkeypatch.setattr(folder, "_write_png", real_write)
    # the two batches before the failing one, and any the one thread had
    # started when the failure was seen; not the failing one
    recorded = os.listdir(out / batches.PROGRESS)
    assert 2 <= len(recorded) <= 4
    done = {p: os.stat(out / p).st_mtime_ns for p in _tree(out)}
    assert len(done) >= 2 * 2 * 5

    checked = []
    real_exists = folder._exists

    def counting_exists(path):
        checked.append(path)
        return real_exists(path)

    monkeypatch.setattr(folder, "_exists", counting_exists)
    report = folder.apply_to_folder(model, photos, out, block=2, **_options())
    assert report.batches == 5 and report.batches_done == len(recorded)
    assert report.tasks == 5 - len(recorded)
    assert report.already_done >= 4 and report.already_done + report.written == 9
    # the recorded batches' outputs were not looked at, one by one or at all
    done_inputs = {"B.png", "a/y/x.png", "a/z.png", "a-b.png"}
    assert not [p for p in checked if any(d[:-4] in p for d in done_inputs)]
    assert {p: os.stat(out / p).st_mtime_ns for p in done} == done
    assert _tree(out) == _tree(tmp_path / "whole")

    checked.clear()
    again = folder.apply_to_folder(model, photos, out, block=2, **_options())
    assert again.tasks == 0 and again.batches_done == 5 and checked == []
    assert again.already_done == 9 and again.written == 0
    redo = folder.apply_to_folder(
        model, photos, out, block=2, resume=False, **_options()
    )
    assert redo.tasks == 5 and redo.written == 9


def test_a_batch_with_a_bad_file_is_tried_again(model_store, photos, tmp_path):
    model = dmask.open_model(model_store)
    (photos / "a" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    first = folder.apply_to_folder(model, photos, out, block=3, **_options())
    assert first.problem_count == 1 and first.written == 9
    again = folder.apply_to_folder(model, photos, out, block=3, **_options())
    assert again.batches_done == again.batches - 1 and again.tasks == 1
    assert again.written == 0 and again.problem_count == 1
    assert again.already_done == 9
    face = _face(3, "neutral", 18, 18)
    Image.fromarray(face).save(photos / "a" / "broken.png", format="PNG")
    fixed = folder.apply_to_folder(model, photos, out, block=3, **_options())
    assert fixed.written == 1 and fixed.problem_count == 0


def test_report_lines_beyond_those_held_go_to_the_file(
    model_store, photos, tmp_path, monkeypatch
):
    monkeypatch.setattr(folder, "HELD_LINES", 1)
    for name in ("x.png", "y.png"):
        (photos / name).write_text("not an image")
    model = dmask.open_model(model_store)
    report = folder.apply_to_folder(model, photos, tmp_path / "out", **_options())
    assert len(report.problems) == 1 and report.problem_count == 2
    text = (tmp_path / "out" / "report.txt").read_text()
    assert "skipped x.png" in text and "skipped y.png" in text
    assert "2 skipped" in text.splitlines()[-1]


@pytest.fixture
def memory_photos(photos):
    fs = fsspec.filesystem("memory")
    root = f"/dmask-test-{os.getpid()}"
    fs.put(str(photos), root + "/photos", recursive=True)
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


def test_a_memory_folder_into_a_memory_folder(
    model_store, photos, memory_photos, tmp_path
):
    model = dmask.open_model(model_store)
    folder.apply_to_folder(model, photos, tmp_path / "local", **_options())
    source, out = memory_photos + "/photos", memory_photos + "/out"
    assert list(batches.walk_images(source)) == list(batches.walk_images(photos))
    report = folder.apply_to_folder(model, source, out, block=4, **_options())
    assert report.written == 9 and report.batches == 3
    assert _tree(out) == _tree(tmp_path / "local")
    assert "9 synthesised" in fsspec.open(out + "/report.txt", "r").open().read()
    again = folder.apply_to_folder(model, source, out, block=4, **_options())
    assert again.tasks == 0 and again.already_done == 9
    # the local output of a memory folder, and a missing file of a manifest
    manifest = tmp_path / "m.txt"
    manifest.write_text("a.png\nmissing.png\n")
    mixed = folder.apply_to_folder(
        model, source, tmp_path / "mixed", manifest=manifest, **_options()
    )
    assert mixed.written == 1
    assert mixed.problems == ["missing.png: unreadable: cannot read image "
                              f"{source}/missing.png: no such file"]  # fmt: skip
    with pytest.raises(InputError, match="inside the input folder"):
        folder.apply_to_folder(model, source, source + "/o", **_options())


@pytest.mark.parametrize(
    "lines, words",
    [
        ("a.png\n../outside.png\n", ["line 2", "../outside.png", "inside"]),
        ("/etc/passwd\n", ["line 1", "/etc/passwd"]),
        ("a.png\nc/nothing.png\n", ["line 2", "c/nothing.png", "not a file"]),
        ("# nothing\n\n", ["lists no files"]),
    ],
)
def test_a_bad_manifest_is_one_line_naming_it(
    model_store, photos, tmp_path, lines, words
):
    manifest = tmp_path / "list.txt"
    manifest.write_text(lines)
    model = dmask.open_model(model_store)
    with pytest.raises(InputError) as caught:
        folder.apply_to_folder(model, photos, tmp_path / "o", manifest=manifest)
    message = str(caught.value)
    assert "\n" not in message and str(manifest) in message
    for word in words:
        assert word in message
    assert not (tmp_path / "o").exists()  # refused before any work


def test_the_command_line_takes_a_manifest(model_store, photos, tmp_path, capsys):
    manifest = tmp_path / "some.txt"
    manifest.write_text("a.png\nc/d/g.png\n")
    out = tmp_path / "out"
    argv = ["apply", model_store, str(photos), "--out", str(out), "--crop", "none",
            "--manifest", str(manifest), "--files-per-task", "1", *THREADS]  # fmt: skip
    assert main(argv) == 0
    assert "images synthesised 2" in capsys.readouterr().out
    assert (out / "happy" / "c" / "d" / "g.png").is_file()
    argv[argv.index(str(manifest))] = str(tmp_path / "none.txt")
    assert main(argv) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "none.txt does not exist" in lines[0]


@pytest.mark.parametrize("where", ["threads", "cluster"])
def test_a_generator_is_taken_only_as_tasks_finish(where, request):
    pulled, finished = [0], []
    ahead = []

    def items():
        for i in range(200):
            pulled[0] += 1
            ahead.append(pulled[0] - len(finished))
            yield -i

    def done(item, result):
        finished.append((item, result))

    run = functools.partial(
        batches.run_bounded, abs, items(), done, kwargs={}, in_flight=3,
        name="predict_files", phase="testing",
    )  # fmt: skip
    if where == "cluster":
        with request.getfixturevalue("cluster_client").as_current():
            count = run()
    else:
        count = run()
    assert count == 200 and max(ahead) <= 4  # 3 in flight and the one taken
    assert sorted(r for _, r in finished) == list(range(200))


def test_a_cluster_records_batches_and_a_rerun_skips_them(
    model_store, photos, tmp_path, cluster_client
):
    model = dmask.open_model(model_store)
    folder.apply_to_folder(model, photos, tmp_path / "local", **_options())
    with cluster_client.as_current():
        first = folder.apply_to_folder(
            model, photos, tmp_path / "cluster", block=2, **_options()
        )
        again = folder.apply_to_folder(
            model, photos, tmp_path / "cluster", block=2, **_options()
        )
    assert first.tasks == 5 and first.written == 9
    assert again.tasks == 0 and again.already_done == 9
    assert _tree(tmp_path / "cluster") == _tree(tmp_path / "local")
