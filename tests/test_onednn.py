"""Channels_first models on any x86-64 CPU (issue 12), and one stderr line per model `check` cannot use.

TensorFlow runs NCHW (channels_first) convolutions on the CPU only through oneDNN, which it turns on
by default only on some CPUs (AVX-512 yes, AVX2-only no). bninspect sets TF_ENABLE_ONEDNN_OPTS=1
before importing TensorFlow unless the user set it. No outcome here may depend on the CPU:

- without the variable, the commands run a channels_first model and get the right statistics (that
  is the default on AVX-512 CPUs and needs bninspect's setting on AVX2 ones; both pass);
- with the user's TF_ENABLE_ONEDNN_OPTS=0 bninspect keeps it: where NCHW then fails the command
  exits 2 with one line, where it still runs it exits 0;
- the one-line error itself is checked with a failure forced in a subprocess, on every CPU.

The commands run in subprocesses with a clean TF_ENABLE_ONEDNN_OPTS (this test process has its own,
set by conftest before TensorFlow was imported).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import h5py
import numpy as np
import pytest

from bninspect.probes.run_errors import _where, nchw_hint, tf_reason
from bninspect.tf_runtime import OneDNNSetting

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "channels_first_axis1.keras"  # image (3, 16, 16) -> conv (8, 3x3) -> bn axis=1
ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
NCHW_REASON = ("The Conv2D op currently only supports the NHWC tensor format on the CPU. "
               "The op was given the format: NCHW")
# What TF 2.21 raises from the probe's traced step on a CPU without oneDNN (frames shortened).
GRAPH_MESSAGE = (
    "Graph execution error:\n\nDetected at node channels_first_axis1_1/conv_1/convolution defined at (most recent "
    "call last):\n  File \"/x/bninspect/probes/runner.py\", line 67, in run_probe\n\n  File \"/x/keras/src/"
    "backend/tensorflow/nn.py\", line 812, in _conv\n\n" + NCHW_REASON
    + "\n\t [[{{node channels_first_axis1_1/conv_1/convolution}}]] [Op:__inference_step_150]")
# What Keras 3 raises when the model is called eagerly.
EAGER_MESSAGE = (
    "Exception encountered when calling Conv2D.call().\n\n\x1b[1m{{function_node __wrapped__Conv2D_device_/job:"
    "localhost/replica:0/task:0/device:CPU:0}} " + NCHW_REASON + " [Op:Conv2D]\x1b[0m\n\nArguments received by "
    "Conv2D.call():\n  • inputs=tf.Tensor(shape=(16, 3, 16, 16), dtype=float32)")


def _env(onednn: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != ONEDNN}
    if onednn is not None:
        env[ONEDNN] = onednn
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COLUMNS", None)
    return env


def _bninspect(args: list, onednn: str | None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bninspect", *map(str, args)], cwd=cwd, env=_env(onednn),
                          capture_output=True, text=True, timeout=300)


def _python(script: str, onednn: str | None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=_env(onednn), capture_output=True,
                          text=True, timeout=300)


def _weights(path: Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its arrays, from a .keras archive."""
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
        found = {}
        for group in weights["layers"].values():
            variables = group["vars"]
            found[variables.attrs["name"]] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
        return found


