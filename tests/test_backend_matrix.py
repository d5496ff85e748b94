"""The backend suite (tests/backends) on TensorFlow, JAX and PyTorch, each in its own process.

Keras chooses its backend once per process, so the suite runs as a nested pytest per backend,
with KERAS_BACKEND set; JAX and PyTorch run as if TensorFlow were not installed
(tests/backends/without_tensorflow), so an import of TensorFlow on those backends fails the run.
First every backend writes its models; last, the files each backend recalibrated are loaded and
run by every backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests" / "backends"
BACKENDS = ("tensorflow", "jax", "torch")

pytestmark = pytest.mark.slow


def backend_env(backend: str, **extra: str) -> dict[str, str]:
    without_tensorflow = backend != "tensorflow"
    path = [str(SUITE / "without_tensorflow")] if without_tensorflow else []
    return {**os.environ, "KERAS_BACKEND": backend, "BNINSPECT_TEST_WITHOUT_TENSORFLOW": "1" if without_tensorflow else "0",
            "PYTHONPATH": os.pathsep.join(path + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
            **extra}


def run(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    models = tmp_path_factory.mktemp("backend_models")
    output = tmp_path_factory.mktemp("backend_output")
    for backend in BACKENDS:
        written = run([sys.executable, str(SUITE / "write_models.py"), str(models)], backend_env(backend), 900)
        assert written.returncode == 0, f"writing the {backend} models failed:\n{written.stderr[-4000:]}"
    return models, output


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_backend_suite_passes_on(backend, shared):
    models, output = shared
    env = backend_env(backend, BNINSPECT_BACKEND_MODELS=str(models), BNINSPECT_BACKEND_OUTPUT=str(output))
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(SUITE)], env, 2400)
    assert result.returncode == 0, f"the backend suite failed on {backend}:\n{result.stdout[-12000:]}\n{result.stderr[-3000:]}"
    assert " passed" in result.stdout and " failed" not in result.stdout


LOAD_AND_PREDICT = """
import sys, json, numpy as np, keras
x = np.load(sys.argv[1])[:8]
out = {}
for path in sys.argv[2:]:
    model = keras.saving.load_model(path, compile=False)
    out[path] = np.asarray(model.predict(x, verbose=0), np.float64).tolist()
print(json.dumps(out))
"""


def test_recalibrated_files_load_and_predict_alike_in_every_backend(shared):
    models, output = shared
    files = sorted(str(path) for path in output.glob("cnn_*_recalibrated_on_*.keras"))
    assert len(files) == len(BACKENDS) ** 2, files  # every writer, recalibrated on every backend
    predictions = {}
    for backend in BACKENDS:
        result = run([sys.executable, "-c", LOAD_AND_PREDICT, str(models / "cnn_x.npy"), *files],
                     backend_env(backend), 600)
        assert result.returncode == 0, f"{backend} cannot load the recalibrated files:\n{result.stderr[-3000:]}"
        predictions[backend] = json.loads(result.stdout.strip().splitlines()[-1])
    for path in files:
        reference = np.array(predictions["tensorflow"][path])
        assert np.all(np.isfinite(reference))
        for backend in ("jax", "torch"):
            np.testing.assert_allclose(np.array(predictions[backend][path]), reference, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{path} on {backend}")


RUN_BESIDE_TENSORFLOW = """
import sys
from bninspect.probes import run_probe
report = run_probe(sys.argv[1], sys.argv[2], batch_size=16, progress=False)
print(report.layers[0].input.count[0] > 0, "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_with_tensorflow_installed_keras_backend_decides_and_tensorflow_is_not_imported(backend):
    """TensorFlow installed next to JAX or PyTorch, KERAS_BACKEND set to the other one: the probe
    runs there (before issue 27, a 79-line traceback on JAX and SIGSEGV on torch) without importing
    TensorFlow; so does the CLI."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    samples = ROOT / "sample_models"
    result = run([sys.executable, "-c", RUN_BESIDE_TENSORFLOW, str(samples / "cnn_trained.keras"),
                  str(samples / "cnn_data.npy")], env, 600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "False"]
    cli = run([sys.executable, "-m", "bninspect", "probe", str(samples / "cnn_trained.keras"), "--data",
               str(samples / "cnn_data.npy"), "--format", "json"], env, 600)
    assert cli.returncode in (0, 1) and "Traceback" not in cli.stderr, cli.stderr[-3000:]


CHECK_BESIDE_TENSORFLOW = """
import sys
import bninspect
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    findings = bninspect.check([sys.argv[1], sys.argv[2]], data=sys.argv[3], batch_size=16, unreadable="skip")
skipped = [str(w.message) for w in caught if "skipped" in str(w.message)]
print(" ".join(skipped))
print(len(skipped))
print("tensorflow" in sys.modules)
"""


def test_a_savedmodel_in_a_torch_run_is_one_error_and_tensorflow_stays_out():
    """One backend per process: a SavedModel needs TensorFlow to be read at all, so in a run on
    torch it is that file's one-line error, and the other files are checked on torch."""
    samples = ROOT / "sample_models"
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    result = run([sys.executable, "-c", CHECK_BESIDE_TENSORFLOW, str(samples / "cnn_trained_tf2_savedmodel"),
                  str(samples / "cnn_trained.keras"), str(samples / "cnn_data.npy")], env, 600)
    assert result.returncode == 0, result.stderr[-3000:]
    skipped, sources, tensorflow_imported = result.stdout.strip().splitlines()[-3:]
    assert "skipped" in skipped and "cnn_trained_tf2_savedmodel" in skipped
    assert "needs TensorFlow, and this run runs models on torch (one backend per process)" in skipped
    assert sources == "1" and tensorflow_imported == "False"  # the .keras file was checked on torch
    cli = run([sys.executable, "-m", "bninspect", "check", str(samples / "cnn_trained_tf2_savedmodel"),
               str(samples / "cnn_trained.keras"), "--data", str(samples / "cnn_data.npy"), "--format", "json"], env, 600)
    assert cli.returncode == 2, cli.stderr[-3000:]
    errors = {entry["path"].rsplit("/", 1)[-1]: entry["error"] for entry in json.loads(cli.stdout)["models"]}
    assert "one backend per process" in errors["cnn_trained_tf2_savedmodel"] and errors["cnn_trained.keras"] is None
