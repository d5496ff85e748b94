"""probe, check --data, recalibrate, report --data, --build and the notebook API on this process's
Keras backend, on files written by every backend, against NumPy over the backend's own outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BACKENDS, MODELS

TESTS = Path(__file__).resolve().parents[1]
SAMPLES = TESTS.parent / "sample_models"
# Statistics within this fraction of the channel's standard deviation of NumPy's (issue 27).
TOLERANCE = 1e-5


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bninspect", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1"})


def bn_inputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every BN layer's input over `x`, computed by this backend's Keras (one model, every BN input
    an output), channels last, as float64 (n, channels)."""
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    outputs = probe.predict(x, batch_size=16, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return {layer.name: np.asarray(out, np.float64).reshape(-1, out.shape[-1]) for layer, out in zip(layers, outputs)}


def assert_close_to_numpy(measured, values: np.ndarray, where: str) -> None:
    """Within TOLERANCE of the channel's std, or within the float32 resolution of its values where
    that is coarser: a channel of a random-weight backbone can sit at |mean| = 500 std, where the
    probe's compiled step and `predict` (two XLA programs on JAX) round its values differently by
    an ulp, 6e-5 std there."""
    mean, std = values.mean(axis=0), values.std(axis=0)
    allowed = TOLERANCE * std + 4 * np.finfo(np.float32).eps * np.abs(mean) + 1e-30
    mean_error = np.max(np.abs(measured.mean - mean) / allowed)
    std_error = np.max(np.abs(np.sqrt(measured.variance) - std) / allowed)
    assert measured.count[0] == values.shape[0], where
    assert mean_error <= 1 and std_error <= 1, f"{where}: mean {mean_error:.2f}, std {std_error:.2f} of the allowed error"


@pytest.mark.parametrize("writer", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_probe_statistics_are_numpy_s_over_this_backend_s_outputs(backend, models, writer, name, suffix):
    import keras

    from bninspect.probes import run_probe

    path = models / f"{name}_{writer}{suffix}"
    x = np.load(models / f"{name}_x.npy")
    # 70, 90 and 40 samples in batches of 32: every run has a last, shorter batch.
    report = run_probe(str(path), x, batch_size=32, progress=False)
    expected = bn_inputs(keras.saving.load_model(path, compile=False), x)
    assert [layer.path for layer in report.layers] == list(expected)
    for layer in report.layers:
        assert_close_to_numpy(layer.input, expected[layer.path], f"{path.name} {layer.path} on {backend}")
    assert report.gap is not None and report.consistency is not None
    assert report.consistency.relative_difference < 1e-4  # inference mode: no sample depends on its batch


def test_a_last_short_batch_reuses_the_compiled_step(backend, models, monkeypatch):
    """70 samples in batches of 32: one compiled step per reduction serves the full batches, the
    short last one, the gap and the single samples of the consistency check (JAX pads to one
    shape; TensorFlow's trace has a free batch axis; torch runs eagerly)."""
    from bninspect.probes import backends, run_probe, runner

    adapter_class = type(backends.adapter(backend))
    reductions, compiled = [], []
    step_function, compile_step = runner._step_function, adapter_class.compile

    def recording_step_function(model, instrumentation, reduction, layout):
        reductions.append(reduction.value)
        return step_function(model, instrumentation, reduction, layout)

    def recording_compile(self, source, model, function, first, rows):
        compiled.append((reductions[-1], first.size, rows))
        return compile_step(self, source, model, function, first, rows)

    monkeypatch.setattr(runner, "_step_function", recording_step_function)
    monkeypatch.setattr(adapter_class, "compile", recording_compile)
    report = run_probe(str(models / f"cnn_{backend}.keras"), np.load(models / "cnn_x.npy"), batch_size=32,
                       progress=False)
    assert report.batches == 3 and report.consistency is not None and report.gap is not None
    assert compiled and compiled[0] == ("one-pass", 32, 32)
    assert len({reduction for reduction, _, _ in compiled}) == len(compiled)  # none compiled twice
    assert all(rows == 32 for _, _, rows in compiled)


def test_a_mean_far_from_zero_keeps_its_variance(backend, models):
    """|mean| = 1e4 std: one pass would lose the variance in float32 squares; the batch is redone
    in two passes (JAX without x64 adds the per-sample sums in float64 on the host)."""
    import keras

    from bninspect.probes import run_probe

    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
    x = (np.random.default_rng(3).normal(0.0, 1.0, (50, 6, 6, 3)) + 1e4).astype(np.float32)
    report = run_probe(model, x, batch_size=16, progress=False)
    assert_close_to_numpy(report.layer("bn").input, x.reshape(-1, 3).astype(np.float64), "offset 1e4")


def test_nan_inputs_are_counted_and_left_out(backend):
    import keras

    from bninspect.probes import run_probe

    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
    x = np.random.default_rng(4).normal(1.0, 2.0, (20, 4, 4, 2)).astype(np.float32)
    x[3, 1, 1, 0] = np.nan
    x[17, 0, 2, 1] = np.inf
    report = run_probe(model, x, batch_size=8, progress=False)
    layer = report.layer("bn").input
    assert layer.non_finite.tolist() == [1.0, 1.0]
    flat = x.reshape(-1, 2).astype(np.float64)
    for channel in range(2):
        finite = flat[np.isfinite(flat[:, channel]), channel]
        assert abs(layer.mean[channel] - finite.mean()) <= TOLERANCE * finite.std()
    assert "BN103" in [finding.code for finding in report.findings]


@pytest.mark.parametrize("writer", BACKENDS)
def test_recalibrate_writes_numpy_s_statistics_into_a_file_every_backend_loads(backend, models, output, writer):
    """The first BN layer's new statistics are exactly the mean and population variance of its
    input over the data; the file goes to the matrix, which loads it in all three backends."""
    import keras

    from bninspect import loaders

    source = models / f"cnn_{writer}.keras"
    target = output / f"cnn_{writer}_recalibrated_on_{backend}.keras"
    result = run_cli("recalibrate", str(source), "--data", str(models / "cnn_x.npy"), "-o", str(target),
                     "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    x = np.load(models / "cnn_x.npy")
    first = bn_inputs(keras.saving.load_model(source, compile=False), x)["bn1"]
    stored = {bn.path: bn for bn in loaders.load(str(target)).bn_layers}["bn1"]
    np.testing.assert_allclose(np.asarray(stored.moving_mean, np.float64), first.mean(axis=0),
                               atol=TOLERANCE * first.std(axis=0).min())
    np.testing.assert_allclose(np.asarray(stored.moving_variance, np.float64), first.var(axis=0),
                               rtol=2 * TOLERANCE)


def test_probe_check_and_report_run_from_the_command_line(backend, models, tmp_path):
    model = str(models / "mobilenet_jax.keras")
    data = str(models / "mobilenet_x.npy")
    probe = run_cli("probe", model, "--data", data, "--format", "json")
    assert probe.returncode in (0, 1), probe.stderr
    document = json.loads(probe.stdout)
    assert document["models"][0]["probe"]["samples"] == 40
    check = run_cli("check", str(models / "cnn_torch.keras"), str(models / "mlp_tensorflow.h5"), "--data",
                    str(models / "cnn_x.npy"), "--format", "json")
    # The MLP cannot take the CNN's images: an error for that model, exit 2, the CNN still checked.
    assert check.returncode == 2, check.stderr
    reports = {Path(entry["path"]).name: entry for entry in json.loads(check.stdout)["models"]}
    assert reports["cnn_torch.keras"]["error"] is None and reports["cnn_torch.keras"]["probe"]["batches"] == 3
    assert "features" in reports["mlp_tensorflow.h5"]["error"]
    page = tmp_path / "report.html"
    report = run_cli("report", str(models / "cnn_tensorflow.h5"), "--data", str(models / "cnn_x.npy"), "-o", str(page))
    assert report.returncode == 0, report.stderr
    assert "BN101" in page.read_text(encoding="utf-8") or "bn1" in page.read_text(encoding="utf-8")


def test_a_directory_of_images_is_decoded_without_tensorflow(backend, models):
    result = run_cli("probe", str(models / "cnn_jax.keras"), "--data", str(models / "images"), "--rescale", "1/255",
                     "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    assert json.loads(result.stdout)["models"][0]["probe"]["samples"] == 12


def test_build_reads_a_subclassed_model_s_configs(backend, models):
    result = run_cli("inspect", str(models / f"subclassed_{backend}.keras"), "--build", "--custom-objects",
                     str(TESTS / "subclassed_keras_net.py"), "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    entry = json.loads(result.stdout)["models"][0]
    assert entry["built"] is True
    assert [(bn["path"], bn["momentum"]) for bn in entry["bn_layers"]] == [("bn", pytest.approx(0.1))]


def test_the_notebook_api_runs_on_a_live_model(backend, models):
    import keras

    import bninspect

    model = keras.saving.load_model(models / f"cnn_{backend}.keras", compile=False)
    x = np.load(models / "cnn_x.npy")
    report = bninspect.inspect(model, data=x)
    assert report.probe is not None and report.probe.samples == 70
    before = np.array(model.get_layer("bn1").moving_mean.numpy())
    bninspect.recalibrate(model, x)
    after = np.asarray(model.get_layer("bn1").moving_mean.numpy(), np.float64)
    expected = bn_inputs(model, x)["bn1"].mean(axis=0)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected, atol=1e-5 * bn_inputs(model, x)["bn1"].std(axis=0).min())


def test_a_keras_2_h5_file_runs_through_keras_3_s_reader(backend):
    result = run_cli("probe", str(SAMPLES / "cnn_trained_tf2.h5"), "--data", str(SAMPLES / "cnn_data.npy"),
                     "--format", "json")
    if backend == "tensorflow":
        assert result.returncode in (0, 1), result.stderr
        return
    assert result.returncode in (0, 1), result.stderr
    assert json.loads(result.stdout)["models"][0]["probe"]["samples"] > 0


def test_what_only_tensorflow_reads_says_so_in_one_line(backend):
    if backend == "tensorflow":
        pytest.skip("TensorFlow reads SavedModels")
    result = run_cli("probe", str(SAMPLES / "cnn_trained_tf2_savedmodel"), "--data", str(SAMPLES / "cnn_data.npy"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "TensorFlow" in lines[0] or "tensorflow" in lines[0]


def test_a_backend_that_is_not_installed_is_one_line_with_the_pip_command(backend, models):
    if os.environ.get("BNINSPECT_TEST_WITHOUT_TENSORFLOW") != "1":
        pytest.skip("TensorFlow is installed in this run")
    result = run_cli("probe", str(models / "cnn_jax.keras"), "--data", str(models / "cnn_x.npy"),
                     "--backend", "tensorflow")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "bninspect: error: `bninspect probe` needs TensorFlow, which is not installed: pip install 'bninspect[tensorflow]'"]
