"""`--build` and running models whose architecture is code, on real files (tests/code_models.py):
a Keras 3 subclassed `.keras` (its class from `--custom-objects`), KerasHub ResNet tasks as
`.keras` and preset, tf-keras subclassed SavedModels (which hold every config: nothing to build).

What building reads (configs, graph) is checked against the live models through Keras' own API;
the statistics against the file read without `--build`; probe and recalibrate results against
NumPy over each BN layer's input computed by Keras sub-models, and the recalibrated files by loading
them with Keras (`keras.saving.load_model`, `from_preset`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect.cli import app
from code_models import KERAS_NET_FILE, RESNET_STEPS, TF_KERAS_NET_FILE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TASK_KINDS = ("task_keras", "task_preset")


def _invoke(*args: str):
    return CliRunner().invoke(app, [*args])


def _document(*args: str) -> dict:
    result = _invoke(*args, "--format", "json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def _model(*args: str) -> dict:
    (model,) = _document("inspect", *args)["models"]
    assert model["error"] is None, model["error"]
    return model


def _codes(entry: dict) -> dict[str, list[dict]]:
    codes: dict[str, list[dict]] = {}
    for finding in entry["findings"]:
        codes.setdefault(finding["code"], []).append(finding)
    return codes


def _statistics(entry: dict) -> dict:
    """What the JSON says about each BN layer's arrays: these must not change with --build."""
    return {layer["path"]: {name: layer[name] for name in ("gamma", "beta", "moving_mean", "moving_variance")}
            for layer in entry["bn_layers"]}


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bninspect: error: "), result.output
    return lines[0]


def _digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


# --- --build on the static commands ---------------------------------------------------------------

def test_build_reads_the_subclassed_bn_config_from_the_users_class(subclassed_files):
    path = str(subclassed_files["keras"])
    static = _model(path)
    built = _model(path, "--build", "--custom-objects", str(KERAS_NET_FILE))
    assert "BN008" not in _codes(static) and static["built"] is False
    assert built["built"] is True and built["architecture"] == static["architecture"]
    (bn008,) = _codes(built)["BN008"]
    assert bn008["layer"] == "bn"
    import keras

    live = keras.saving.load_model(path, compile=False).bn  # the class is registered by the fixture
    (layer,) = built["bn_layers"]
    assert (layer["momentum"], layer["epsilon"], layer["axis"]) == (pytest.approx(live.momentum), live.epsilon, [-1])
    assert _statistics(built) == _statistics(static)
    # A subclassed model's call() is Python: the graph stays unknown, and BN015 says why.
    (bn015,) = _codes(built)["BN015"]
    assert "built with Keras" in bn015["message"] and "BN008" not in bn015["message"]


def test_build_refuses_the_users_class_without_custom_objects(subclassed_files):
    line = _one_error_line(_invoke("inspect", str(subclassed_files["keras"]), "--build"))
    assert "my_package>Net" in line and "--custom-objects" in line


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_build_gives_a_kerashub_task_its_momentum_and_graph(kind, kerashub_files):
    """The 8-step ResNet task at momentum 0.9: the file stores the steps, building the momentum,
    so BN018 runs; the task is a Functional subclass, so the graph rules run too (no BN015)."""
    case = kerashub_files["resnet"]
    static = _model(str(case[kind]))
    built = _model(str(case[kind]), "--build")
    assert built["built"] is True and built["training_steps"] == RESNET_STEPS
    assert {layer["momentum"] for layer in built["bn_layers"]} == case["momenta"] == {0.9}
    codes = _codes(built)
    assert "BN015" not in codes
    assert sorted(finding["layer"] for finding in codes["BN018"]) == sorted(case["expected"][kind])
    # The backbone is called without training=False: BN019, a graph rule, now runs.
    assert [finding["layer"] for finding in codes["BN019"]] == ["res_net_backbone"]
    assert _statistics(built) == _statistics(static)


