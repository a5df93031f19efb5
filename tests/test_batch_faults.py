"""A catalogue of faults during a batch and `tficon compose` (issue 26): full disks, unwritable folders, kills at
chosen write points, damaged results under a valid record, hostile folder names, symbolic links, pipes as inputs.

Each case asserts what is on disk afterwards and what a re-run does. A full disk and an unwritable folder are
simulated by making the file writer's temporary file fail with the OS's error (the tests may run as root, where
chmod does not stop a write); a kill is a ``BaseException`` raised from the writer at the chosen point, which
nothing in the batch catches, as nothing can catch ``kill -9``. Tiny random SD 2.x model, 128 px, 4 steps.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tficon.run.batch as batch_module
import tficon.run.batch_compose as batch_compose
import tficon.run.files as files
from tficon.cli import EXIT_INTERRUPTED, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_WRITE_FAILED, main
from tficon.core import io
from tficon.core.config import CompositionConfig
from tficon.model.tiny import save_tiny_model
from tficon.run.batch import OUTPUT_FILES, RECORD_FILE, discover_samples, run_batch
from tficon.toy.samples import toy_sample
from tficon.toy.world import render_object

SIZE = 128
STEPS = 4
FIRST = "cross_domain/a red star and a blue square, outline style"
SECOND = "cross_domain/a yellow circle and a blue square, outline style"
CONFIG = CompositionConfig(steps=STEPS)


class Killed(BaseException):
    """Stands for ``kill -9``: nothing in the batch catches it."""


def _box_mask(box) -> Image.Image:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    x, y, w, h = box
    mask[y : y + h, x : x + w] = 255
    return Image.fromarray(mask)


def _write_sample(folder, background, foreground, object_mask, user_mask) -> None:
    os.makedirs(folder, exist_ok=True)
    folder = Path(os.fsdecode(folder))
    background.save(folder / "bg00.png")
    foreground.save(folder / "fg01.png")
    object_mask.save(folder / "fg01_mask.png")
    if user_mask is not None:
        user_mask.save(folder / "mask_bg_fg.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two samples sharing a background, a saved tiny model, and one finished batch (``baseline``) to copy."""
    base = tmp_path_factory.mktemp("faults")
    star = toy_sample(image_size=SIZE)
    circle, circle_mask = render_object("circle", "yellow", "flat", size=16.0, image_size=SIZE)
    inputs = base / "inputs"
    _write_sample(inputs / FIRST, star.background, star.foreground, star.foreground_mask, _box_mask(star.box))
    _write_sample(inputs / SECOND, star.background, circle, circle_mask, _box_mask((70, 70, 36, 36)))
    model_dir = save_tiny_model(base / "tiny", "sd2")
    from tficon.model import load_model

    model = load_model(model_dir)
    baseline = base / "baseline"
    report = run_batch(inputs, baseline, model, config=CONFIG, image_size=SIZE, progress=False, perceptual=False)
    assert [o.action for o in report.outcomes] == ["composed", "composed"]
    return {"base": base, "inputs": inputs, "model_dir": model_dir, "model": model, "baseline": baseline,
            "sample": star}  # fmt: skip


def _batch(world, out, *, config=CONFIG, force=False, log=None):
    return run_batch(
        world["inputs"], out, world["model"], config=config, image_size=SIZE, force=force, progress=False,
        perceptual=False, log=log if log is not None else (lambda message: None),
    )  # fmt: skip


def _copy_baseline(world, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(world["baseline"], out)
    return out


def _actions(report) -> dict[str, str]:
    return {o.id: o.action for o in report.outcomes}


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _same_result(out, world, sample_id) -> bool:
    name = OUTPUT_FILES["result"]
    return np.array_equal(_pixels(out / sample_id / name), _pixels(world["baseline"] / sample_id / name))


def _temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(f"{files.TEMP_PREFIX}*")]


def _failing_temp(monkeypatch, code: int, where) -> None:
    """The OS refuses to create files (``code``: ENOSPC, EACCES, ...) in the folders ``where(folder)`` picks."""
    real = files._temp_path

    def temp_path(folder, suffix=".tmp"):
        if where(Path(folder)):
            raise OSError(code, os.strerror(code), str(folder))
        return real(folder, suffix)

    monkeypatch.setattr(files, "_temp_path", temp_path)


def _in_sample(sample_id):
    return lambda folder: folder.as_posix().endswith(sample_id)


# ------------------------------------------------------------------------------------------ atomic writes, umask


