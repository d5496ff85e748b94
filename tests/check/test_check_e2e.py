"""End to end on files saved by Keras 3 and tf-keras: the rules find what each model has, and a
really trained healthy CNN passes in every format."""

from __future__ import annotations

import pytest

from bninspect.checking import inspect_path
from bninspect.findings import Severity
from bninspect.rules.catalogue import RULES

pytestmark = pytest.mark.slow

CONFIG_RULES = {rule.code for rule in RULES if rule.needs_config}


def _codes(path) -> dict[str, list]:
    report = inspect_path(path)
    codes: dict[str, list] = {}
    for finding in report.findings:
        codes.setdefault(finding.code, []).append(finding)
    return codes


@pytest.fixture(params=["keras3", "tf_keras"])
def files(request):
    return request.getfixturevalue(f"{request.param}_files")


@pytest.mark.parametrize("kind", ["trained_keras", "trained_h5"])
def test_trained_cnn_has_no_error_or_warning(files, kind):
    report = inspect_path(files[kind])
    assert len(report.bn_layers) == 2
    serious = [f for f in report.findings if f.severity in (Severity.ERROR, Severity.WARNING)]
    assert serious == [], serious
    assert report.findings == (), report.findings  # no bias before BN, no custom code: not even info
    # The statistics really moved away from their initial values.
    for layer in report.bn_layers:
        assert not ((layer.moving_mean == 0) & (layer.moving_variance == 1)).any()


def test_trained_weights_only_reports_bn015_and_no_graph_rules(files):
    report = inspect_path(files["trained_weights"])
    codes = {finding.code for finding in report.findings}
    assert codes == {"BN015"}, report.findings
    (bn015,) = report.findings
    assert bn015.layer is None and "BN009 axis-mismatch" in bn015.message


@pytest.mark.parametrize("kind", ["untrained_h5"])
def test_untrained_cnn_reports_bn001_on_every_bn_layer(files, kind):
    codes = _codes(files[kind])
    assert sorted(f.layer for f in codes["BN001"]) == ["bn1", "bn2"]
    assert all(f.severity is Severity.ERROR for f in codes["BN001"])


def test_untrained_keras3_archive_reports_bn001(keras3_files):
    assert len(_codes(keras3_files["untrained_keras"])["BN001"]) == 2


def test_bn_last_reports_bn010(files):
    codes = _codes(files["bn_last"])
    assert [f.layer for f in codes["BN010"]] == ["bn_out"]


def test_channels_first_with_default_axis_reports_bn009(files):
    codes = _codes(files["channels_first_wrong_axis"])
    assert sorted(f.layer for f in codes["BN009"]) == ["bn1", "bn2"]
    assert "channel axis 1" in codes["BN009"][0].message


def test_pytorch_momentum_reports_bn008(files):
    codes = _codes(files["pytorch_momentum"])
    assert sorted(f.layer for f in codes["BN008"]) == ["bn1", "bn2"]
    assert "momentum 0.1" in codes["BN008"][0].message


def test_dropout_before_bn_reports_bn012(files):
    codes = _codes(files["dropout_before_bn"])
    assert [f.layer for f in codes["BN012"]] == ["bn"]
    assert "drop (Dropout, rate 0.5)" in codes["BN012"][0].message


def test_untrained_weights_only_keras3_reports_bn001_without_graph_rules(keras3_files, tmp_path):
    import keras

    model = keras.models.load_model(keras3_files["untrained_keras"])
    path = tmp_path / "untrained.weights.h5"
    model.save_weights(path)
    codes = set(_codes(path))
    assert {"BN001", "BN015"} <= codes
    assert not codes & CONFIG_RULES


def test_lambda_layer_reports_bn017_only_for_the_lambda(files):
    codes = _codes(files["lambda"])
    assert [f.layer for f in codes["BN017"]] == ["double"]
    assert "Lambda" in codes["BN017"][0].message


def test_tf_keras_op_layers_are_not_custom_code(tmp_path):
    import tensorflow as tf
    import tf_keras

    inputs = tf_keras.Input((6,))
    x = tf_keras.layers.Dense(4, use_bias=False, name="dense")(inputs)
    x = tf.math.add(x, 1.0)
    x = x[:, :3]
    x = tf_keras.layers.BatchNormalization(name="bn")(x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="out")(x))
    path = tmp_path / "ops.h5"
    model.save(path)
    classes = {layer.class_name for layer in inspect_path(path).description.layers}
    assert {"TFOpLambda", "SlicingOpLambda"} <= classes
    assert "BN017" not in _codes(path)
