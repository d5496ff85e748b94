"""`bninspect probe` / `run_probe` end to end, on small models really trained on synthetic data.

Every expected number is computed here independently of bninspect (sub-models, numpy, a clone of
the model with Dropout removed), never copied from an earlier run.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.slow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BATCH = 32


def color_data(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1], 16x16x3; the label is the brightest channel (a CNN learns it quickly)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (samples, 16, 16, 3)).astype(np.float32)
    x *= rng.uniform(0.3, 1.0, (samples, 1, 1, 3)).astype(np.float32)
    return x, x.mean(axis=(1, 2)).argmax(axis=1)


def _train(model, x, y, epochs: int) -> None:
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    # The tests below are about a model that learned something; make sure it did.
    assert history.history["accuracy"][-1] > 0.6


def _clean_model():
    import keras

    layers = keras.layers
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    block = keras.Sequential([keras.Input((8, 8, 8)), layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv"),
                              layers.BatchNormalization(momentum=0.9, name="bn"), layers.ReLU()], name="block")
    x = block(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="clean")


def _dropout_model():
    import keras

    layers = keras.layers
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(32, name="dense")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    x = layers.BatchNormalization(momentum=0.9, name="bn_after_dropout")(x)
    x = layers.ReLU()(x)
    outputs = layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="variance_shift")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(11)
    folder = tmp_path_factory.mktemp("probe")
    x_train, y_train = color_data(1024, seed=1)
    x_held, _ = color_data(256, seed=2)
    clean = _clean_model()
    _train(clean, x_train, y_train, epochs=5)
    clean.save(folder / "clean.keras")
    variance_shift = _dropout_model()
    _train(variance_shift, x_train, y_train, epochs=5)
    np.save(folder / "held.npy", x_held)
    np.save(folder / "held_255.npy", x_held * 255)
    return {"folder": folder, "clean": clean, "clean_path": folder / "clean.keras", "dropout": variance_shift,
            "x_held": x_held, "held": folder / "held.npy", "held_255": folder / "held_255.npy"}


def _probe(model, data, **options):
    from bninspect.probes import run_probe

    return run_probe(model, data, progress=False, thresholds={}, **options)


def _codes(report, code):
    return [finding for finding in report.findings if finding.code == code]


def _bn_paths_in_model_order(model) -> list[str]:
    """The BN layer paths of a model, walked through Keras' own `layers` lists."""
    import keras

    paths = []

    def walk(container, prefix):
        for layer in container.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                paths.append(prefix + layer.name)
            elif hasattr(layer, "layers"):
                walk(layer, prefix + layer.name + "/")

    walk(model, "")
    return paths


# --- BN101 -----------------------------------------------------------------------------------------

def test_training_distribution_shows_no_drift(work):
    report = _probe(work["clean_path"], work["held"])
    assert [layer.path for layer in report.layers] == _bn_paths_in_model_order(work["clean"]) == ["bn1", "block/bn"]
    assert all(layer.reached for layer in report.layers)
    assert _codes(report, "BN101") == []
    assert report.samples == 256 and report.batches == 8


def test_pixels_0_255_drift_at_the_first_bn_layer_and_rescale_fixes_it(work):
    report = _probe(work["clean_path"], work["held_255"])
    drift = _codes(report, "BN101")
    first_bn = _bn_paths_in_model_order(work["clean"])[0]
    assert drift and drift[0].layer == first_bn
    assert "first BN layer the data reaches" in drift[0].message
    assert "--rescale 1/255" in drift[0].hint
    rescaled = _probe(work["clean_path"], work["held_255"], rescale="1/255")
    assert _codes(rescaled, "BN101") == []


# --- BN103 -----------------------------------------------------------------------------------------

def test_nan_in_the_data_is_a_non_finite_activation_error(work):
    import keras

    model = work["clean"]
    x = work["x_held"].copy()
    x[5, 3, 3, 0] = np.nan
    conv = keras.Model(model.input, model.get_layer("conv1").output)(x).numpy()
    expected_bad = int((~np.isfinite(conv)).sum())
    assert expected_bad > 0
    report = _probe(model, x)
    (finding,) = [f for f in _codes(report, "BN103") if f.layer == "bn1"]
    assert finding.severity.value == "error"
    assert finding.message.startswith(f"{expected_bad} of {conv.size} input values")
    # The statistics leave the NaN out instead of becoming NaN.
    flat = conv.reshape(-1, conv.shape[-1])
    np.testing.assert_allclose(report.layer("bn1").input.mean, np.nanmean(flat.astype(np.float64), axis=0),
                               rtol=1e-5, atol=1e-6)


# --- statistics --------------------------------------------------------------------------------------