def test_outputs_get_the_umask_and_a_record_that_vouches_for_each_image(world):
    out = world["baseline"]
    record = json.loads((out / FIRST / RECORD_FILE).read_text())
    for name in OUTPUT_FILES.values():
        assert record["output_fingerprints"][name] == files.file_fingerprint(out / FIRST / name)
    umask = os.umask(0)
    os.umask(umask)
    for path in [out / FIRST / RECORD_FILE, out / FIRST / OUTPUT_FILES["result"], out / "summary.csv"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert _temporary_files(out) == []


# ------------------------------------------------------------------------------------------ a full disk, read-only


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "free some space"), (errno.EACCES, "not writable")])
def test_a_sample_that_cannot_be_written_fails_alone_and_a_rerun_composes_it(world, tmp_path, monkeypatch, capsys,
                                                                               code, words):  # fmt: skip
    out = tmp_path / "out"
    _failing_temp(monkeypatch, code, _in_sample(FIRST))  # its images and even its failure record fail
    args = ["batch", str(world["inputs"]), "--out", str(out), "--model", str(world["model_dir"]), "--size",
            str(SIZE), "--steps", str(STEPS), "--quiet", "--pixel-metrics-only"]  # fmt: skip
    assert main(args) == EXIT_WRITE_FAILED
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert f"FAILED {FIRST}: WriteError: cannot write" in captured.out + captured.err
    assert f"could not write the record of {FIRST}" in captured.out + captured.err
    summary = json.loads((out / "summary.json").read_text())
    by_id = {s["id"]: s for s in summary["samples"]}
    assert by_id[FIRST]["status"] == "failed" and words in by_id[FIRST]["reason"]
    assert "\n" not in by_id[FIRST]["reason"]
    assert by_id[SECOND]["status"] == "composed"  # the batch went on
    assert not (out / FIRST / RECORD_FILE).exists() and _temporary_files(out) == []
    assert all((out / name).is_file() for name in ("summary.csv", "contact_sheet.png", "report.html"))

    monkeypatch.undo()  # space freed: the re-run composes only the failed sample
    report = _batch(world, out)
    assert _actions(report) == {FIRST: "composed", SECOND: "done"}
    assert _same_result(out, world, FIRST)


def test_a_summary_that_cannot_be_written_is_named_in_one_line_and_the_others_are_written(world, tmp_path,
                                                                                          monkeypatch, capsys):
    out = _copy_baseline(world, tmp_path)
    (out / "summary.json").unlink()
    real = files.write_bytes_atomic

    def write(path, data):
        if Path(path).name == "summary.json":
            raise files.WriteError(errno.ENOSPC, f"cannot write {str(path)!r}: No space left on device")
        return real(path, data)

    monkeypatch.setattr(files, "write_bytes_atomic", write)
    args = ["batch", str(world["inputs"]), "--out", str(out), "--model", str(world["model_dir"]), "--size",
            str(SIZE), "--steps", str(STEPS), "--quiet", "--pixel-metrics-only"]  # fmt: skip
    assert main(args) == EXIT_WRITE_FAILED
    printed = capsys.readouterr().out
    assert "could not write summary.json: cannot write" in printed and "Traceback" not in printed
    assert "2 already done" in printed
    assert not (out / "summary.json").exists() and (out / "report.html").is_file() and (out / "summary.csv").is_file()