def _conv_output(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Conv2D(padding="same", use_bias=False, data_format="channels_first") in float64 NumPy."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))  # n c i j a b
    return np.einsum("ncijab,abco->noij", windows, kernel.astype(np.float64))


@pytest.fixture
def work(tmp_path: Path) -> SimpleNamespace:
    model = tmp_path / "cf.keras"
    shutil.copy(SAMPLE, model)
    rng = np.random.default_rng(12)
    # Pixels in [0, 1) with a per-channel offset: channel means well away from 0.
    x = (rng.uniform(0, 1, (40, 3, 16, 16)) + np.array([0.5, -0.3, 1.0]).reshape(1, 3, 1, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    conv = _conv_output(x, _weights(model)["conv"][0])
    mean = conv.mean(axis=(0, 2, 3))
    variance = conv.var(axis=(0, 2, 3))
    return SimpleNamespace(dir=tmp_path, model=model, data=tmp_path / "x.npy", mean=mean, variance=variance)


def _assert_one_line_about_the_conv_layer(result: subprocess.CompletedProcess, model_name: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("bninspect: error: ") and model_name in line
    assert "layer conv (Conv2D)" in line and "NHWC" in line
    assert "channels_first" in line and ONEDNN in line
    return line


# --- the import function -------------------------------------------------------------------------

REPORT_SETTING = ("import os, sys\nfrom bninspect.tf_runtime import import_tensorflow, onednn_setting\n"
                  "{before}import_tensorflow()\nsetting = onednn_setting()\n"
                  "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), setting.value, setting.imported_by_bninspect, "
                  "'keras' in sys.modules)\n")


@pytest.mark.slow
@pytest.mark.parametrize("user_value, expected", [(None, "1 1 True True"), ("0", "0 0 True True"),
                                                  ("1", "1 1 True True")])
def test_import_tensorflow_turns_onednn_on_unless_the_user_set_it(tmp_path, user_value, expected):
    result = _python(REPORT_SETTING.format(before=""), user_value, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
    assert result.stderr == ""  # quiet: TensorFlow's start-up lines are not shown


@pytest.mark.slow
def test_tensorflow_imported_before_bninspect_is_left_alone_and_said_so(tmp_path):
    result = _python(REPORT_SETTING.format(before="import tensorflow\n"), None, tmp_path)
    assert result.returncode == 0, result.stderr
    # Setting the variable now would change nothing: bninspect does not, and knows it did not import TF.
    assert result.stdout.split() == ["None", "None", "False", "True"]


# --- the one-line error, unit level --------------------------------------------------------------

def _layer(class_name: str, name: str, **attributes):
    """A stand-in for a Keras layer: its class name, `name` and attributes (`layers`, `data_format`)."""
    layer = type(class_name, (), {})()
    layer.name = name
    for key, value in attributes.items():
        setattr(layer, key, value)
    return layer


def _fake_model():
    conv = _layer("Conv2D", "conv", data_format="channels_first")
    inner = _layer("Sequential", "block", layers=[_layer("Conv2D", "conv", data_format="channels_last"),
                                                  _layer("BatchNormalization", "bn")])
    return _layer("Sequential", "channels_first_axis1", layers=[conv, _layer("BatchNormalization", "bn"), inner])


def test_the_reason_is_one_line_without_frames_node_names_or_colour_codes():
    assert tf_reason(GRAPH_MESSAGE) == NCHW_REASON
    assert tf_reason(EAGER_MESSAGE) == NCHW_REASON


def test_the_layer_is_found_from_the_node_name_or_the_keras_call_note():
    model = _fake_model()
    assert _where(model, GRAPH_MESSAGE, NCHW_REASON) == "layer conv (Conv2D)"
    nested = GRAPH_MESSAGE.replace("channels_first_axis1_1/conv_1/", "channels_first_axis1_1/block_1/conv_1/")
    assert _where(model, nested, NCHW_REASON) == "layer block/conv (Conv2D)"
    # Eagerly Keras names only the class; of the two Conv2D layers only one is channels_first.
    assert _where(model, EAGER_MESSAGE, NCHW_REASON) == "layer conv (Conv2D)"
    assert _where(model, "Exception encountered when calling layer 'bn' (type BatchNormalization).\n\nboom",
                  "boom") == "one of the BatchNormalization layers (bn, block/bn)"
    assert _where(model, "boom\n\t [[{{node other/MatMul}}]]", "boom") == "op other/MatMul"
    assert _where(model, "boom", "boom") == "the model"


def test_the_hint_says_what_to_do_for_each_onednn_setting():
    user_off = nchw_hint(NCHW_REASON, OneDNNSetting("0", True, True))
    assert "unset TF_ENABLE_ONEDNN_OPTS (it is '0') or set it to 1" in user_off and "channels_last" in user_off
    too_late = nchw_hint(NCHW_REASON, OneDNNSetting(None, False, False))
    assert "imported before bninspect" in too_late and "TF_ENABLE_ONEDNN_OPTS=1" in too_late
    no_onednn = nchw_hint(NCHW_REASON, OneDNNSetting("1", True, False))
    assert "does not provide" in no_onednn and "channels_last" in no_onednn
    assert nchw_hint("Input to reshape is a tensor with 10 values", OneDNNSetting("1", True, False)) is None


# --- the commands on a channels_first model ------------------------------------------------------

@pytest.mark.slow
def test_probe_and_recalibrate_run_a_channels_first_model_with_the_right_statistics(work):
    probe = _bninspect(["probe", work.model, "--data", work.data, "--format", "json"], None, work.dir)
    assert probe.returncode == 0, probe.stderr
    assert "Traceback" not in probe.stderr
    (entry,) = json.loads(probe.stdout)["models"]
    (layer,) = entry["probe"]["layers"]
    assert layer["path"] == "bn" and layer["channels"] == 8 and layer["input"]["values"] == 40 * 16 * 16 * 8
    std = np.sqrt(work.variance)
    for summary, expected in ((layer["input"]["mean"], work.mean), (layer["input"]["std"], std)):
        observed = [summary["min"], summary["median"], summary["max"]]
        np.testing.assert_allclose(observed, [expected.min(), np.median(expected), expected.max()], rtol=1e-4)

    out = work.dir / "out.keras"
    recalibrated = _bninspect(["recalibrate", work.model, "--data", work.data, "-o", out], None, work.dir)
    assert recalibrated.returncode == 0, recalibrated.stderr
    _, _, moving_mean, moving_variance = _weights(out)["bn"]
    # Per channel, against NumPy's convolution of the same data: the statistics of BN's input.
    np.testing.assert_allclose(moving_mean, work.mean, rtol=1e-4)
    np.testing.assert_allclose(moving_variance, work.variance, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["probe", "recalibrate"])
def test_the_users_onednn_off_is_respected_and_fails_in_one_line_where_nchw_needs_it(work, command):
    out = work.dir / "out.keras"
    args = ([command, work.model, "--data", work.data]
            + (["--format", "json"] if command == "probe" else ["-o", out]))
    result = _bninspect(args, "0", work.dir)
    if result.returncode == 0:
        return  # this CPU / TensorFlow build runs NCHW convolutions without oneDNN
    line = _assert_one_line_about_the_conv_layer(result, "cf.keras")
    assert "(it is '0')" in line  # the user's setting was kept, and named
    assert result.stdout == "" and not out.exists()


# --- the same failure, forced on every CPU -------------------------------------------------------

FORCED_FAILURE = """
import sys
from bninspect.tf_runtime import import_tensorflow

tf = import_tensorflow(quiet=True)
import bninspect.probes.recalibrate as recalibrate
import bninspect.probes.runner as runner

def one_pass(*args, **kwargs):
    raise tf.errors.UnimplementedError(None, None, {message!r})

runner.one_pass = recalibrate.one_pass = one_pass
from bninspect.cli import main

main({args!r})
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", ["probe", "recalibrate", "check"])
@pytest.mark.parametrize("onednn", ["0", None])
def test_a_tensorflow_error_while_running_is_one_line_naming_file_and_layer(work, command, onednn):
    out = work.dir / "out.keras"
    args = {"probe": ["probe", "cf.keras", "--data", "x.npy", "--format", "json"],
            "recalibrate": ["recalibrate", "cf.keras", "--data", "x.npy", "-o", str(out)],
            "check": ["check", "cf.keras", "--data", "x.npy", "--format", "json"]}[command]
    result = _python(FORCED_FAILURE.format(message=GRAPH_MESSAGE, args=args), onednn, work.dir)
    line = _assert_one_line_about_the_conv_layer(result, "cf.keras")
    if onednn == "0":
        assert "unset TF_ENABLE_ONEDNN_OPTS (it is '0') or set it to 1" in line
    else:
        assert "does not provide" in line  # bninspect had turned oneDNN on, and it still failed
    if command == "check":
        assert line.startswith("bninspect: error: cf.keras: cannot run on the data: layer conv (Conv2D): ")
        (entry,) = json.loads(result.stdout)["models"]
        assert entry["error"] in line and entry["error"].startswith("cannot run on the data: layer conv")
    else:
        assert result.stdout == "" and not out.exists()
    if command == "probe" and onednn == "0":  # once: --debug shows the traceback, with TensorFlow's error as cause
        debug = _python(FORCED_FAILURE.format(message=GRAPH_MESSAGE, args=[*args, "--debug"]), onednn, work.dir)
        assert debug.returncode != 0 and "ModelRunError" in debug.stderr and "UnimplementedError" in debug.stderr


# --- check: one stderr line per model it could not use -------------------------------------------

def _broken_files(folder: Path) -> tuple[list[Path], Path]:
    good = folder / "good.h5"
    shutil.copy(ROOT / "sample_models" / "cnn_trained.h5", good)
    (folder / "empty.keras").write_bytes(b"")
    (folder / "notes.h5").write_text("not a model\n", encoding="utf-8")
    (folder / "truncated.h5").write_bytes(good.read_bytes()[:4000])
    return [folder / "empty.keras", folder / "notes.h5", folder / "truncated.h5"], good


def _check(*args):
    from typer.testing import CliRunner

    from bninspect.cli import app

    return CliRunner().invoke(app, ["check", *map(str, args)])


@pytest.mark.parametrize("output_format", ["json", "sarif", "junit", "github", "text"])
@pytest.mark.parametrize("to_file", [False, True])
def test_check_prints_one_stderr_line_per_unreadable_file_in_every_format(tmp_path, output_format, to_file):
    broken, good = _broken_files(tmp_path)
    report = tmp_path / f"report.{output_format}"
    result = _check(*broken, good, "--format", output_format, *(["--output", report] if to_file else []))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ", 3)[2] for line in lines] == [str(path) for path in broken], result.stderr
    assert all(line.startswith("bninspect: error: ") and line.split(": ", 3)[3] for line in lines)
    assert "Traceback" not in result.stderr
    document = report.read_text(encoding="utf-8") if to_file else result.stdout
    if to_file:
        assert result.stdout == ""
    if output_format == "json":
        models = {entry["path"]: entry for entry in json.loads(document)["models"]}
        for path, line in zip(broken, lines):
            assert models[str(path)]["error"] and line.endswith(models[str(path)]["error"])
        assert models[str(good)]["error"] is None
    elif output_format == "sarif":
        assert json.loads(document)["runs"]
    elif output_format == "junit":
        assert ElementTree.fromstring(document) is not None
    for path in broken:
        assert path.name in document  # the report keeps its entry
