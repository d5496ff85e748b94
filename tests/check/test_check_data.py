"""`bninspect check MODEL... --data FILE`: the static rules and the dynamic analysis in one report,
in every output format, with the CI gate's exit codes (0 clean, 1 findings, 2 could not run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from bn_model_zoo import color_data
from check_model_files import run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_empty_directory")]

ROOT = Path(__file__).resolve().parents[2]




def _cnn(keras, name: str, with_lambda: bool = False):
    layers = keras.layers
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Lambda(lambda t: t * 2.0, name="double")(inputs) if with_lambda else inputs
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
    x = layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A CNN trained long enough for its moving statistics to fit [0, 1] images (.keras, .h5 and
    weights-only), the same architecture untrained and with a Lambda layer, and held-out data in
    the training scale (`held`), as pixels 0-255 (`held_255`) and in the wrong shape (`small`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    folder = tmp_path_factory.mktemp("check_data")
    keras.utils.set_random_seed(5)
    model = _cnn(keras, "cnn")
    x, y = color_data(512, seed=1)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    paths = {"trained_keras": folder / "trained.keras", "trained_h5": folder / "trained.h5",
             "weights": folder / "trained.weights.h5", "untrained": folder / "untrained.keras",
             "lambda": folder / "lambda.keras", "held": folder / "held.npy", "held_255": folder / "held_255.npy",
             "small": folder / "small.npy", "folder": folder}
    model.save(paths["trained_keras"])
    model.save(paths["trained_h5"])
    model.save_weights(paths["weights"])
    _cnn(keras, "untrained").save(paths["untrained"])
    _cnn(keras, "with_lambda", with_lambda=True).save(paths["lambda"])
    held, _ = color_data(96, seed=2)
    np.save(paths["held"], held)
    np.save(paths["held_255"], held * 255)
    np.save(paths["small"], np.zeros((8, 8, 8, 3), np.float32))
    return paths


def _codes(entry: dict) -> set[str]:
    return {finding["code"] for finding in entry["findings"]}


def test_sarif_reports_bn101_for_pixels_0_255_in_a_real_process(work, tmp_path):
    """The whole command in a fresh interpreter: TensorFlow's start-up chatter stays off the report."""
    out = tmp_path / "report.sarif"
    command = [sys.executable, "-m", "bninspect", "check", str(work["trained_keras"]), "--data", str(work["held_255"]),
               "--format", "sarif"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # BN101 is a warning: it fails only with --strict
    assert "Traceback" not in result.stderr
    sarif = json.loads(result.stdout)
    (sarif_run,) = sarif["runs"]
    drift = [item for item in sarif_run["results"] if item["ruleId"] == "BN101"]
    assert len(drift) == 1 and drift[0]["level"] == "warning"
    location = drift[0]["locations"][0]
    assert location["physicalLocation"]["artifactLocation"]["uri"].endswith("trained.keras")
    assert location["logicalLocations"][0]["name"] == "bn1"
    assert "1/255" in drift[0]["message"]["text"]
    assert sarif_run["invocations"][0]["executionSuccessful"] is True

    strict = subprocess.run(command + ["--strict", "--output", str(out)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert strict.returncode == 1, strict.stderr
    assert "BN101" in {item["ruleId"] for item in json.loads(out.read_text())["runs"][0]["results"]}


def test_data_in_the_training_scale_passes_clean(work):
    result = run("check", work["trained_keras"], work["trained_h5"], "--data", work["held"], "--strict",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [entry["findings"] for entry in document["models"]] == [[], []]
    for entry in document["models"]:
        assert entry["error"] is None and entry["probe"]["samples"] == 96
        assert [layer["path"] for layer in entry["probe"]["layers"]] == ["bn1"]
    text = run("check", work["trained_keras"], "--data", work["held"], "--strict")
    assert text.exit_code == 0 and "passed" in text.stdout


def test_rescale_undoes_the_wrong_scale(work):
    assert "BN101" in run("check", work["trained_keras"], "--data", work["held_255"], "--strict").stdout
    result = run("check", work["trained_keras"], "--data", work["held_255"], "--rescale", "1/255", "--strict")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("output_format", ["text", "json", "sarif", "junit", "github"])
def test_every_format_carries_the_dynamic_findings(work, output_format):
    result = run("check", work["trained_keras"], "--data", work["held_255"], "--strict", "--format", output_format)
    assert result.exit_code == 1, result.output
    out = result.stdout
    if output_format == "json":
        (entry,) = json.loads(out)["models"]
        assert "BN101" in _codes(entry) and entry["probe"]["layers"][0]["findings"]
        assert json.loads(out)["summary"]["warnings"] == len(entry["findings"])
    elif output_format == "sarif":
        assert "BN101" in {item["ruleId"] for item in json.loads(out)["runs"][0]["results"]}
    elif output_format == "junit":
        failure = ElementTree.fromstring(out).find("testsuite/testcase/failure")
        assert failure is not None and "BN101" in failure.get("type")
    elif output_format == "github":
        assert any(line.startswith("::warning file=") and "title=BN101" in line for line in out.splitlines())
    else:
        assert "BN101 warning" in out and "bn1" in out and "FAILED" in out


def test_static_and_dynamic_findings_share_one_report_and_exit_status(work):
    result = run("check", work["untrained"], work["trained_keras"], "--data", work["held"], "--format", "json",
                 "--batch-size", "16", "--limit", "48")
    assert result.exit_code == 1, result.output  # BN001 (static, error) on the untrained model
    untrained, trained = json.loads(result.stdout)["models"]
    assert "BN001" in _codes(untrained)
    assert any(code.startswith("BN1") for code in _codes(untrained)), untrained["findings"]  # and the probe's
    assert untrained["probe"]["samples"] == 48 and untrained["probe"]["batch_size"] == 16
    assert trained["findings"] == [] and trained["probe"]["batches"] == 3


def test_settings_apply_to_the_dynamic_findings(work):
    result = run("check", work["trained_keras"], "--data", work["held_255"], "--strict", "--select", "BN0")
    assert result.exit_code == 0, result.output
    Path("pyproject.toml").write_text('[tool.bninspect]\nstrict = true\n\n'
                                      '[tool.bninspect.per-layer-ignores]\n"bn*" = ["BN101"]\n\n'
                                      '[tool.bninspect.severity]\nBN102 = "info"\n')
    result = run("check", work["trained_keras"], "--data", work["held_255"], "--format", "json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["models"]
    assert "BN101" not in _codes(entry)
    assert {finding["severity"] for finding in entry["findings"]} <= {"info"}


def test_a_model_that_cannot_run_fails_with_exit_2_and_the_others_are_still_reported(work):
    result = run("check", work["lambda"], work["weights"], work["trained_keras"], "--data", work["held_255"],
                 "--format", "json")
    assert result.exit_code == 2, result.output
    lambda_entry, weights_entry, trained = json.loads(result.stdout)["models"]
    assert "Lambda" in lambda_entry["error"] and "--unsafe" in lambda_entry["error"]
    assert "weights-only" in weights_entry["error"]
    assert trained["error"] is None and "BN101" in _codes(trained)
    assert json.loads(result.stdout)["summary"]["unreadable"] == 2
    text = run("check", work["lambda"], "--data", work["held"])
    assert text.exit_code == 2 and "lambda.keras" in text.stdout and "Lambda" in text.stdout
    # Read but not run: its static findings are still listed, and it is not called unreadable.
    assert "BN001" in text.stdout and "BN017" in text.stdout
    assert "0 unreadable, 1 could not be run on the data" in text.stdout


def test_unsafe_lets_a_lambda_model_run(work):
    result = run("check", work["lambda"], "--data", work["held"], "--unsafe", "--format", "json")
    assert result.exit_code == 1, result.output  # untrained: BN001
    (entry,) = json.loads(result.stdout)["models"]
    assert entry["error"] is None and "BN001" in _codes(entry) and "BN017" in _codes(entry)
    assert entry["probe"]["layers"][0]["path"] == "bn1"


def test_data_that_does_not_fit_the_model_is_exit_2_without_traceback(work):
    result = run("check", work["trained_keras"], "--data", work["small"])
    assert result.exit_code == 2, result.output
    assert "cannot run on the data" in result.stdout and "small.npy" in result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("args, message", [
    (["{folder}", "--data", "{held}"], "not a directory to search"),
    (["{trained_keras}", "--data", "{folder}/missing.npy"], "no such file"),
    (["{trained_keras}", "--unsafe"], "only apply with --data"),
    (["{trained_keras}", "--limit", "5", "--rescale", "1/255"], "--limit, --rescale only apply with --data"),
    (["{trained_keras}", "--data", "{held}", "--rescale", "abc"], "--rescale 'abc'"),
])
def test_usage_errors_are_one_line_and_exit_2(work, args, message):
    result = run("check", *(arg.format(**work) for arg in args))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_help_documents_data(work):
    result = run("check", "--help")
    assert result.exit_code == 0
    for option in ("--data", "--batch-size", "--limit", "--rescale", "--unsafe", "--custom-objects"):
        assert option in result.output
