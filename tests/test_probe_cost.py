"""What keeps the probe near the cost of `predict` (issue 20), checked for correctness: the
summaries of a concatenation come from its parts, the gap runs through the pass's own trace, that
trace serves every batch size, and BN inputs are summarised in one pass unless one pass is not
precise enough. Speed itself is measured by benchmarks/bench_probe.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _probe(model, data, **options):
    from bninspect.probes import run_probe

    return run_probe(model, data, progress=False, thresholds={}, **options)


def _dense_block():
    """Two BN layers on growing channel-axis concatenations, DenseNet style."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((6, 6, 3))
    first = keras.layers.Conv2D(4, 3, padding="same", name="first")(inputs)
    second = keras.layers.Conv2D(5, 1, name="second")(inputs)
    joined = keras.layers.Concatenate(name="joined")([first, second])
    bn_a = keras.layers.BatchNormalization(name="bn_a")(joined)
    third = keras.layers.Conv2D(3, 1, name="third")(keras.layers.ReLU()(bn_a))
    grown = keras.layers.Concatenate(name="grown")([joined, third])
    bn_b = keras.layers.BatchNormalization(name="bn_b")(grown)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(bn_b))
    return keras.Model(inputs, outputs)


def test_bn_statistics_of_concatenations_equal_numpy():
    import keras

    model = _dense_block()
    x = np.random.default_rng(6).normal(3.0, 2.0, (70, 6, 6, 3)).astype(np.float32)
    report = _probe(model, x, batch_size=16)  # 70 = 4 x 16 + 6: an uneven last batch
    for name, concat in (("bn_a", "joined"), ("bn_b", "grown")):
        seen = keras.Model(model.input, model.get_layer(concat).output)(x).numpy().astype(np.float64)
        flat = seen.reshape(-1, seen.shape[-1])
        layer = report.layer(name)
        np.testing.assert_array_equal(layer.input.count, np.full(flat.shape[1], flat.shape[0]))
        np.testing.assert_allclose(layer.input.mean, flat.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.input.variance, flat.var(axis=0), rtol=1e-4)


def test_the_gap_through_the_switched_trace_equals_keras_on_batch_statistics():
    import keras

    model = _dense_block()
    x = np.random.default_rng(7).normal(0.0, 1.0, (96, 6, 6, 3)).astype(np.float32)
    report = _probe(model, x, batch_size=16)
    assert report.gap is not None and report.gap.batches == 2  # 32 samples (runner.GAP_SAMPLES) in batches of 16
    difference = reference = 0.0
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for start in range(0, 2 * 16, 16):
        batch = x[start:start + 16]
        inference = model(batch, training=False).numpy().astype(np.float64)
        with_batch_stats = clone(batch, training=True).numpy().astype(np.float64)  # no Dropout here
        difference += float(np.sum((with_batch_stats - inference) ** 2))
        reference += float(np.sum(inference ** 2))
    assert report.gap.relative_difference == pytest.approx(np.sqrt(difference / reference), rel=1e-3)


def _traced_steps(monkeypatch):
    """Every step the probe compiles, in order, as (its reduction's name, the tf.function)."""
    from bninspect.probes import runner
    from bninspect.probes.backends.tensorflow import TensorFlowAdapter

    traced = []
    reductions = []
    step_function = runner._step_function
    compile_step = TensorFlowAdapter.compile

    def recording_step_function(model, instrumentation, reduction, layout):
        reductions.append(reduction.value)
        return step_function(model, instrumentation, reduction, layout)

    def recording_compile(self, source, model, function, first, rows):
        step = compile_step(self, source, model, function, first, rows)
        traced.append((reductions[-1], step._function))
        return step

    monkeypatch.setattr(runner, "_step_function", recording_step_function)
    monkeypatch.setattr(TensorFlowAdapter, "compile", recording_compile)
    return traced


def test_one_trace_serves_every_batch_the_gap_and_the_single_samples(monkeypatch):
    traced = _traced_steps(monkeypatch)
    x = np.random.default_rng(8).normal(0.0, 1.0, (70, 6, 6, 3)).astype(np.float32)
    report = _probe(_dense_block(), x, batch_size=16)
    assert report.gap is not None and report.consistency is not None
    ((_, step),) = traced
    assert step.experimental_get_tracing_count() == 1


def _bn_on_the_input(channels_first: bool = False):
    import keras

    keras.utils.set_random_seed(9)
    inputs = keras.Input((3, 6, 6) if channels_first else (6, 6, 3))
    x = keras.layers.BatchNormalization(axis=1 if channels_first else -1, name="bn")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))


@pytest.mark.parametrize("offset, expected", [(30.0, ["one-pass"]), (1e4, ["one-pass", "two-pass"])])
def test_one_pass_summaries_are_redone_in_two_passes_where_they_would_lose_the_variance(monkeypatch, offset, expected):
    """|mean| = 30 std is inside the one-pass bound (mean^2 / variance 900 < 1,000); 1e4 std is not:
    float32 squares of values around 1e4 keep no digit of a variance of 1, so the batch is
    summarised again in two passes, and so is every later batch."""
    traced = _traced_steps(monkeypatch)
    rng = np.random.default_rng(10)
    x = rng.normal(0.0, 1.0, (80, 6, 6, 3)).astype(np.float32)
    x[..., 1] += offset
    report = _probe(_bn_on_the_input(), x, batch_size=16)
    assert [name for name, _ in traced] == expected
    flat = x.reshape(-1, 3).astype(np.float64)
    layer = report.layer("bn")
    np.testing.assert_allclose(layer.input.mean, flat.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(layer.input.variance, flat.var(axis=0), rtol=1e-4)


def test_channels_first_inputs_are_summarised_per_channel_as_numpy_does(monkeypatch):
    traced = _traced_steps(monkeypatch)
    x = np.random.default_rng(11).normal(5.0, 2.0, (40, 3, 6, 6)).astype(np.float32) * np.array([1, 10, 100]).reshape(1, 3, 1, 1)
    report = _probe(_bn_on_the_input(channels_first=True), x, batch_size=16)
    assert [name for name, _ in traced] == ["one-pass"]
    flat = np.moveaxis(x, 1, -1).reshape(-1, 3).astype(np.float64)
    layer = report.layer("bn")
    np.testing.assert_allclose(layer.input.mean, flat.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(layer.input.variance, flat.var(axis=0), rtol=1e-5)


def test_a_dense_head_far_from_zero_stays_one_pass_and_exact(monkeypatch):
    """(batch, channels) inputs are squared in float64: one pass loses nothing there, even for the
    Dense head after global pooling, whose features sit far from zero relative to their spread."""
    import keras

    traced = _traced_steps(monkeypatch)
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(keras.layers.BatchNormalization(name="bn")(inputs))
    x = np.random.default_rng(12).normal(0.0, 1.0, (80, 3)).astype(np.float32) + np.float32(1e4)
    report = _probe(keras.Model(inputs, outputs), x, batch_size=16)
    assert [name for name, _ in traced] == ["one-pass"]
    flat = x.astype(np.float64)
    np.testing.assert_allclose(report.layer("bn").input.mean, flat.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(report.layer("bn").input.variance, flat.var(axis=0), rtol=1e-6)
