"""Hostile model files (tests/hostile_files.py builds them) through the real CLI: nothing outside
the model is read, nothing hangs, each costs at most 10 s and 1 GiB, the refusal is one line
naming the file and the reason, exit 2, no traceback, and the input is unchanged.

Each file runs in a fresh process whose time and peak memory are measured alone
(tests/bounded_cli.py): these are bounds on hostile input, not performance targets.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hostile_files as hostile
from bounded_cli import Run, run_bounded

MAX_SECONDS = 10.0
MAX_BYTES = 1 << 30
# The content of /etc/passwd as float32, had it been read: "root:x:0:0:root:/root:/bin/bash".
OUTSIDE_BYTES = Path(hostile.OUTSIDE_FILE).read_bytes()[:32] if Path(hostile.OUTSIDE_FILE).exists() else b""


def assert_bounded(run: Run) -> None:
    assert run.seconds < MAX_SECONDS, f"took {run.seconds:.1f} s"
    assert run.peak_bytes < MAX_BYTES, f"peak {run.peak_bytes / 2**20:.0f} MiB"
    assert run.returncode >= 0, f"killed by signal {-run.returncode}"
    assert "Traceback" not in run.stdout + run.stderr


def assert_refused(run: Run, path: Path, *reason: str) -> None:
    assert_bounded(run)
    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"bninspect: error: {path}: "), lines[0]
    for text in reason:
        assert text in lines[0], lines[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


REFUSED = [
    (hostile.external_storage, "keeps its values in an external file"),
    (hostile.external_storage_legacy, "keeps its values in an external file"),
    (hostile.external_storage_fifo, "keeps its values in an external file"),
    (hostile.virtual_dataset, "is a virtual dataset"),
    (hostile.external_link_group, "external link to another file"),
    (hostile.external_link_dataset, "external link to another file"),
    (hostile.external_link_legacy, "external link to another file"),
    (hostile.declared_channels, "declare more than"),
    (hostile.many_layers, "more than 16,000 BN arrays"),
    (hostile.huge_chunk, "chunks of more than"),
    (hostile.deflate_chunk_bomb, "expands past its"),
    (lambda directory: hostile.zip_bomb(directory, zipfile.ZIP_BZIP2), "refusing a zip bomb"),
    (lambda directory: hostile.zip_bomb(directory, zipfile.ZIP_DEFLATED), "refusing a zip bomb"),
    (lambda directory: hostile.zip_bomb(directory, zipfile.ZIP_BZIP2, "config.json"), "config.json is larger than"),
    (lambda directory: hostile.zip_bomb(directory, zipfile.ZIP_DEFLATED, "config.json"), "config.json is larger than"),
    (hostile.fifo_model, "is a FIFO, not a regular file"),
    (hostile.many_config_layers, "more than 20,000 layers"),
]


@pytest.mark.parametrize("build, reason", REFUSED, ids=[f"{index}-{reason[:20]}" for index, (_, reason) in
                                                        enumerate(REFUSED)])
@pytest.mark.parametrize("command", [("inspect",), ("inspect", "--format", "json"), ("check",)],
                         ids=["inspect", "inspect-json", "check"])
def test_hostile_file_is_refused_in_one_line_within_bounds(tmp_path, build, reason, command):
    path = build(tmp_path)
    before = sha256(path) if path.is_file() else None
    run = run_bounded(*command, str(path))
    assert_refused(run, path, reason)
    if before is not None:
        assert sha256(path) == before
    if command[0] == "check":
        assert "unreadable" in run.stdout


def test_nothing_of_the_outside_file_reaches_any_output(tmp_path):
    """What the refused array would have held (/etc/passwd as float32) is nowhere in the output,
    in any format, also for --layer on the BN layer it belongs to."""
    path = hostile.external_storage(tmp_path)
    if not OUTSIDE_BYTES:
        pytest.skip(f"{hostile.OUTSIDE_FILE} does not exist here")
    import numpy as np

    leaked = np.frombuffer(OUTSIDE_BYTES, "float32")
    shown = {f"{value:.4g}" for value in leaked if np.isfinite(value) and value != 0}
    for args in (("inspect", str(path), "--layer", "batch_normalization"),
                 ("check", str(path), "--format", "json"), ("check", str(path), "--format", "sarif")):
        run = run_bounded(*args)
        assert run.returncode == 2
        assert not any(text in run.stdout for text in shown), args


def test_soft_link_cycle_and_hard_link_diamonds_are_walked_once(tmp_path):
    cycle = run_bounded("inspect", str(hostile.soft_link_cycle(tmp_path)), "--format", "json")
    assert_bounded(cycle)
    assert cycle.returncode in (0, 1)
    assert len(json.loads(cycle.stdout)["models"][0]["bn_layers"]) == 2
    diamonds = run_bounded("inspect", str(hostile.hard_link_diamonds(tmp_path)), "--format", "json")
    assert_bounded(diamonds)
    # 2^40 paths lead to the one BN layer at the bottom: it is read once.
    assert len(json.loads(diamonds.stdout)["models"][0]["bn_layers"]) == 1


def test_a_step_counter_on_a_fifo_is_not_read(tmp_path):
    """The counter is extra information: the model is still read, the counter is not."""
    run = run_bounded("inspect", str(hostile.external_step_counter_fifo(tmp_path)), "--format", "json")
    assert_bounded(run)
    model = json.loads(run.stdout)["models"][0]
    assert model["error"] is None and model["training_steps"] is None
    assert len(model["bn_layers"]) == 2


def test_a_fifo_in_a_directory_does_not_hang_check_and_the_others_are_reported(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    hostile.fifo_model(registry, "z.h5")
    (registry / "good.keras").write_bytes((hostile.SAMPLES / "cnn_trained.keras").read_bytes())
    run = run_bounded("check", str(registry), "--format", "json")
    assert_bounded(run)
    assert run.returncode == 2
    models = {Path(model["path"]).name: model for model in json.loads(run.stdout)["models"]}
    assert "FIFO" in models["z.h5"]["error"]
    assert models["good.keras"]["error"] is None and len(models["good.keras"]["bn_layers"]) == 2


def test_a_device_named_like_a_model_is_refused(tmp_path):
    link = tmp_path / "zero.h5"
    link.symlink_to("/dev/zero")
    assert_refused(run_bounded("inspect", str(link)), link, "is a character device")


def test_a_model_directory_with_a_fifo_or_a_link_leaving_it_is_refused(tmp_path):
    saved = tmp_path / "saved"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"\x08\x01")
    os.mkfifo(saved / "variables" / "variables.index")
    assert_refused(run_bounded("inspect", str(saved)), saved, "variables/variables.index is a FIFO")
    os.remove(saved / "variables" / "variables.index")
    (saved / "variables" / "variables.index").symlink_to("/etc/hostname")
    assert_refused(run_bounded("inspect", str(saved)), saved, "symbolic link out of the model directory")


def test_a_checkpoint_state_file_naming_a_path_outside_its_directory_is_not_followed(tmp_path):
    """The `checkpoint` file comes with the model: `model_checkpoint_path: "/elsewhere/ckpt"` (or
    `../elsewhere/ckpt`) must not make bninspect (TensorFlow) read a checkpoint elsewhere on the
    machine. With no checkpoint of its own in the directory, it is refused before TensorFlow runs."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "ckpt.index").write_bytes(b"x")
    (elsewhere / "ckpt.data-00000-of-00001").write_bytes(b"x")
    model = tmp_path / "model"
    model.mkdir()
    for named in (elsewhere / "ckpt", "../elsewhere/ckpt"):
        (model / "checkpoint").write_text(f'model_checkpoint_path: "{named}"\n')
        run = run_bounded("inspect", str(model))
        assert_refused(run, model, "outside the checkpoint directory")