def test_an_error_while_saving_one_sample_fails_it_and_the_batch_goes_on(world, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = batch_compose.placement_overlay

    def overlay(background, placement, object_mask):
        if overlay.calls == 0:
            overlay.calls += 1
            raise RuntimeError("the overlay broke\non two lines")
        return real(background, placement, object_mask)

    overlay.calls = 0
    monkeypatch.setattr(batch_compose, "placement_overlay", overlay)
    report = _batch(world, out)
    assert _actions(report) == {FIRST: "failed", SECOND: "composed"}
    record = json.loads((out / FIRST / RECORD_FILE).read_text())
    assert record["status"] == "failed" and record["failure"] == "run"
    assert record["reason"] == "RuntimeError: the overlay broke on two lines"
    assert not report.write_failed
    monkeypatch.undo()
    assert _actions(_batch(world, out)) == {FIRST: "composed", SECOND: "done"}
    assert _same_result(out, world, FIRST)


# ------------------------------------------------------------------------------------------ kills while writing


@pytest.mark.parametrize("point", ["first image", "after result.png", "before the record"])
def test_a_run_killed_while_writing_never_leaves_a_record_a_rerun_trusts(world, tmp_path, monkeypatch, point):
    """A run with other settings is killed while writing the first sample; the next run, with the original
    settings, must compose that sample again (its old record no longer vouches for the half-replaced images)."""
    out = _copy_baseline(world, tmp_path)
    saves = []
    real_save = batch_compose.save_image_atomic

    def save(path, image):
        saves.append(Path(path).name)
        if point == "first image" or (point == "after result.png" and len(saves) == 2):
            # a real kill during a write leaves its temporary file behind
            (Path(path).parent / f"{files.TEMP_PREFIX}deadbeef.tmp").write_bytes(b"\x89PNG half")
            raise Killed
        return real_save(path, image)

    def record(path, obj):
        if obj.get("status") == "composed":
            raise Killed
        return files.write_json_atomic(path, obj)

    monkeypatch.setattr(batch_compose, "save_image_atomic", save)
    if point == "before the record":
        monkeypatch.setattr(batch_module, "write_json_atomic", record)
    with pytest.raises(Killed):
        _batch(world, out, config=CONFIG.replace(seed=7))
    assert not (out / FIRST / RECORD_FILE).exists()
    if point == "before the record":
        assert not _same_result(out, world, FIRST)  # the other settings' image is on disk
    monkeypatch.undo()

    report = _batch(world, out)
    assert _actions(report) == {FIRST: "composed", SECOND: "done"}
    assert _same_result(out, world, FIRST)
    assert _actions(_batch(world, out)) == {FIRST: "done", SECOND: "done"}


@pytest.mark.parametrize("damage", ["truncated", "another image"])
def test_a_damaged_result_under_a_valid_record_is_composed_again(world, tmp_path, damage):
    out = _copy_baseline(world, tmp_path)
    result = out / FIRST / OUTPUT_FILES["result"]
    if damage == "truncated":
        result.write_bytes(result.read_bytes()[: result.stat().st_size // 2])
    else:
        shutil.copyfile(out / SECOND / OUTPUT_FILES["result"], result)
    report = _batch(world, out)
    assert _actions(report) == {FIRST: "composed", SECOND: "done"}
    assert _same_result(out, world, FIRST)


def test_ctrl_c_while_writing_exits_130_once_and_a_rerun_resumes(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"

    def interrupted(path, image):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_compose, "save_image_atomic", interrupted)
    args = ["batch", str(world["inputs"]), "--out", str(out), "--model", str(world["model_dir"]), "--size",
            str(SIZE), "--steps", str(STEPS), "--quiet", "--pixel-metrics-only"]  # fmt: skip
    assert main(args) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.count("interrupted (Ctrl-C)") == 1 and "a re-run resumes" in err and "Traceback" not in err
    assert not (out / FIRST / RECORD_FILE).exists() and _temporary_files(out) == []
    monkeypatch.undo()
    assert main(args) == 0
    assert "2 composed" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ names and links


def _cheap_tree(root: Path) -> Path:
    """Sample folders that are skipped without a model (a user mask missing), so their runs are fast."""
    star = toy_sample(image_size=SIZE)
    for name in ["=SUM(1,2)", "+cmd", "-x", "@A1", "plain"]:
        _write_sample(root / name, star.background, star.foreground, star.foreground_mask, None)
    return root


def test_csv_cells_that_start_like_a_formula_are_neutralised(tmp_path):
    inputs = _cheap_tree(tmp_path / "inputs")
    report = run_batch(inputs, tmp_path / "out", "no model is loaded", progress=False, perceptual=False,
                       log=lambda message: None)  # fmt: skip
    assert report.count("skipped") == 5
    with (tmp_path / "out" / "summary.csv").open(newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    assert ids == ["'+cmd", "'-x", "'=SUM(1,2)", "'@A1", "plain"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["id"] for s in summary["samples"]] == ["+cmd", "-x", "=SUM(1,2)", "@A1", "plain"]  # JSON keeps them


def test_a_folder_name_that_is_not_utf8_is_skipped_by_its_escaped_name(tmp_path, capsys):
    inputs = _cheap_tree(tmp_path / "inputs")
    star = toy_sample(image_size=SIZE)
    bad = os.fsencode(inputs) + b"/bad\xffname"
    try:
        os.mkdir(bad)
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    _write_sample(bad, star.background, star.foreground, star.foreground_mask, _box_mask(star.box))
    out = tmp_path / "out"
    args = ["batch", str(inputs), "--out", str(out), "--quiet", "--pixel-metrics-only"]
    assert main(args) == 0  # skipped, not failed
    captured = capsys.readouterr()
    assert "skipped bad\\xffname: the folder name is not valid UTF-8" in captured.out + captured.err
    summary = json.loads((out / "summary.json").read_text())
    by_id = {s["id"]: s for s in summary["samples"]}
    assert by_id["bad\\xffname"]["status"] == "skipped" and "rename it to its prompt" in by_id["bad\\xffname"]["reason"]
    assert "bad\\xffname" in (out / "summary.csv").read_text(encoding="utf-8")
    assert (out / "report.html").read_text(encoding="utf-8") and (out / "contact_sheet.png").is_file()
    assert main(args) == 0  # the re-run finds the record and writes the summaries again
    assert "(recorded earlier)" in capsys.readouterr().out


def test_symbolic_links_to_folders_are_reported_not_followed(tmp_path):
    inputs = tmp_path / "inputs"
    star = toy_sample(image_size=SIZE)
    _write_sample(inputs / "real" / "a star", star.background, star.foreground, star.foreground_mask, None)
    outside = tmp_path / "elsewhere" / "a circle"
    _write_sample(outside, star.background, star.foreground, star.foreground_mask, None)
    (inputs / "linked").symlink_to(inputs / "real")  # followed, it would compose real/a star twice
    (inputs / "out of tree").symlink_to(tmp_path / "elsewhere")
    (inputs / "loop").symlink_to(inputs)
    samples = {s.id: s for s in discover_samples(inputs)}
    assert set(samples) == {"real/a star", "linked", "out of tree", "loop"}
    assert "outside the batch root: not followed" in samples["out of tree"].problem
    assert "link to 'real', inside the batch root: not followed" in samples["linked"].problem
    assert "link to the batch root" in samples["loop"].problem
    report = run_batch(inputs, tmp_path / "out", "no model is loaded", progress=False, perceptual=False,
                       log=lambda message: None)  # fmt: skip
    assert set(_actions(report).values()) == {"skipped"} and len(report.outcomes) == 4
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "not followed" in {s["id"]: s for s in summary["samples"]}["out of tree"]["reason"]
    assert not (tmp_path / "out" / "out of tree" / OUTPUT_FILES["result"]).exists()


# ------------------------------------------------------------------------------------------ tficon compose


def _compose_args(world, out, *extra):
    root = world["inputs"] / FIRST
    return [
        "compose", "--model", str(world["model_dir"]), "--background", str(root / "bg00.png"), "--foreground",
        str(root / "fg01.png"), "--foreground-mask", str(root / "fg01_mask.png"), "--mask",
        str(root / "mask_bg_fg.png"), "--prompt", world["sample"].prompt, "--size", str(SIZE), "--steps", str(STEPS),
        "--quiet", "--out", str(out), *extra,
    ]  # fmt: skip


def test_compose_writes_a_legal_255_byte_name_with_the_umask(world, tmp_path, capsys):
    out = tmp_path / ("a" * 251 + ".png")
    summary = tmp_path / ("b" * 250 + ".json")
    assert main(_compose_args(world, out, "--json", str(summary))) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask and summary.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, summary.name])
    with Image.open(out) as image:
        assert image.size == world["sample"].background.size


def test_compose_refuses_a_name_past_the_systems_limit_before_any_work(world, tmp_path, capsys):
    out = tmp_path / ("a" * 300 + ".png")
    assert main(_compose_args(world, out)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--out:" in err and "shorten the name" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_compose_into_a_full_disk_is_one_line_with_exit_3_and_leaves_nothing(world, tmp_path, monkeypatch, capsys):
    _failing_temp(monkeypatch, errno.ENOSPC, lambda folder: True)
    out = tmp_path / "result.png"
    assert main(_compose_args(world, out, "--json", str(tmp_path / "r.json"))) == EXIT_WRITE_FAILED
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"tficon compose: error: cannot write {str(out)!r}: No space left on device; free some space" in err
    assert list(tmp_path.iterdir()) == []
    assert EXIT_WRITE_FAILED not in (EXIT_RUN_FAILED, EXIT_USAGE, EXIT_INTERRUPTED)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipe_or_device_as_an_input_is_not_a_regular_file(world, tmp_path, capsys, kind):
    if kind == "fifo":
        path = tmp_path / "bg.png"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("no /dev/zero here")
    with pytest.raises(ValueError, match="is not a regular file"):
        io.load_image(path, name="background")
    args = _compose_args(world, tmp_path / "never.png")
    args[args.index("--background") + 1] = str(path)
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--background:" in err and "not a regular file" in err and "Traceback" not in err
    assert not (tmp_path / "never.png").exists()


def test_a_pipe_in_a_sample_folder_skips_that_sample_with_the_reason(tmp_path):
    inputs = tmp_path / "inputs"
    star = toy_sample(image_size=SIZE)
    _write_sample(inputs / "a star", star.background, star.foreground, star.foreground_mask, None)
    os.mkfifo(inputs / "a star" / "mask_bg_fg.png")  # reading it would block the batch for ever
    report = run_batch(inputs, tmp_path / "out", "no model is loaded", progress=False, perceptual=False,
                       log=lambda message: None)  # fmt: skip
    assert _actions(report) == {"a star": "skipped"}
    assert "is not a regular file" in report.outcomes[0].reason
    assert (tmp_path / "out" / "summary.json").is_file()


# ------------------------------------------------------------------------------------------ --processes N


def _sharded(world, tmp_path) -> tuple[list[str], dict, Path]:
    """A 2-process batch on the embedded toy model over 12 copies of the first sample (long enough to signal)."""
    import sys

    inputs = tmp_path / "inputs"
    for index in range(12):
        shutil.copytree(world["inputs"] / FIRST, inputs / f"a red star and a blue square {index}")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tficon", "batch", str(inputs), "--out", str(out), "--steps", "30",
               "--pixel-metrics-only", "--quiet", "--threads", "1", "--processes", "2"]  # fmt: skip
    return command, {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, out


def _wait_for_a_record(out: Path, process) -> None:
    import time

    deadline = time.monotonic() + 300
    while not list(out.glob("*/sample.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the batch ended before it could be signalled"


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signalled_sharded_batch_stops_its_processes_and_says_so_once(world, tmp_path, signal_name):
    """Ctrl-C at a terminal (SIGINT to the whole process group) or a kill of the command (SIGTERM to it alone):
    the command ends, no process of the batch is left running, Ctrl-C is reported once with exit 130, and a
    re-run resumes."""
    import signal
    import subprocess

    import psutil

    command, env, out = _sharded(world, tmp_path)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        _wait_for_a_record(out, process)
        family = psutil.Process(process.pid).children(recursive=True)
        assert len(family) >= 3  # the launcher and its two processes
        if signal_name == "SIGINT":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert alive == []
        assert not (out / "summary.json").exists()  # stopped, not left to finish on their own
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if signal_name == "SIGINT":
        assert process.returncode == EXIT_INTERRUPTED, stderr[-3000:]
        assert stderr.count("interrupted (Ctrl-C)") == 1 and "a re-run resumes" in stderr
    else:
        assert process.returncode != 0 and "a re-run resumes" in stderr
    finished = len(list(out.glob("*/sample.json")))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads((out / "summary.json").read_text())["counts"]
    assert counts["already_done"] >= finished >= 1 and counts["already_done"] + counts["composed_now"] == 12


def test_a_killed_sharded_process_is_named_in_one_line_and_a_rerun_resumes(world, tmp_path):
    """``kill -9`` of one of the batch's processes: the command ends with 137 (128 + SIGKILL), names the process in
    one line instead of torchrun's report (no traceback, no ``ChildFailedError``), says that a re-run resumes and
    leaves nothing running; the re-run completes the batch, and a re-run with nothing left to do exits 0."""
    import signal
    import subprocess

    import psutil

    command, env, out = _sharded(world, tmp_path)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        _wait_for_a_record(out, process)
        family = psutil.Process(process.pid).children(recursive=True)
        workers = [p for p in family if "tficon.run.launcher" not in " ".join(p.cmdline()) and "tficon" in p.cmdline()]
        assert len(workers) == 2, [p.cmdline() for p in family]
        rank_1 = next(p for p in workers if p.environ().get("LOCAL_RANK") == "1")
        rank_1.send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=120)
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert alive == []
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 128 + signal.SIGKILL, stderr[-3000:]
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("tficon batch:") and ": warning:" not in line]
    assert ours == ["tficon batch: process 1 was ended by SIGKILL (the other process was stopped)",
                    "tficon batch: the processes ended with exit code 137; finished samples are kept and a re-run "
                    "resumes"], stderr  # fmt: skip
    assert "Root Cause" not in stderr and "exitcode" not in stderr and "SIGTERM" not in stderr  # torchrun's report
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads((out / "summary.json").read_text())["counts"]
    assert counts["already_done"] + counts["composed_now"] == 12 and counts["already_done"] >= 1
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["counts"]["already_done"] == 12
