"""A model file must never make the commands that run it crash (issue 25).

`probe`, `check --data`, `recalibrate` and `report --data` load the model with Keras and run it
with TensorFlow. On models built as an attacker would, by editing the config.json of a sample
`.keras` file, they end with one line on stderr naming the file and the reason, exit 2, no
traceback, and `check --data` goes on with the other files:

- names Keras accepts and TensorFlow refuses as graph scope names (the hostile names of
  tests/test_hostile_names.py, a space, the model's own name starting with `_`);
- values Keras refuses while loading (negative units, an axis out of range, a kernel of size 0);
- a dtype TensorFlow's ops do not take;
- shapes that would take gigabytes: a Dense declared on 10^12 features, an 8192x8192 image input
  fed a directory of images, an UpSampling2D of 2000 inside the model. These also end quickly
  and within the memory bound, measured on the process (the old code took the machine's memory:
  the harness kills a command past MEMORY_CAP).

Absurd values Keras accepts and TensorFlow runs (a negative or NaN epsilon, a NaN momentum) are
findings, not errors.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from bounded_cli import Run, run_bounded
from hostile_files import (config_layer, edited_config, free_image_input, huge_dense_input, large_image_input,
                           layer_config, model_named, png_images, renamed_copy, upsampling_instead_of_pooling)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
DATA = SAMPLES / "cnn_data.npy"  # 64 images, 16x16x3

# One hostile thing per name (tests/test_hostile_names.py puts them all in one name); `/` is the
# one character Keras itself refuses in a name.
HOSTILE_NAMES = {"csi": "bn\x1b[31m", "osc": "bn\x1b]0;title\x07", "workflow": "bn\n::error file=x::pwned",
                 "markup": "bn[/][bold]", "controls": "bn\x0b\x1f", "rlo": "bn\u202e", "percent": "bn%0A",
                 "mathtext": "$\\bad{$", "space": "bn 1"}
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")

# What the harness lets a command take before it kills it; TensorFlow alone takes ~0.6 GiB.
MEMORY_CAP = 3 << 30
# SPEC: a hostile file costs at most 1 GiB; on top of TensorFlow's own.
MEMORY_BAR = (1 << 30) + (600 << 20)
# SPEC: at most 10 s for a hostile file; TensorFlow's start-up comes on top (~6 s on 2 busy cores).
SECONDS_BAR = 30


def run_cli(*args: str, timeout: float = 300) -> Run:
    """The real CLI in a child process, its peak memory measured; killed past MEMORY_CAP."""
    return run_bounded(*args, timeout=timeout, memory_cap=MEMORY_CAP)


def shown(path: Path | str) -> str:
    """How bninspect shows a name in a one-line error: control characters as escapes."""
    from bninspect.untrusted import printable

    return printable(str(path))


def assert_one_line_error(run: Run, path: Path, *reasons: str) -> str:
    """Exit 2, one line on stderr naming `path`, holding every one of `reasons`, no traceback, no
    raw control character. Returns the line."""
    assert run.returncode == 2, (run.returncode, run.peak_bytes, run.stdout[-2000:], run.stderr[-3000:])
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
    assert RAW_CONTROL.search(run.stdout + run.stderr) is None
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"bninspect: error: {shown(path)}: "), line
    for reason in reasons:
        assert reason in line, (reason, line)
    return line


# --- names TensorFlow refuses -------------------------------------------------------------------

@pytest.fixture(scope="module")
def named(tmp_path_factory) -> dict[str, Path]:
    """{key: a trained CNN whose BN layer, model or nested model has a hostile name}."""
    directory = tmp_path_factory.mktemp("names")
    files = {key: renamed_copy(SAMPLES / "cnn_trained.keras", directory / f"bn_{key}.keras", "bn1", name)
             for key, name in HOSTILE_NAMES.items()}
    files["model_csi"] = model_named(directory, "cnn\x1b[31m", "csi")
    files["model_underscore"] = model_named(directory, "_cnn", "underscore")  # fine below the top, not at it
    files["nested"] = edited_config(directory / "nested_block.keras",
                                    lambda config: config_layer(config, "block")["config"].update(name="block x"),
                                    SAMPLES / "nested.keras")
    return files


@pytest.mark.slow
def test_probe_refuses_a_layer_name_tensorflow_cannot_run(named):
    run = run_cli("probe", str(named["csi"]), "--data", str(DATA))
    assert_one_line_error(run, named["csi"], "TensorFlow cannot run", "'bn\\x1b[31m' (BatchNormalization)",
                          "rename")


@pytest.mark.slow
def test_check_data_reports_every_hostile_name_and_goes_on(named):
    clean = SAMPLES / "cnn_trained.keras"
    run = run_cli("check", *map(str, named.values()), str(clean), "--data", str(DATA))
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
    assert RAW_CONTROL.search(run.stdout + run.stderr) is None
    lines = run.stderr.splitlines()
    assert len(lines) == len(named)  # one line per hostile file, none for the clean one
    for key, path in named.items():
        (line,) = [line for line in lines if line.startswith(f"bninspect: error: {shown(path)}: ")]
        # Keras itself refuses a `/` while loading; TensorFlow the rest, before anything runs.
        expected = "cannot contain character `/`" if "/" in HOSTILE_NAMES.get(key, "") else "TensorFlow cannot run"
        assert expected in line, line
    assert f"{clean}  ok" in run.stdout
    assert f"{len(named)} could not be run on the data" in run.stdout


@pytest.mark.slow
def test_model_names_tensorflow_cannot_run(named):
    run = run_cli("probe", str(named["model_underscore"]), "--data", str(DATA))
    assert_one_line_error(run, named["model_underscore"], "'_cnn' (the model itself)")


@pytest.mark.slow
def test_recalibrate_writes_nothing_for_a_hostile_name(named, tmp_path):
    out = tmp_path / "out.keras"
    run = run_cli("recalibrate", str(named["workflow"]), "--data", str(DATA), "-o", str(out))
    assert_one_line_error(run, named["workflow"], "TensorFlow cannot run", "'bn\\x0a::error file=x::pwned'")
    assert not out.exists()


@pytest.mark.slow
def test_report_data_on_a_hostile_name(named, tmp_path):
    pytest.importorskip("matplotlib")
    page = tmp_path / "report.html"
    run = run_cli("report", str(named["rlo"]), "--data", str(DATA), "-o", str(page))
    assert_one_line_error(run, named["rlo"], "TensorFlow cannot run", "'bn\\u202e'")
    assert not page.exists()


# --- configs Keras refuses, and what Keras accepts but TensorFlow cannot build ------------------

REFUSED_CONFIGS = {  # key: (layer, config values, what the line says)
    "units_negative": ("classes", {"units": -3}, "layer classes (Dense): Received an invalid value for `units`"),
    "filters_negative": ("conv2", {"filters": -8}, "layer conv2 (Conv2D): Invalid value for argument `filters`"),
    "kernel_zero": ("conv1", {"kernel_size": [0, 0]}, "layer conv1 (Conv2D): The `kernel_size` argument"),
    "axis_out_of_range": ("bn1", {"axis": 7}, "Keras cannot load the model"),
    "axis_not_a_number": ("bn1", {"axis": "x"}, "layer bn1 (BatchNormalization): invalid literal for int()"),
    "epsilon_not_a_number": ("bn1", {"epsilon": "x"}, "layer bn1 (BatchNormalization): could not convert"),
    "complex_dtype": ("bn1", {"dtype": "complex128"}, "one of the ReLU layers (relu1, relu2): Value passed to "
                                                      "parameter 'features' has DataType complex128"),
    "integer_dtype": ("bn1", {"dtype": "int32"}, "Conv2D layers (conv1, conv2): Input 'filter' of 'Conv2D' Op"),
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("configs")
    return {key: layer_config(directory, key, layer, **values) for key, (layer, values, _) in REFUSED_CONFIGS.items()}


@pytest.mark.slow
def test_probe_names_the_layer_and_reason_keras_refuses():
    # Keras wraps the reason in one error per level of nesting, each holding the whole config.
    with tempfile.TemporaryDirectory() as directory:
        path = layer_config(Path(directory), "units", "classes", units=-3)
        run = run_cli("probe", str(path), "--data", str(DATA))
        line = assert_one_line_error(run, path, "Keras cannot load the model (layer classes (Dense): ",
                                     "Received: units=-3")
    assert "config=" not in line


@pytest.mark.slow
def test_check_data_reports_every_refused_config_and_goes_on(configs):
    run = run_cli("check", *map(str, configs.values()), str(SAMPLES / "cnn_trained.keras"), "--data", str(DATA))
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert len(lines) == len(configs)
    for key, path in configs.items():
        (line,) = [line for line in lines if line.startswith(f"bninspect: error: {path}: cannot run on the data: ")]
        assert REFUSED_CONFIGS[key][2] in line, line


@pytest.mark.slow
def test_absurd_values_tensorflow_runs_are_findings_not_errors(tmp_path):
    files = [layer_config(tmp_path, "epsilon_negative", "bn1", epsilon=-1.0),
             layer_config(tmp_path, "epsilon_nan", "bn1", epsilon=math.nan),
             layer_config(tmp_path, "momentum_nan", "bn1", momentum=math.nan)]
    run = run_cli("check", *map(str, files), "--data", str(DATA), "--format", "json")
    assert run.returncode in (0, 1), run.stderr[-3000:]
    assert "Traceback" not in run.stderr and run.stderr == ""
    models = json.loads(run.stdout)["models"]
    assert [model["error"] for model in models] == [None, None, None]
    # A NaN epsilon or var + eps < 0 makes the layer's output NaN: BN103, an error finding.
    assert {finding["code"] for finding in models[1]["findings"]} >= {"BN103"}


# --- shapes that would take gigabytes ------------------------------------------------------------

def assert_quick_and_small(run: Run) -> None:
    assert run.seconds < SECONDS_BAR, run.seconds
    assert run.peak_bytes < MEMORY_BAR, run.peak_bytes / 2 ** 20


@pytest.mark.slow
def test_a_dense_declared_on_10_12_features_is_refused_before_keras_builds_it(tmp_path):
    path = huge_dense_input(tmp_path)
    np.save(tmp_path / "features.npy", np.zeros((8, 8), np.float32))
    run = run_cli("probe", str(path), "--data", str(tmp_path / "features.npy"))
    assert_one_line_error(run, path, "layer hidden (Dense) declares an input of shape (None, 1000000000000)")
    assert_quick_and_small(run)


@pytest.mark.slow
def test_images_resized_to_a_huge_input_are_refused_before_they_are_decoded(tmp_path):
    # 768 MiB per image: one fits the bound, the directory's four in one batch do not.
    path = large_image_input(tmp_path, side=8192)
    run = run_cli("probe", str(path), "--data", str(png_images(tmp_path / "images")))
    assert_one_line_error(run, path, "the model's input, (8192, 8192, 3) per sample, would take 3.0 GiB for a "
                                     "batch of 4", "lower --batch-size to 1 or less")
    assert_quick_and_small(run)


@pytest.mark.slow
def test_a_huge_tensor_inside_the_model_is_refused_before_it_runs(tmp_path):
    path = upsampling_instead_of_pooling(tmp_path, size=2000)
    run = run_cli("probe", str(path), "--data", str(DATA))
    assert_one_line_error(run, path, "a tensor of layer pool1 (UpSampling2D)", "one sample alone is above it")
    assert_quick_and_small(run)
    recalibrated = tmp_path / "out.keras"
    run = run_cli("recalibrate", str(path), "--data", str(DATA), "-o", str(recalibrated))
    assert_one_line_error(run, path, "a tensor of layer pool1 (UpSampling2D)")
    assert not recalibrated.exists()


@pytest.mark.slow
def test_an_input_of_any_size_takes_the_size_of_the_data(tmp_path):
    """(None, None, None, 3): the data fixes the size, and the bound applies to what it fixes."""
    path = free_image_input(tmp_path)
    run = run_cli("probe", str(path), "--data", str(DATA))
    assert run.returncode == 0, run.stderr[-3000:]
    big = tmp_path / "big.npy"
    np.lib.format.open_memmap(big, mode="w+", dtype=np.float32, shape=(8, 4096, 4096, 3)).flush()  # sparse
    run = run_cli("probe", str(path), "--data", str(big))
    assert_one_line_error(run, path, "the model's input, (4096, 4096, 3) per sample, would take 1.5 GiB for a "
                                     "batch of 8", "lower --batch-size to 5 or less")
    assert_quick_and_small(run)


# --- the bound itself ------------------------------------------------------------------------------

def _array_source(shape: tuple[int, ...]):
    """Data of `shape` that takes no memory (a broadcast zero), opened for a matching input."""
    from bninspect.data import InputSpec, open_data

    return open_data(np.broadcast_to(np.float32(0), shape), [InputSpec("x", (None,) * (len(shape) - 1))])


def test_the_batch_bound_names_the_batch_size_that_fits():
    from bninspect.probes.budget import TooLarge, check_inputs

    check_inputs("m.keras", _array_source((32, 224, 224, 3)), 32)  # ResNet50's input: 18 MiB
    # 192 MiB per sample.
    with pytest.raises(TooLarge, match=r"would take 6\.0 GiB for a batch of 32.*lower --batch-size to 5 or less"):
        check_inputs("m.keras", _array_source((100, 4096, 4096, 3)), 32)
    check_inputs("m.keras", _array_source((100, 4096, 4096, 3)), 5)
    check_inputs("m.keras", _array_source((5, 4096, 4096, 3)), 32)  # the data holds one batch of 5


@pytest.mark.slow
def test_real_backbones_stay_under_the_bound_at_batch_32():
    """ResNet50 at 224x224: the largest tensor of its traced graph is ~100 MB for 32 images."""
    import keras
    import tensorflow as tf

    from bninspect.probes import budget
    from bninspect.probes.backends.tensorflow import _check_graph

    model = keras.applications.ResNet50(weights=None)
    step = tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec((None, 224, 224, 3), tf.float32)])
    graph = step.get_concrete_function().graph
    _check_graph("resnet50.keras", model, graph, 32)
    with pytest.raises(budget.TooLarge, match=r"lower --batch-size to \d+ or less"):
        _check_graph("resnet50.keras", model, graph, 1024)