def test_a_nested_model_of_2000_bn_layers_with_unmatched_names_is_read_in_linear_time(tmp_path):
    path = hostile.nested_unmatched_names(tmp_path)
    run = run_bounded("inspect", str(path), "--format", "json")
    assert_bounded(run)
    layers = json.loads(run.stdout)["models"][0]["bn_layers"]
    # Paired in order: every layer has the values stored for it.
    assert [layer["path"] for layer in layers] == [f"inner/bn_{index}" for index in range(2000)]
    assert all(layer["moving_variance"]["max"] == 2.0 for layer in layers)


def test_a_worker_that_dies_under_jobs_makes_only_its_file_unreadable(tmp_path):
    """A worker killed by a signal while reading one file (a crash inside a C library) breaks
    the process pool; that file is reported unreadable and every other file is still checked.
    The crash is injected with a sitecustomize module that the spawned workers import."""
    registry = tmp_path / "registry"
    registry.mkdir()
    names = [f"m{index}.keras" for index in range(6)]
    for name in names:
        (registry / name).write_bytes((hostile.SAMPLES / "cnn_trained.keras").read_bytes())
    (registry / "crash.keras").write_bytes((hostile.SAMPLES / "cnn_trained.keras").read_bytes())
    inject = tmp_path / "inject"
    inject.mkdir()
    # Every process imports it; only the workers read models when --jobs is given.
    (inject / "sitecustomize.py").write_text(
        "import os, signal\n"
        "import bninspect.loaders as loaders\n"
        "real_load = loaders.load\n"
        "def load(path, *args, **kwargs):\n"
        "    if os.path.basename(str(path)) == 'crash.keras':\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    return real_load(path, *args, **kwargs)\n"
        "loaders.load = load\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(inject),
                                                                           os.environ.get("PYTHONPATH")]))}
    process = subprocess.run([sys.executable, "-m", "bninspect", "check", str(registry), "--jobs", "2",
                              "--format", "json"], capture_output=True, text=True, env=environment, timeout=300)
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr
    models = {Path(model["path"]).name: model for model in json.loads(process.stdout)["models"]}
    assert "reading process died" in models["crash.keras"]["error"]
    for name in names:
        assert models[name]["error"] is None and len(models[name]["bn_layers"]) == 2, name


@pytest.mark.slow
def test_running_a_model_refuses_storage_outside_the_file_in_any_layer(tmp_path):
    """Keras reads every dataset with HDF5's own driver: a convolution kernel stored in
    /etc/passwd is refused before Keras opens the file (the static reading never reads it)."""
    path = hostile.external_storage_kernel(tmp_path)
    assert run_bounded("inspect", str(path)).returncode == 0
    data = str(hostile.SAMPLES / "cnn_data.npy")
    for args in (("probe", str(path), "--data", data), ("recalibrate", str(path), "--data", data,
                                                        "-o", str(tmp_path / "out.h5"))):
        run = run_bounded(*args, timeout=300)
        assert run.returncode == 2, (run.stdout, run.stderr)
        assert "Traceback" not in run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "conv1/kernel keeps its values in an external file" in lines[0], lines
        assert not (tmp_path / "out.h5").exists()