def test_nested_bn_statistics_equal_numpy_on_its_input(work):
    import keras

    model, x = work["clean"], work["x_held"]
    block = model.get_layer("block")
    before_block = keras.Model(model.input, model.get_layer("pool").output)(x)
    bn_input = block.get_layer("conv")(before_block).numpy().astype(np.float64)
    bn_output = block.get_layer("bn")(bn_input.astype(np.float32), training=False).numpy().astype(np.float64)
    layer = _probe(model, x, batch_size=48).layer("block/bn")  # 256 = 5 x 48 + 16: an uneven last batch
    flat_in = bn_input.reshape(-1, 8)
    np.testing.assert_array_equal(layer.input.count, np.full(8, flat_in.shape[0]))
    np.testing.assert_allclose(layer.input.mean, flat_in.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.input.variance, flat_in.var(axis=0), rtol=1e-4)
    flat_out = bn_output.reshape(-1, 8)
    np.testing.assert_allclose(layer.output.mean, flat_out.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.output.variance, flat_out.var(axis=0), rtol=1e-4)
    np.testing.assert_allclose(layer.moving_variance, block.get_layer("bn").moving_variance.numpy())


def test_bn_subclass_output_is_measured_not_derived(work):
    import keras

    class ShiftedBN(keras.layers.BatchNormalization):
        """Adds 1 after normalising: the stock inference map does not describe it."""

        def call(self, inputs, training=None, mask=None):
            return super().call(inputs, training=training, mask=mask) + 1.0

    inputs = keras.Input((5,))
    bn = ShiftedBN(name="shifted")
    model = keras.Model(inputs, keras.layers.Dense(2)(bn(inputs)))
    x = np.random.default_rng(3).normal(2.0, 3.0, (64, 5)).astype(np.float32)
    layer = _probe(model, x).layer("shifted")
    assert layer.output_measured
    expected = bn(x, training=False).numpy().astype(np.float64)
    np.testing.assert_allclose(layer.output.mean, expected.mean(axis=0), rtol=1e-5)


