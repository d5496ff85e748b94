"""BN017 says which kind of code a model needs, on real files read without their classes.

Code the file STORES (a Lambda's bytecode) runs when Keras loads the model; a class the file only
NAMES holds no code, and Keras fails ("Unknown layer") whatever safe_mode is until the class is
supplied. The tf-keras `.h5` here is laid out as Keras 2.1-2.2 and tf.keras 2.x wrote them: one
custom class registered when it was saved (`my_package>Scale`), one never registered (`Plain`,
as old files name their classes), and a Lambda. The tests also load the files with Keras, to
show that what the messages say is what Keras does.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bninspect.cli import app

pytestmark = pytest.mark.slow

STORED = ("a Lambda layer with Python bytecode stored in the file: loading the model with Keras runs that code "
          "(Keras 3 refuses it unless safe_mode=False; tf.keras and Keras 2 run it from an .h5 without asking)")
STORED_HINT = ("replace stored code with built-in layers (a Lambda dividing by 255: Rescaling(1 / 255)) or a "
               "registered class; load the file only if you trust it (safe_mode=False; bninspect: --unsafe)")
NAMED_HINT = ("to load the model, supply the class (custom_objects, or import the module that registers it; "
              "bninspect: --custom-objects FILE.py); safe_mode changes nothing")


def named(what: str) -> str:
    return (f"{what}, only named in the file (no code): loading the model with Keras fails until the definition "
            f"is supplied (custom_objects), whatever safe_mode; no code from the file runs")


@pytest.fixture(scope="module")
def tf_keras_file(tmp_path_factory):
    """The `.h5`, written while `my_package>Scale` is registered and read after it no longer is."""
    import tf_keras

    @tf_keras.saving.register_keras_serializable(package="my_package")
    class Scale(tf_keras.layers.Layer):  # the config names it "my_package>Scale"
        def call(self, inputs):
            return inputs * 2.0

    class Plain(tf_keras.layers.Layer):  # never registered: the config names it "Plain"
        def call(self, inputs):
            return inputs + 1.0

    layers = tf_keras.layers
    inputs = tf_keras.Input((8, 8, 3))
    x = layers.Lambda(lambda t: t / 255.0, name="rescale")(inputs)
    x = layers.Conv2D(4, 3, use_bias=False, name="conv")(x)
    x = Scale(name="scale1")(x)
    x = layers.BatchNormalization(name="bn1")(x)
    x = Scale(name="scale2")(x)
    x = Plain(name="plain")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    outputs = layers.Dense(1, name="out")(layers.GlobalAveragePooling2D()(x))
    path = tmp_path_factory.mktemp("code_in_model") / "custom_tf2.h5"
    tf_keras.Model(inputs, outputs).save(path)
    registry = tf_keras.saving.get_custom_objects()
    saved = registry.pop("my_package>Scale")
    yield str(path)
    registry["my_package>Scale"] = saved


def _findings(path: str) -> dict[str, dict]:
    result = CliRunner().invoke(app, ["check", path, "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    (entry,) = json.loads(result.stdout)["models"]
    return {finding["layer"]: finding for finding in entry["findings"] if finding["code"] == "BN017"}


def test_the_lambda_is_stored_code_and_the_classes_are_only_named(tf_keras_file):
    findings = _findings(tf_keras_file)
    assert sorted(findings) == ["plain", "rescale", "scale1", "scale2"]
    assert findings["rescale"]["message"] == STORED
    assert findings["rescale"]["hint"] == STORED_HINT
    for layer, class_name in (("scale1", "my_package>Scale"), ("scale2", "my_package>Scale"), ("plain", "Plain")):
        assert findings[layer]["message"] == named(f"custom class {class_name}")
        assert findings[layer]["hint"] == NAMED_HINT
        assert findings[layer]["severity"] == "info"


def test_keras_does_what_the_messages_say(tf_keras_file, tmp_path):
    import keras
    import tf_keras

    for safe_mode in (True, False):
        with pytest.raises(ValueError, match="Unknown layer: 'my_package>Scale'"):
            tf_keras.models.load_model(tf_keras_file, safe_mode=safe_mode)
    inputs = tf_keras.Input((4,))
    outputs = tf_keras.layers.Lambda(lambda t: t / 255.0, name="rescale")(inputs)
    lambda_only = str(tmp_path / "lambda_tf2.h5")
    tf_keras.Model(inputs, outputs).save(lambda_only)
    tf_keras.models.load_model(lambda_only)  # tf.keras runs an .h5's Lambda without asking
    with pytest.raises(ValueError, match="safe_mode"):
        keras.models.load_model(lambda_only, compile=False)
    assert keras.models.load_model(lambda_only, compile=False, safe_mode=False) is not None


def test_check_groups_each_kind_under_its_own_hint(tf_keras_file):
    result = CliRunner().invoke(app, ["check", tf_keras_file])
    lines = result.stdout.splitlines()
    heads = [index for index, line in enumerate(lines) if line.startswith("  BN017 ")]
    assert len(heads) == 2
    lambda_head, classes_head = heads
    assert lines[lambda_head] == f"  BN017 info    rescale: {STORED}"
    assert lines[lambda_head + 1] == f"        code-in-model; hint: {STORED_HINT}"
    assert lines[classes_head] == "  BN017 info    3 layers: scale1, scale2, plain"
    assert lines[classes_head + 2] == f"        code-in-model; hint: {NAMED_HINT}"


def test_keras3_lambdas_of_a_lambda_and_of_a_named_function(tmp_path):
    """Keras 3 stores a Python lambda as bytecode (`__lambda__`), but a named function by its name:
    loading needs the function supplied, and then runs in safe mode."""
    import keras

    def double(tensor):
        return tensor * 2

    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t / 255.0, name="anonymous"),
                              keras.layers.Lambda(double, name="named"), keras.layers.BatchNormalization(name="bn")])
    path = str(tmp_path / "lambdas.keras")
    model.save(path)
    findings = _findings(path)
    assert findings["anonymous"]["message"] == STORED
    assert findings["named"]["message"] == named("custom object double in its config")
    assert findings["named"]["hint"] == NAMED_HINT
    with pytest.raises(ValueError, match="safe_mode"):
        keras.models.load_model(path, custom_objects={"double": double})
    anonymous_removed = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(double, name="named")])
    anonymous_removed.save(tmp_path / "named.keras")
    assert keras.models.load_model(tmp_path / "named.keras", custom_objects={"double": double}) is not None
