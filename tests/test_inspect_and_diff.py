"""`bninspect MODEL` / `inspect` and `diff` end to end, on files written by Keras 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bninspect", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def _model(extra_bn: bool = False):
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input((8, 8, 3), name="img")
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    inner = keras.Sequential([keras.Input((8, 8, 6)), keras.layers.Conv2D(5, 1, name="c"),
                              keras.layers.BatchNormalization(name="bn")], name="block")
    x = inner(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if extra_bn:
        x = keras.layers.BatchNormalization(name="bn_extra")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs, name="net")
    rng = np.random.default_rng(3)
    for layer in (model.get_layer("bn1"), inner.get_layer("bn")):
        gamma, beta, mean, _ = layer.get_weights()
        layer.set_weights([rng.normal(1, 0.2, gamma.shape), rng.normal(0, 0.1, beta.shape),
                           rng.normal(0, 0.5, mean.shape), rng.uniform(0.2, 2.0, mean.shape)])
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    folder = tmp_path_factory.mktemp("inspect")
    model = _model()
    paths = {"keras": folder / "net.keras", "h5": folder / "net.h5"}
    model.save(paths["keras"])
    model.save(paths["h5"])
    expected = {"bn1": model.get_layer("bn1").get_weights(),
                "block/bn": model.get_layer("block").get_layer("bn").get_weights()}
    changed = _model()
    bn = changed.get_layer("bn1")
    weights = bn.get_weights()
    weights[2] = weights[2] + 0.25
    bn.set_weights(weights)
    paths["changed"] = folder / "changed.keras"
    changed.save(paths["changed"])
    paths["extra"] = folder / "extra.keras"
    _model(extra_bn=True).save(paths["extra"])
    return paths, expected


def test_json_holds_every_bn_layer_with_its_statistics(saved):
    paths, expected = saved
    result = run_cli(str(paths["keras"]), "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema_version"] == 1
    model = document["models"][0]
    assert model["format"] == "keras-v3" and model["error"] is None
    layers = {layer["path"]: layer for layer in model["bn_layers"]}
    assert set(layers) == set(expected)
    for path, (gamma, beta, mean, variance) in expected.items():
        for name, values in (("gamma", gamma), ("beta", beta), ("moving_mean", mean), ("moving_variance", variance)):
            assert layers[path][name]["min"] == pytest.approx(float(values.min()), rel=1e-6)
            assert layers[path][name]["max"] == pytest.approx(float(values.max()), rel=1e-6)
        assert layers[path]["channels"] == gamma.size
        assert layers[path]["axis"] == [-1]


def test_bare_model_argument_is_the_inspect_command(saved):
    paths, _ = saved
    bare = run_cli(str(paths["h5"]))
    explicit = run_cli("inspect", str(paths["h5"]))
    assert bare.returncode == explicit.returncode == 0
    assert bare.stdout == explicit.stdout
    assert "block/bn" in bare.stdout and "h5-legacy" in bare.stdout
    # Not a terminal: no colour codes.
    assert "\x1b[" not in bare.stdout


def test_layer_pattern_shows_each_channel(saved):
    paths, expected = saved
    result = run_cli(str(paths["keras"]), "--layer", "block/*")
    assert result.returncode == 0, result.stderr
    channels = expected["block/bn"][0].size
    rows = [line for line in result.stdout.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert len(rows) == channels
    missing = run_cli(str(paths["keras"]), "--layer", "nothing*")
    assert missing.returncode == 2 and "nothing*" in missing.stderr


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"hello, not a model", "not an HDF5 file"),
    (b"PK\x03\x04 broken zip", "zip"),
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 40, "HDF5"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, content, reason):
    path = tmp_path / "bad.h5"
    path.write_bytes(content)
    result = run_cli(str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and reason in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "empty.keras"
    path.write_bytes(b"")
    result = run_cli(str(path), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_diff_same_weights_in_two_formats_is_unchanged(saved):
    paths, expected = saved
    result = run_cli("diff", str(paths["keras"]), str(paths["h5"]), "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert {layer["path"]: layer["status"] for layer in document["layers"]} == {path: "unchanged" for path in expected}


def test_diff_reports_what_moved_and_by_how_much(saved):
    paths, _ = saved
    document = json.loads(run_cli("diff", str(paths["keras"]), str(paths["changed"]), "--format", "json").stdout)
    layers = {layer["path"]: layer for layer in document["layers"]}
    assert layers["bn1"]["status"] == "changed"
    assert layers["bn1"]["moving_mean"]["max_abs_change"] == pytest.approx(0.25, rel=1e-5)
    assert layers["bn1"]["gamma"]["max_abs_change"] == 0
    assert layers["block/bn"]["status"] == "unchanged"
    text = run_cli("diff", str(paths["keras"]), str(paths["changed"]))
    assert text.returncode == 0 and "did not move at all: block/bn" in text.stdout


def test_diff_layers_on_one_side_only(saved):
    paths, _ = saved
    document = json.loads(run_cli("diff", str(paths["keras"]), str(paths["extra"]), "--format", "json").stdout)
    statuses = {layer["path"]: layer["status"] for layer in document["layers"]}
    assert statuses["bn_extra"] == "only_in_b"
    reverse = json.loads(run_cli("diff", str(paths["extra"]), str(paths["keras"]), "--format", "json").stdout)
    assert {layer["path"]: layer["status"] for layer in reverse["layers"]}["bn_extra"] == "only_in_a"


def test_diff_unreadable_input_exits_2(saved, tmp_path):
    paths, _ = saved
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04")
    result = run_cli("diff", str(paths["keras"]), str(broken))
    assert result.returncode == 2 and str(broken) in result.stderr and "Traceback" not in result.stderr


def test_version_and_help_do_not_import_tensorflow():
    code = ("import sys\nfrom bninspect.cli import main\n"
            "for args in (['--version'], ['--help'], ['inspect', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'h5py') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["inspect", "check", "probe", "rules", "explain", "recalibrate", "diff"])
def test_every_command_has_version(command):
    from typer.testing import CliRunner

    from bninspect import __version__
    from bninspect.cli import app

    result = CliRunner().invoke(app, [command, "--version"])
    assert result.exit_code == 0
    assert result.output == f"bninspect {__version__}\n"


@pytest.mark.parametrize("untrained, trained", [("cnn_untrained.keras", "cnn_trained.keras"),
                                                ("cnn_untrained_tf2.h5", "cnn_trained.keras"),
                                                ("cnn_untrained.weights.h5", "cnn_trained_tf2_weights.h5")])
def test_diff_untrained_against_trained_reports_every_layer_changed(untrained, trained):
    samples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample_models")
    result = run_cli("diff", os.path.join(samples, untrained), os.path.join(samples, trained), "--format", "json")
    assert result.returncode == 0, result.stderr
    layers = json.loads(result.stdout)["layers"]
    assert [layer["path"] for layer in layers] == ["bn1", "bn2"]
    for layer in layers:
        assert layer["status"] == "changed"
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            assert 0 < layer[name]["max_rel_change"] <= 2, (layer["path"], name)
