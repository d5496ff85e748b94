"""Models whose architecture is code, read statically from real files: a Keras 3 subclassed model
with a registered class, KerasHub backbones and tasks (built offline from their classes with random
weights) as presets and `.keras` files, and a tf-keras subclassed SavedModel.

Every file is written here, fit a few steps where the test needs a step count; what bninspect
reads (architecture, BN layers, statistics, steps, findings) is compared with the live model
through Keras' own API and read back through the command line, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect.cli import app
from code_models import ARRAYS, RESNET_STEPS, SUBCLASSED_STEPS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _json(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def _only_model(*args: str) -> dict:
    (model,) = _json("inspect", *args)["models"]
    assert model["error"] is None, model["error"]
    return model


def _codes(model: dict) -> dict[str, list[dict]]:
    codes: dict[str, list[dict]] = {}
    for finding in model["findings"]:
        codes.setdefault(finding["code"], []).append(finding)
    return codes


def _assert_statistics(description, expected: dict[str, dict[str, np.ndarray]]) -> None:
    assert {bn.path for bn in description.bn_layers} == set(expected)
    for bn in description.bn_layers:
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(bn, name), expected[bn.path][name], err_msg=f"{bn.path} {name}")


# --- a Keras 3 subclassed model with a registered class --------------------------------------

@pytest.mark.parametrize("kind", ("keras", "weights"))
def test_subclassed_model_is_code_with_its_bn_layers_and_steps(kind, subclassed_files):
    from bninspect import loaders

    description = loaders.load(subclassed_files[kind])
    _assert_statistics(description, subclassed_files["expected"])
    assert description.training_steps == SUBCLASSED_STEPS
    model = _only_model(str(subclassed_files[kind]))
    assert model["training_steps"] == SUBCLASSED_STEPS
    assert len(model["bn_layers"]) == 1
    codes = _codes(model)
    if kind == "keras":
        assert model["architecture"] == {"kind": "code", "class": "my_package>Net", "library": None}
        (bn017,) = codes["BN017"]
        assert "my_package>Net" in bn017["message"] and bn017["layer"] is None
        # The .keras of a subclassed model holds the class's constructor arguments, not its layers'
        # configs: the momentum 0.1 is not in the file, so BN008 cannot run, and BN015 says so.
        (bn015,) = codes["BN015"]
        assert "architecture is code (class my_package>Net)" in bn015["message"]
        assert "BN008 pytorch-momentum" in bn015["message"]
        assert "weights-only" not in json.dumps(model)
    else:
        assert model["architecture"] == {"kind": "none", "class": None, "library": None}
        assert "BN017" not in codes
        assert "weights-only file" in codes["BN015"][0]["message"]
    assert "BN008" not in codes


def test_subclassed_header_names_the_class(subclassed_files):
    result = CliRunner().invoke(app, ["inspect", str(subclassed_files["keras"])])
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0]
    assert "code: my_package>Net" in header and f"{SUBCLASSED_STEPS} training steps" in header
    assert "weights only" not in result.output and "weights-only" not in result.output


# --- KerasHub backbones and tasks ----------------------------------------------------------

KINDS = ("task_keras", "task_preset", "backbone_preset")


@pytest.mark.parametrize("family", ("resnet", "densenet"))
@pytest.mark.parametrize("kind", KINDS)
def test_kerashub_models_are_read_statically(family, kind, kerashub_files):
    from bninspect import loaders

    case = kerashub_files[family]
    description = loaders.load(case[kind])
    _assert_statistics(description, case["expected"][kind])
    model = _only_model(str(case[kind]))
    assert len(model["bn_layers"]) == len(case["expected"][kind]) > 0
    assert model["format"] == ("keras-v3" if kind == "task_keras" else "kerashub-preset")
    assert model["path"] == str(case[kind])
    expected_class = case["backbone_class"] if kind == "backbone_preset" else case["task_class"]
    assert model["architecture"] == {"kind": "code", "class": expected_class, "library": "keras_hub"}
    assert model["keras_hub_version"] == (None if kind == "task_keras" else case["keras_hub_version"])
    # The backbone alone was saved without an optimizer; the task's steps are in its weights.
    assert model["training_steps"] == (None if kind == "backbone_preset" else case["steps"])
    codes = _codes(model)
    assert "BN017" not in codes  # keras_hub provides the classes
    assert any("needs keras_hub installed" in note for note in description.notes)
    assert "weights-only" not in json.dumps(model)


def test_bn_paths_of_a_task_preset_and_its_keras_file_are_the_same(kerashub_files):
    from bninspect import loaders

    for case in kerashub_files.values():
        preset = [bn.path for bn in loaders.load(case["task_preset"]).bn_layers]
        keras_file = [bn.path for bn in loaders.load(case["task_keras"]).bn_layers]
        assert preset == keras_file


def test_unconverged_statistics_need_the_momentum_the_file_does_not_hold(kerashub_files):
    """The 8-step ResNet task still holds 0.9 ** 8 = 43% of the initial statistics (BN018's
    case), but a KerasHub config is the class's constructor arguments: the BN momentum is not in
    the file. BN018 is skipped and BN015 says so, instead of guessing the momentum."""
    case = kerashub_files["resnet"]
    assert case["momenta"] == {0.9}
    for kind in ("task_keras", "task_preset"):
        model = _only_model(str(case[kind]))
        codes = _codes(model)
        assert model["training_steps"] == RESNET_STEPS
        assert {layer["momentum"] for layer in model["bn_layers"]} == {None}
        assert "BN018" not in codes
        (bn015,) = codes["BN015"]
        assert "BN018 unconverged-moving-stats" in bn015["message"]
        assert "the graph and the layer configs are not in the file" in bn015["message"]
        assert "keras_hub>ResNetImageClassifier" in bn015["hint"]


def test_check_directory_lists_each_preset_once(kerashub_files):
    root = kerashub_files["resnet"]["directory"].parent
    document = _json("check", str(root))
    paths = sorted(model["path"] for model in document["models"])
    expected = sorted(str(case[kind]) for case in kerashub_files.values() for kind in KINDS)
    assert paths == expected
    assert not any(path.endswith(".weights.h5") for path in paths)
    assert document["summary"]["unreadable"] == 0


def test_kerashub_header_shows_versions_and_class(kerashub_files):
    case = kerashub_files["resnet"]
    result = CliRunner().invoke(app, ["inspect", str(case["task_preset"])])
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0]
    assert "kerashub-preset" in header and f"KerasHub {case['keras_hub_version']}" in header
    assert "code: keras_hub>ResNetImageClassifier" in header and f"{RESNET_STEPS} training steps" in header
    result = CliRunner().invoke(app, ["check", str(case["task_preset"])])
    assert "code: keras_hub>ResNetImageClassifier" in result.output and "weights-only" not in result.output


def test_html_report_header_names_the_architecture(kerashub_files, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(kerashub_files["resnet"]["task_preset"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "code: keras_hub&gt;ResNetImageClassifier" in page and "KerasHub version" in page


# --- static reading imports no TensorFlow, Keras or keras_hub --------------------------------

HEAVY_MODULES = ("tensorflow", "keras", "keras_hub", "tf_keras")


def _heavy_modules_after_cli(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    code = ("import atexit, runpy, sys\n"
            f"heavy = {HEAVY_MODULES!r}\n"
            "atexit.register(lambda: print('HEAVY', [m for m in heavy if m in sys.modules], file=sys.stderr))\n"
            "sys.argv = ['bninspect', *sys.argv[1:]]\n"
            "runpy.run_module('bninspect', run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=env)
    line = next(line for line in result.stderr.splitlines() if line.startswith("HEAVY"))
    return result, eval(line[len("HEAVY "):])  # a list literal printed above


@pytest.mark.parametrize("command", ("inspect", "check"))
def test_static_commands_on_code_architectures_import_no_framework(command, kerashub_files, subclassed_files,
                                                                   tiny_cnn_files):
    case = kerashub_files["resnet"]
    paths = [str(case["task_keras"]), str(case["task_preset"]), str(case["backbone_preset"]),
             str(subclassed_files["keras"]), str(tiny_cnn_files["trained_h5"])]
    result, heavy = _heavy_modules_after_cli(command, *paths, "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    assert len(json.loads(result.stdout)["models"]) == len(paths)
    assert heavy == []


# --- a tf-keras subclassed SavedModel ----------------------------------------------------------

def test_tf_keras_subclassed_savedmodel_runs_the_per_layer_rules(tf_keras_subclassed_savedmodel):
    """The SavedModel's Keras metadata holds every layer's own config but no graph: BN008 runs on
    the BN layer's momentum 0.1, the graph rules are skipped and BN015 names only those."""
    from bninspect import loaders

    path, expected = tf_keras_subclassed_savedmodel
    _assert_statistics(loaders.load(path), expected)
    model = _only_model(str(path))
    assert model["architecture"]["kind"] == "code" and model["architecture"]["class"].endswith("Net")
    assert model["training_steps"] == SUBCLASSED_STEPS
    assert model["bn_layers"][0]["momentum"] == pytest.approx(0.1)
    codes = _codes(model)
    assert [finding["layer"] for finding in codes["BN008"]] == ["bn"]
    assert "BN017" in codes  # the class is the user's
    (bn015,) = codes["BN015"]
    assert "the graph is not in the file" in bn015["message"]
    assert "BN009 axis-mismatch" in bn015["message"] and "BN008" not in bn015["message"]