def test_built_description_keeps_the_files_arrays(kerashub_files, subclassed_files):
    from bninspect import loaders
    from bninspect.checking import BuildOptions, inspect_path
    from bninspect.probes.loading import load_custom_objects

    cases = [(kerashub_files["resnet"]["task_preset"], BuildOptions()),
             (subclassed_files["keras"], BuildOptions(custom_objects=load_custom_objects(KERAS_NET_FILE)))]
    for path, options in cases:
        static = loaders.load(path)
        built = inspect_path(path, build=options).description
        assert [bn.path for bn in built.bn_layers] == [bn.path for bn in static.bn_layers]
        for before, after in zip(static.bn_layers, built.bn_layers):
            for name in ("gamma", "beta", "moving_mean", "moving_variance"):
                np.testing.assert_array_equal(getattr(after, name), getattr(before, name))
            assert after.locations == before.locations and after.has_config


def test_build_still_refuses_a_lambda_without_unsafe(tmp_path):
    """A graph whose BN layer sits inside a custom layer needs building for its config; the graph
    also holds a Lambda, which loading would run: refused until --unsafe."""
    import keras
    from subclassed_keras_net import BNBlock

    inputs = keras.Input((6,))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    outputs = keras.layers.Dense(1)(BNBlock(name="block")(x))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    base = (str(path), "--build", "--custom-objects", str(KERAS_NET_FILE))
    line = _one_error_line(_invoke("inspect", *base))
    assert "Lambda" in line and "--unsafe" in line
    built = _model(*base, "--unsafe")
    (layer,) = built["bn_layers"]
    assert layer["path"] == "block/bn" and layer["momentum"] == pytest.approx(0.2)
    assert [finding["layer"] for finding in _codes(built)["BN008"]] == ["block/bn"]


def test_build_from_the_config_and_the_flag_wins(kerashub_files, tmp_path):
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.bninspect]\nbuild = true\n")
    preset = str(kerashub_files["resnet"]["task_preset"])
    (entry,) = _document("check", preset, "--config", str(config))["models"]
    assert entry["built"] is True and "BN018" in _codes(entry)
    (entry,) = _document("check", preset, "--config", str(config), "--no-build")["models"]
    assert entry["built"] is False and "BN018" not in _codes(entry)