def test_a_shared_bn_layer_pools_everything_it_saw():
    import keras

    left, right = keras.Input((3,), name="left"), keras.Input((3,), name="right")
    shared = keras.layers.BatchNormalization(name="shared")
    model = keras.Model([left, right], keras.layers.Concatenate()([shared(left), shared(right)]))
    rng = np.random.default_rng(8)
    data = {"left": rng.normal(0, 1, (40, 3)).astype(np.float32), "right": rng.normal(5, 2, (40, 3)).astype(np.float32)}
    report = _probe(model, data, batch_size=16)
    (layer,) = report.layers
    both = np.concatenate([data["left"], data["right"]]).astype(np.float64)
    assert layer.calls == 2 * report.batches == 6
    np.testing.assert_array_equal(layer.input.count, np.full(3, 80))
    np.testing.assert_allclose(layer.input.mean, both.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(layer.input.variance, both.var(axis=0), rtol=1e-4)


def test_a_model_without_bn_layers_is_probed_without_findings():
    import keras

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    report = _probe(model, np.ones((10, 3), np.float32))
    assert report.layers == () and report.findings == ()
    assert report.consistency is not None and report.consistency.relative_difference == 0


# --- BN102 -----------------------------------------------------------------------------------------

def _batch_statistics_predictions(model, x):
    """Predictions with every BN on its batch statistics and Dropout off, via a clone of the model."""
    import keras

    def clone_layer(layer):
        if isinstance(layer, keras.layers.Dropout):
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone(x, training=True).numpy()


def test_dropout_before_bn_shows_the_measured_train_inference_gap(work):
    model, x = work["dropout"], work["x_held"]
    before = [weight.copy() for weight in model.get_weights()]
    report = _probe(model, x, batch_size=BATCH)
    difference = reference = 0.0
    for start in range(0, BATCH, BATCH):  # the gap's batches: 32 samples (runner.GAP_SAMPLES), one batch
        batch = x[start:start + BATCH]
        inference = model(batch, training=False).numpy().astype(np.float64)
        with_batch_stats = _batch_statistics_predictions(model, batch).astype(np.float64)
        difference += float(np.sum((with_batch_stats - inference) ** 2))
        reference += float(np.sum(inference ** 2))
    expected = np.sqrt(difference / reference)
    assert report.gap is not None and report.gap.batches == 1
    assert report.gap.relative_difference == pytest.approx(expected, rel=1e-3)
    gap_findings = [f for f in _codes(report, "BN102") if "batch statistics" in f.message]
    assert bool(gap_findings) == (expected > report.thresholds.train_inference_gap)
    assert expected > report.thresholds.train_inference_gap, "Dropout(0.5) before BN should shift the variance"
    assert f"{expected:.1%}" in gap_findings[0].message
    # Batch-statistics mode updated the moving statistics; run_probe put them back.
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_healthy_trained_models_get_no_train_inference_gap_warning(work):
    """Batch statistics of 32 samples are noisy: the predictions on them differ from the moving-
    statistics predictions by several percent even for a well-trained model (the sample CNN shows
    ~14%). With moving statistics that match the data, that gap is noise, and BN102 stays silent."""
    from pathlib import Path

    sample = Path(__file__).resolve().parent.parent / "sample_models"
    for model, data in ((work["clean_path"], work["held"]),
                        (sample / "cnn_trained.keras", sample / "cnn_data.npy")):
        report = _probe(model, data, batch_size=BATCH)
        assert report.gap is not None and report.gap.relative_difference > 0
        assert _codes(report, "BN101") == []
        assert _codes(report, "BN102") == [], [f.message for f in report.findings]


def test_a_layer_on_batch_statistics_at_inference_breaks_batch_consistency(work):
    import keras

    class AlwaysBatchStats(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            return super().call(inputs, training=True, mask=mask)

    inputs = keras.Input((4,))
    x = keras.layers.Dense(6)(inputs)
    x = AlwaysBatchStats(name="leaky")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    data = np.random.default_rng(4).normal(size=(64, 4)).astype(np.float32)
    before = [weight.copy() for weight in model.get_weights()]
    report = _probe(model, data)
    # The layer assigned its moving statistics on every call; run_probe restored them.
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    alone = model(data[:1], training=False).numpy()[0]
    in_batch = model(data[:BATCH], training=False).numpy()[0]
    assert np.max(np.abs(alone - in_batch)) > 1e-3
    assert report.consistency is not None and report.consistency.relative_difference > 1e-3
    assert any("predicted alone" in f.message for f in _codes(report, "BN102"))


def test_healthy_model_predicts_the_same_alone_and_in_a_batch(work):
    report = _probe(work["clean"], work["x_held"])
    assert report.consistency is not None
    assert report.consistency.relative_difference <= report.thresholds.batch_consistency
    assert not any("predicted alone" in f.message for f in _codes(report, "BN102"))


# --- formats and Keras versions ----------------------------------------------------------------

def test_tf_keras_h5_model_is_probed_with_tf_keras(work):
    import tf_keras

    tf_keras.utils.set_random_seed(5)
    layers = tf_keras.layers
    model = tf_keras.Sequential([tf_keras.Input((16, 16, 3)),
                                 layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1"),
                                 layers.BatchNormalization(momentum=0.9, name="bn1"), layers.ReLU(),
                                 layers.GlobalAveragePooling2D(), layers.Dense(3, activation="softmax")])
    x_train, y_train = color_data(1024, seed=1)
    _train(model, x_train, y_train, epochs=4)
    path = work["folder"] / "tf_keras.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    report = _probe(path, work["held"])
    assert report.keras.startswith("tf_keras ")
    conv = tf_keras.Model(model.input, model.get_layer("conv1").output)(work["x_held"]).numpy().astype(np.float64)
    layer = report.layer("bn1")
    np.testing.assert_allclose(layer.input.mean, conv.reshape(-1, 8).mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.input.variance, conv.reshape(-1, 8).var(axis=0), rtol=1e-4)
    assert _codes(report, "BN101") == []


# Files as Keras and tf-keras write them (the fixtures also hold files edited to test the static
# readers, which Keras itself cannot load).
KERAS_WRITTEN_CASES = ("keras3-keras", "keras3-keras-deflated", "keras3-legacy-h5", "keras3-weights-h5", "tf-keras-h5",
                       "tf-keras-weights-h5", "old-keras-naming-h5", "tf-keras-savedmodel")


def test_every_saved_format_is_probed_with_the_static_layer_paths(saved_bn_cases):
    from bninspect.probes.loading import ModelRefused

    x = np.random.default_rng(6).normal(size=(24, 6, 6, 3)).astype(np.float32)
    for case in (saved_bn_cases[case_id] for case_id in KERAS_WRITTEN_CASES):
        if not case.has_config:
            with pytest.raises(ModelRefused, match="weights-only"):
                _probe(case.path, x)
            continue
        report = _probe(case.path, x, batch_size=8)
        assert [layer.path for layer in report.layers] == [bn.path for bn in case.expected], case.case_id
        assert all(layer.reached for layer in report.layers), case.case_id
        by_path = {bn.path: bn for bn in case.expected}
        for layer in report.layers:
            np.testing.assert_allclose(layer.moving_mean, by_path[layer.path].arrays["moving_mean"].reshape(-1),
                                       rtol=1e-6, err_msg=case.case_id)


def test_image_directory_is_resized_and_rescaled(work, tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        tf.io.write_file(str(tmp_path / f"img_{index}.png"), tf.io.encode_png(image))
    from_directory = _probe(work["clean"], tmp_path, rescale="1/255", batch_size=2)
    resized = tf.image.resize(pixels.astype(np.float32), (16, 16)).numpy() / 255
    from_array = _probe(work["clean"], resized, batch_size=2)
    assert from_directory.samples == 5
    np.testing.assert_allclose(from_directory.layer("bn1").input.mean, from_array.layer("bn1").input.mean, rtol=1e-5)


# --- safety --------------------------------------------------------------------------------------

def _cli(*args):
    from typer.testing import CliRunner

    from bninspect.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_lambda_model_is_refused_without_unsafe_and_its_code_does_not_run(tmp_path):
    import keras

    marker = tmp_path / "lambda_ran"
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4)(inputs))
    # The path is a constant inside the code object: Keras 3 cannot restore a lambda's defaults.
    touch = eval(f"lambda t: [open({str(marker)!r}, 'w').close(), t][1]")
    x = keras.layers.Lambda(touch, name="touch")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.save(tmp_path / "lambda.keras")
    marker.unlink()
    np.save(tmp_path / "x.npy", np.ones((8, 4), np.float32))

    refused = _cli("probe", tmp_path / "lambda.keras", "--data", tmp_path / "x.npy")
    assert refused.exit_code == 2
    assert "Lambda" in refused.output and "--unsafe" in refused.output and "touch" in refused.output
    assert not marker.exists()

    allowed = _cli("probe", tmp_path / "lambda.keras", "--data", tmp_path / "x.npy", "--unsafe")
    assert allowed.exit_code in (0, 1), allowed.output
    assert marker.exists()  # the opt-in really does run the stored code: the refusal above mattered


CUSTOM_LAYER = '''
import keras


class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
'''


def test_custom_class_is_refused_by_name_until_custom_objects_provide_it(tmp_path):
    import keras

    namespace = {}
    exec(compile(CUSTOM_LAYER, "custom_layer", "exec"), namespace)
    inputs = keras.Input((4,))
    x = namespace["Scale"](name="scale")(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization(name="bn")(x)))
    model.save(tmp_path / "custom.keras")
    np.save(tmp_path / "x.npy", np.ones((8, 4), np.float32))

    refused = _cli("probe", tmp_path / "custom.keras", "--data", tmp_path / "x.npy")
    assert refused.exit_code == 2
    assert "Scale" in refused.output and "--custom-objects" in refused.output

    (tmp_path / "custom_objects.py").write_text(CUSTOM_LAYER)
    accepted = _cli("probe", tmp_path / "custom.keras", "--data", tmp_path / "x.npy",
                    "--custom-objects", tmp_path / "custom_objects.py", "--format", "json")
    assert accepted.exit_code == 0, accepted.output
    assert [layer["path"] for layer in json.loads(accepted.stdout)["models"][0]["probe"]["layers"]] == ["bn"]


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_json_document(work):
    result = _cli("probe", work["clean_path"], "--data", work["held"], "--format", "json", "--batch-size", "64")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema_version"] == 1
    (entry,) = document["models"]
    assert entry["path"] == str(work["clean_path"]) and entry["format"] == "keras-v3" and entry["error"] is None
    assert [layer["path"] for layer in entry["bn_layers"]] == ["bn1", "block/bn"]
    probe = entry["probe"]
    assert probe["samples"] == 256 and probe["batch_size"] == 64 and probe["batches"] == 4
    assert [layer["path"] for layer in probe["layers"]] == ["bn1", "block/bn"]
    assert all(layer["input"]["values"] == 256 * side * side * 8
               for layer, side in zip(probe["layers"], (16, 8)))
    assert all(finding["code"] != "BN101" for finding in entry["findings"])
    assert document["summary"]["errors"] == 0


def test_cli_exit_1_on_error_findings_and_text_table(work, tmp_path):
    x = work["x_held"].copy()
    x[0, 0, 0, 0] = np.inf
    np.save(tmp_path / "inf.npy", x)
    result = _cli("probe", work["clean_path"], "--data", tmp_path / "inf.npy", "--limit", "40")
    assert result.exit_code == 1, result.output
    assert "BN103" in result.stdout and "40 samples" in result.stdout
    assert "block/bn" in result.stdout


def test_cli_data_shape_mismatch_is_exit_2_naming_both_shapes(work, tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((10, 8, 16, 3), np.float32))
    result = _cli("probe", work["clean_path"], "--data", tmp_path / "wrong.npy")
    assert result.exit_code == 2
    assert "(8, 16, 3)" in result.output and "(None, 16, 16, 3)" in result.output
    assert "Traceback" not in result.output


def test_cli_unreadable_model_is_exit_2(tmp_path):
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 not really a zip")
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    result = _cli("probe", tmp_path / "broken.keras", "--data", tmp_path / "x.npy")
    assert result.exit_code == 2
    assert "broken.keras" in result.output and "Traceback" not in result.output