def test_report_with_build(kerashub_files, tmp_path):
    out = tmp_path / "report.html"
    result = _invoke("report", str(kerashub_files["resnet"]["task_keras"]), "--build", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "BN018" in out.read_text()


# --- --build on a file that already holds what building reads: nothing is built ---------------------

# fixture: (exit code of `check`, the finding that decides it). Net: BN008 (momentum 0.1), a
# warning; NestedNet: BN001 on its frozen head, an error.
COMPLETE_SAVEDMODELS = {"tf_keras_subclassed_savedmodel": (0, "BN008"), "tf_keras_nested_savedmodel": (1, "BN001")}


@pytest.fixture(params=sorted(COMPLETE_SAVEDMODELS))
def complete_savedmodel(request) -> tuple[Path, int, str, dict]:
    """(path, exit code of `check`, the finding deciding it, the live BN arrays by path) of a
    tf-keras subclassed SavedModel: every layer's config is in its metadata, and the metadata says
    the model is not a graph network (its call() is Python), so building could add nothing."""
    path, expected = request.getfixturevalue(request.param)
    return (path, *COMPLETE_SAVEDMODELS[request.param], expected)


def _no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def test_inspect_build_on_a_complete_subclassed_savedmodel_builds_nothing(complete_savedmodel):
    """No --custom-objects: the class is not needed, since nothing is loaded. The report is the
    one without --build, `built` stays false and a note says why nothing was built."""
    from bninspect.checking import BuildOptions, inspect_path

    path, _, code, expected = complete_savedmodel
    static = _model(str(path))
    built = _model(str(path), "--build")
    assert built["built"] is False and built["error"] is None
    assert built == static
    assert sorted(layer["path"] for layer in built["bn_layers"]) == sorted(expected)
    assert code in _codes(built)
    # BN015 no longer sends the user to --build, which cannot give a Python call() a graph.
    (bn015,) = _codes(built)["BN015"]
    assert "--build builds" not in bn015["hint"] and "--build cannot give it a graph" in bn015["hint"]

    text = _invoke("inspect", str(path), "--build")
    assert text.exit_code == 0, text.output
    _no_traceback(text)
    assert "bninspect: error" not in text.output and code in text.output

    description = inspect_path(path, build=BuildOptions()).description
    assert description.built is False
    assert any(note.startswith("--build: nothing to build") for note in description.notes), description.notes


def test_check_build_on_a_complete_subclassed_savedmodel_exits_on_its_findings(complete_savedmodel):
    path, exit_code, code, _ = complete_savedmodel
    for strict, expected_exit in (((), exit_code), (("--strict",), 1)):
        result = _invoke("check", str(path), "--build", *strict)
        assert result.exit_code == expected_exit, result.output
        _no_traceback(result)
        assert code in result.output and "0 unreadable" in result.output


def test_build_true_in_pyproject_checks_complete_savedmodels_and_still_builds_the_rest(
        tf_keras_subclassed_savedmodel, tf_keras_nested_savedmodel, subclassed_files, tmp_path):
    """`build = true` in the pyproject.toml of the working directory, as in a repository's CI: the
    two SavedModels are read as they are, the Keras 3 subclassed `.keras` next to them (whose file
    has no BN config) is still built with its class, and the check exits on the findings."""
    models = tmp_path / "models"
    models.mkdir()
    for fixture in (tf_keras_subclassed_savedmodel, tf_keras_nested_savedmodel):
        shutil.copytree(fixture[0], models / fixture[0].name)
    shutil.copy(subclassed_files["keras"], models / "net.keras")
    (tmp_path / "pyproject.toml").write_text("[tool.bninspect]\nbuild = true\n")
    result = subprocess.run([sys.executable, "-m", "bninspect", "check", "models", "--custom-objects",
                             str(KERAS_NET_FILE), "--format", "json"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1, result.stdout + result.stderr  # BN001 on the nested model's frozen head
    assert "Traceback" not in result.stderr and "bninspect: error" not in result.stderr, result.stderr
    entries = {Path(entry["path"]).name: entry for entry in json.loads(result.stdout)["models"]}
    assert set(entries) == {"net_savedmodel", "nested_savedmodel", "net.keras"}
    assert all(entry["error"] is None for entry in entries.values())
    assert entries["net_savedmodel"]["built"] is False and "BN008" in _codes(entries["net_savedmodel"])
    assert entries["nested_savedmodel"]["built"] is False and "BN001" in _codes(entries["nested_savedmodel"])
    # The .keras stores the class, not the BN config: only building gives BN008 its momentum.
    assert entries["net.keras"]["built"] is True
    assert [finding["layer"] for finding in _codes(entries["net.keras"])["BN008"]] == ["bn"]


# --- without --build nothing heavy is imported; without keras_hub one line ----------------------

def _cli_subprocess(*args: str, hide_keras_hub: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The CLI in a fresh interpreter; (result, heavy modules it imported). `hide_keras_hub`
    makes `import keras_hub` fail, as when it is not installed (None in sys.modules)."""
    code = ("import atexit, runpy, sys\n"
            + ("sys.modules['keras_hub'] = None\n" if hide_keras_hub else "")
            + "heavy = ('tensorflow', 'keras', 'keras_hub', 'tf_keras')\n"
            "atexit.register(lambda: print('HEAVY', [m for m in heavy if sys.modules.get(m)], file=sys.stderr))\n"
            "sys.argv = ['bninspect', *sys.argv[1:]]\n"
            "runpy.run_module('bninspect', run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=env)
    line = next(line for line in result.stderr.splitlines() if line.startswith("HEAVY"))
    return result, eval(line[len("HEAVY "):])  # a list literal printed above


def test_no_build_imports_no_framework_even_with_build_configured_off(kerashub_files, subclassed_files, tmp_path):
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.bninspect]\nbuild = false\n")
    paths = [str(kerashub_files["resnet"]["task_preset"]), str(subclassed_files["keras"])]
    result, heavy = _cli_subprocess("check", *paths, "--config", str(config), "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    assert heavy == []


@pytest.mark.parametrize("command", ("inspect --build", "probe --data"))
def test_a_kerashub_model_without_keras_hub_is_one_line(command, kerashub_files):
    case = kerashub_files["resnet"]
    verb, flag = command.split()
    args = [verb, str(case["task_preset"]), flag] + ([str(case["data"])] if flag == "--data" else [])
    result, _ = _cli_subprocess(*args, hide_keras_hub=True)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("bninspect: error:")]
    assert len(errors) == 1 and "pip install keras-hub" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


# --- the in-memory API on live code models ---------------------------------------------------------

def test_inspect_a_live_subclassed_model(subclassed_files):
    import keras

    import bninspect

    model = keras.saving.load_model(subclassed_files["keras"], compile=False)
    report = bninspect.inspect(model)
    (layer,) = report.description.bn_layers
    assert layer.has_config and layer.momentum == pytest.approx(0.1) and layer.axis == (-1,)
    codes = [finding.code for finding in report.findings]
    assert "BN008" in codes
    assert not any("weights-only" in finding.message for finding in report.findings)
    assert report.to_dict()["built"] is True


def test_inspect_a_live_kerashub_task(kerashub_files):
    import keras

    import bninspect

    task = keras.saving.load_model(kerashub_files["resnet"]["task_keras"], compile=False)
    report = bninspect.inspect(task)
    description = report.description
    assert description.has_config and description.architecture.registered_name == "keras_hub>ResNetImageClassifier"
    assert {bn.momentum for bn in description.bn_layers} == {0.9}
    assert description.layer("res_net_backbone/conv1_bn").inbound == ("res_net_backbone/conv1_conv",)
    codes = [finding.code for finding in report.findings]
    assert "BN015" not in codes and "BN019" in codes


# --- probe and recalibrate on code models ----------------------------------------------------------

def _keras_bn_inputs(model, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The input of each named BN layer of the Functional `model` on `x` (one row per value of a
    channel), computed by Keras sub-models from the model's input to the layer's input."""
    import keras

    found = {}
    for name in names:
        layer = model.get_layer(name)
        sub = keras.Model(model.inputs, layer.input)
        found[name] = np.asarray(sub.predict(x, verbose=0), np.float64).reshape(-1, layer.input.shape[-1])
    return found


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_probe_a_kerashub_task_matches_keras(kind, kerashub_files):
    import keras

    from bninspect.probes import run_probe

    case = kerashub_files["resnet"]
    x = np.load(case["data"])
    result = _invoke("probe", str(case[kind]), "--data", str(case["data"]), "--format", "json")
    assert result.exit_code in (0, 1), result.output
    (entry,) = json.loads(result.stdout)["models"]
    assert sorted(layer["path"] for layer in entry["probe"]["layers"]) == sorted(case["expected"][kind])
    assert {finding["code"] for finding in entry["findings"]} <= {"BN101", "BN102", "BN103", "BN104", "BN018"}

    report = run_probe(str(case[kind]), x, progress=False, thresholds={})
    task = keras.saving.load_model(case["task_keras"], compile=False)
    backbone = task.get_layer("res_net_backbone")
    # The backbone's input is the task's input (the preprocessor does not run in a call).
    expected = _keras_bn_inputs(backbone, [path.split("/", 1)[1] for path in case["expected"][kind]], x)
    for path, values in expected.items():
        layer = report.layer(f"res_net_backbone/{path}")
        np.testing.assert_allclose(layer.input.mean, values.mean(axis=0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.input.variance, values.var(axis=0), rtol=1e-3, atol=1e-6)


def test_probe_the_subclassed_models_match_numpy(subclassed_files, tf_keras_subclassed_savedmodel):
    import keras
    import tf_keras

    from subclassed_tf_keras_net import Net as TFKerasNet

    x = np.load(subclassed_files["data"])
    savedmodel, _ = tf_keras_subclassed_savedmodel
    cases = [(subclassed_files["keras"], KERAS_NET_FILE,
              keras.saving.load_model(subclassed_files["keras"], compile=False)),
             (savedmodel, TF_KERAS_NET_FILE,
              tf_keras.models.load_model(str(savedmodel), custom_objects={"Net": TFKerasNet}, compile=False))]
    for path, classes, live in cases:
        result = _invoke("probe", str(path), "--data", str(subclassed_files["data"]), "--custom-objects",
                         str(classes), "--format", "json")
        assert result.exit_code in (0, 1), result.output
        (entry,) = json.loads(result.stdout)["models"]
        (layer,) = entry["probe"]["layers"]
        bn_input = np.asarray(live.conv(x), np.float64).reshape(-1, 4)
        means, stds = bn_input.mean(axis=0), bn_input.std(axis=0)
        for key, values in (("mean", means), ("std", stds)):
            summary = layer["input"][key]
            np.testing.assert_allclose([summary["min"], summary["max"]], [values.min(), values.max()], rtol=1e-4,
                                       atol=1e-5, err_msg=f"{path} {key}")
        assert layer["input"]["values"] == bn_input.size


def test_probe_refuses_the_users_class_without_custom_objects(subclassed_files, tf_keras_subclassed_savedmodel):
    for path in (subclassed_files["keras"], tf_keras_subclassed_savedmodel[0]):
        line = _one_error_line(_invoke("probe", str(path), "--data", str(subclassed_files["data"])))
        assert "refused" in line and "--custom-objects" in line


def test_check_data_on_a_preset_directory(kerashub_files):
    case = kerashub_files["resnet"]
    (entry,) = _document("check", str(case["task_preset"]), "--data", str(case["data"]), "--build")["models"]
    assert entry["error"] is None and entry["built"] is True
    codes = _codes(entry)
    assert "BN018" in codes and len(entry["probe"]["layers"]) == len(case["expected"]["task_preset"])


def test_recalibrate_a_preset_writes_a_preset_from_preset_loads(kerashub_files, tmp_path):
    import keras_hub

    case = kerashub_files["resnet"]
    before = _digest(case["task_preset"])
    out = tmp_path / "recalibrated_preset"
    result = _invoke("recalibrate", str(case["task_preset"]), "--data", str(case["data"]), "-o", str(out),
                     "--batch-size", "8", "--format", "json")
    assert result.exit_code == 0, result.output
    assert _digest(case["task_preset"]) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in case["task_preset"].iterdir())

    task = keras_hub.models.ResNetImageClassifier.from_preset(str(out))
    original = keras_hub.models.ResNetImageClassifier.from_preset(str(case["task_preset"]))
    x = np.load(case["data"])
    conv1_bn = task.backbone.get_layer("conv1_bn")
    # The first BN layer gets exactly the mean and (population) variance of its input.
    (values,) = _keras_bn_inputs(original.backbone, ["conv1_bn"], x).values()
    np.testing.assert_allclose(conv1_bn.moving_mean.numpy(), values.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(conv1_bn.moving_variance.numpy(), values.var(axis=0), rtol=1e-4, atol=1e-6)
    recalibrated = {layer["path"]: layer for layer in json.loads(result.stdout)["recalibration"]["layers"]}
    assert set(recalibrated) == set(case["expected"]["task_preset"])
    for path, layer in recalibrated.items():
        live = task.backbone.get_layer(path.split("/", 1)[1])
        stats = layer["after"]["moving_mean"]
        assert live.moving_mean.numpy().min() == pytest.approx(stats["min"], rel=1e-5, abs=1e-6)
        assert live.moving_mean.numpy().max() == pytest.approx(stats["max"], rel=1e-5, abs=1e-6)
        # Everything but the moving statistics is the original's.
        np.testing.assert_array_equal(live.gamma.numpy(), original.backbone.get_layer(live.name).gamma.numpy())


def test_recalibrate_a_subclassed_keras_file_keras_loads(subclassed_files, tmp_path):
    import keras

    out = tmp_path / "net.keras"
    result = _invoke("recalibrate", str(subclassed_files["keras"]), "--data", str(subclassed_files["data"]),
                     "-o", str(out), "--custom-objects", str(KERAS_NET_FILE), "--batch-size", "8")
    assert result.exit_code == 0, result.output
    model = keras.saving.load_model(out, compile=False)  # with the class, registered by the fixture
    x = np.load(subclassed_files["data"])
    bn_input = np.asarray(model.conv(x), np.float64).reshape(-1, 4)
    np.testing.assert_allclose(model.bn.moving_mean.numpy(), bn_input.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.bn.moving_variance.numpy(), bn_input.var(axis=0), rtol=1e-4, atol=1e-6)
