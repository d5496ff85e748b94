"""`bninspect.BNMonitor`, the Keras 3 callback that watches BN while `fit` runs.

Every condition is caused for real with `fit` on tiny models (a Conv+BN of a few hundred
parameters, 4 steps an epoch). Here on TensorFlow; tests/backends/test_monitor_on_this_backend.py
runs the same tests on JAX and PyTorch (through tests/test_backend_matrix.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import bninspect

REPO = Path(__file__).resolve().parents[1]
SAMPLES, BATCH = 32, 8  # 4 steps an epoch


@pytest.fixture(autouse=True)
def _no_project_config(tmp_path, monkeypatch):
    # Run from an empty directory, so no pyproject.toml above the test changes the settings.
    monkeypatch.chdir(tmp_path)


def _run_python(code: str) -> str:
    """Run `code` in a fresh interpreter (nothing imported yet); its stdout."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_bnmonitor_does_not_import_a_backend():
    code = ("import sys, bninspect\n"
            "monitor_class = bninspect.BNMonitor\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras')))\n"
            "print('ok')\n")
    assert _run_python(code) == "ok"


def test_bad_options_are_refused_before_keras_is_imported():
    code = ("import sys, bninspect\n"
            "for options in ({'on_finding': 'explode'}, {'every_n_steps': 0}):\n"
            "    try:\n"
            "        bninspect.BNMonitor(**options)\n"
            "    except ValueError as error:\n"
            "        print(str(error).split(' ')[0])\n"
            "assert 'keras' not in sys.modules\n")
    assert _run_python(code).split() == ["on_finding", "every_n_steps"]


# --- tiny models -------------------------------------------------------------------------------

def _data(seed=0, nan_batch=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, (SAMPLES, 6, 6, 2)).astype("float32")
    y = rng.normal(size=(SAMPLES, 1)).astype("float32")
    if nan_batch is not None:
        x[nan_batch * BATCH] = np.nan  # one sample of that batch
    return x, y


def _conv_bn(name="net", momentum=0.6):
    # momentum 0.6: 8 steps leave 2% of the initial 0/1, so a healthy run is not BN018's short run
    import keras

    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=momentum, name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(x), name=name)


def _fine_tune(training=None, frozen=False):
    """A Functional model around a nested Conv+BN base, called with `training`."""
    import keras

    keras.utils.set_random_seed(0)
    base_inputs = keras.Input((6, 6, 2))
    convolved = keras.layers.Conv2D(4, 3, padding="same")(base_inputs)
    features = keras.layers.BatchNormalization(momentum=0.6, name="bn")(convolved)
    base = keras.Model(base_inputs, features, name="base")
    if frozen:
        base.get_layer("bn").trainable = False
    inputs = keras.Input((6, 6, 2))
    x = base(inputs) if training is None else base(inputs, training=training)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x), name="tuned")


def _fit(model, monitor, epochs=2, data=None, optimizer="sgd"):
    model.compile(optimizer, "mse")
    x, y = data if data is not None else _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[monitor])
    return history, [str(w.message) for w in caught if "BNMonitor" in str(w.message)]


def _layers(monitor, code):
    return [finding.layer for finding in monitor.findings if finding.code == code]


def _message(monitor, code, layer):
    """The message of the one finding of `code`, which must be on `layer`."""
    assert _layers(monitor, code) == [layer], monitor.findings
    return next(finding.message for finding in monitor.findings if finding.code == code)


def _codes(monitor):
    return sorted({(finding.code, finding.layer) for finding in monitor.findings})


# --- conditions caused with fit ------------------------------------------------------------------

@pytest.mark.slow
def test_healthy_run_has_no_finding_and_logs_the_lowest_variance():
    import keras

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor(every_n_steps=1, log_layers=True)
    history, warned = _fit(_conv_bn(), monitor)
    assert monitor.findings == [] and warned == []
    assert monitor.step == 8
    assert len(history.history["bn/moving_variance_min"]) == 2
    assert history.history["bn/bn/moving_variance_min"] == history.history["bn/moving_variance_min"]
    assert "bn/bn/moving_mean_abs_max" in history.history
    assert isinstance(monitor, keras.callbacks.Callback) and isinstance(monitor, bninspect.BNMonitor)


@pytest.mark.slow
def test_watching_does_not_change_training():
    """Same seed, same data: the weights after fit are the same with the monitor (every step, with
    validation runs at epoch ends) as without it."""
    import keras

    trained = []
    for callbacks in ([], [bninspect.BNMonitor(every_n_steps=1, validation_data=_data(seed=1)[0])]):
        keras.utils.set_random_seed(0)
        model = _conv_bn()
        model.compile("sgd", "mse")
        model.fit(*_data(), batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        trained.append(model.get_weights())
    for without, with_monitor in zip(*trained):
        np.testing.assert_array_equal(without, with_monitor)


@pytest.mark.slow
def test_pytorch_momentum_is_reported_once_at_train_begin():
    import keras

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor()
    _, warned = _fit(_conv_bn(momentum=0.1), monitor)
    assert _codes(monitor) == [("BN008", "bn")]
    assert len(warned) == 1 and "BN008" in warned[0]


@pytest.mark.slow
def test_nan_from_one_data_batch_is_caught_at_its_step():
    import keras

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor(every_n_steps=1)
    _fit(_conv_bn(), monitor, epochs=1, data=_data(nan_batch=2))  # the third batch: step 3
    assert "first seen at step 3)" in _message(monitor, "BN003", "bn")


@pytest.mark.slow
def test_collapsing_variance_of_a_constant_input_is_caught_at_the_epoch_end_it_appears():
    """One input feature is constant: its batch variance is 0, and at momentum 0.5 the moving
    variance halves every step, below epsilon (0.001) after 10 steps, i.e. at the third epoch end."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    x = keras.layers.BatchNormalization(momentum=0.5, name="bn")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(x), name="flat")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(SAMPLES, 3)).astype("float32")
    features[:, 0] = 5.0
    monitor = bninspect.BNMonitor()
    _fit(model, monitor, epochs=4, data=(features, rng.normal(size=(SAMPLES, 1)).astype("float32")))
    assert "first seen at step 12, checked at epoch ends)" in _message(monitor, "BN005", "bn")


@pytest.mark.slow
def test_on_finding_stop_ends_fit_early_with_the_finding_as_reason():
    import keras

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor(every_n_steps=1, on_finding="stop")
    history, _ = _fit(_conv_bn(), monitor, epochs=3, data=_data(nan_batch=1))
    assert len(history.history["loss"]) == 1  # of 3 epochs
    assert monitor.step == 2  # stopped after the NaN batch, the rest of the epoch not run
    assert monitor.stop_reason.code == "BN003"


@pytest.mark.slow
def test_on_finding_raise_raises_with_the_finding():
    import keras

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor(every_n_steps=2, on_finding="raise")
    with pytest.raises(bninspect.BNMonitorError, match="BN003") as raised:
        _fit(_conv_bn(), monitor, epochs=1, data=_data(nan_batch=0))
    assert raised.value.finding.code == "BN003"
    assert "first seen at step 2, checked every 2 steps)" in raised.value.finding.message


@pytest.mark.slow
def test_frozen_bn_runs_in_inference_mode_and_does_not_move():
    """Keras 3.15: a BN layer with trainable=False normalises with its moving statistics and
    `fit` leaves them alone, so there is nothing to report but BN013's info at train begin."""
    monitor = bninspect.BNMonitor()
    _fit(_fine_tune(frozen=True), monitor)
    assert _codes(monitor) == [("BN013", "base/bn")]


@pytest.mark.slow
def test_base_called_with_training_false_still_moves_in_keras_3_15():
    """keras-team/keras#23364: Keras 3 before 3.16 lets fit's training=True override the
    training=False recorded in a Functional graph, so the nested base's moving statistics change
    (measured with Keras 3.15.1). With a Keras that honours the argument they stay put and the
    monitor reports nothing."""
    import keras

    monitor = bninspect.BNMonitor()
    _fit(_fine_tune(training=False), monitor, epochs=1)
    version = tuple(int(part) for part in keras.__version__.split(".")[:2])
    if version < (3, 16):
        message = _message(monitor, "BN019", "base/bn")
        assert "keras-team/keras#23364" in message and "in the first 4 training steps" in message
    else:
        assert _layers(monitor, "BN019") == []


@pytest.mark.slow
def test_base_called_without_training_false_trains_and_is_not_reported():
    monitor = bninspect.BNMonitor()
    _fit(_fine_tune(), monitor)
    assert monitor.findings == []


@pytest.mark.slow
def test_statistics_that_never_move_in_training_are_reported():
    """A subclassed model whose call() always runs its BN with training=False: the layer is
    trainable, nothing in a graph says inference mode, and its statistics never move."""
    import keras

    class AlwaysInference(keras.Model):
        def __init__(self):
            super().__init__(name="always_inference")
            self.conv = keras.layers.Conv2D(4, 3, padding="same")
            self.bn = keras.layers.BatchNormalization(momentum=0.6, name="bn")
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.head = keras.layers.Dense(1)

        def call(self, inputs, training=None):
            return self.head(self.pool(self.bn(self.conv(inputs), training=False)))

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor(every_n_steps=2)
    _fit(AlwaysInference(), monitor)
    message = _message(monitor, "BN001", "bn")
    # TensorFlow builds a subclassed model in its first step, so the monitor starts at its first
    # check (step 2); JAX's fit builds it before training starts, so the monitor starts at step 0.
    assert "unchanged from step 2 to step 4" in message or "unchanged in the first 2 training steps" in message


@pytest.mark.slow
def test_short_run_reports_unconverged_statistics_at_train_end():
    import keras

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor(select=["BN018"])
    _fit(_conv_bn(momentum=0.99), monitor, epochs=1)  # 4 steps at momentum 0.99: 96% still the initial 0/1
    assert _codes(monitor) == [("BN018", "bn")]
    assert "after 4 training steps" in monitor.findings[0].message


@pytest.mark.slow
def test_ignore_drops_the_codes_like_the_cli():
    import keras

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor(ignore=["pytorch-momentum"])
    _fit(_conv_bn(momentum=0.1), monitor, epochs=1)
    assert monitor.findings == []


@pytest.mark.slow
def test_validation_data_from_another_distribution_drifts_and_the_same_does_not():
    import keras

    keras.utils.set_random_seed(0)
    same = bninspect.BNMonitor(validation_data=_data(seed=1)[0])
    _fit(_conv_bn(), same)
    assert _layers(same, "BN101") == []
    keras.utils.set_random_seed(0)
    shifted_inputs = _data(seed=1)[0] * 10.0 + 40.0
    shifted = bninspect.BNMonitor(validation_data=shifted_inputs, validation_samples=16)
    _fit(_conv_bn(), shifted)
    assert "(validation data, end of epoch 1, step 4)" in _message(shifted, "BN101", "bn")


@pytest.mark.slow
def test_log_dir_gets_tensorboard_summaries_of_every_layer(tmp_path):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor(every_n_steps=2, log_dir=tmp_path / "tb")
    history, _ = _fit(_conv_bn(), monitor)
    steps_by_tag: dict[str, set[int]] = {}
    last: dict[str, tuple] = {}
    for path in (tmp_path / "tb").iterdir():
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                steps_by_tag.setdefault(value.tag, set()).add(event.step)
                last[value.tag] = (value.metadata.plugin_data.plugin_name, tf.make_ndarray(value.tensor))
    plugin, lowest = last["bn/bn/moving_variance_min"]
    assert plugin == "scalars" and float(lowest) == pytest.approx(history.history["bn/moving_variance_min"][-1])
    plugin, buckets = last["bn/bn/moving_variance"]
    assert plugin == "histograms" and buckets.shape[1] == 3 and buckets[:, 2].sum() == 4  # 4 channels
    assert set(steps_by_tag) == {"bn/bn/moving_variance_min", "bn/bn/moving_mean_abs_max",
                                 "bn/bn/moving_mean", "bn/bn/moving_variance"}
    assert steps_by_tag["bn/bn/moving_variance_min"] == {2, 4, 6, 8}


@pytest.mark.slow
def test_report_renders_with_the_json_reporter():
    import keras

    from bninspect.reporters import json_report

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor(every_n_steps=1)
    _fit(_conv_bn(momentum=0.1), monitor, epochs=1, data=_data(nan_batch=1))
    document = json.loads(json_report.render([monitor.report]))
    model = document["models"][0]
    assert model["path"] == "<in-memory model 'net'>" and model["format"] == "in-memory"
    assert {finding["code"] for finding in model["findings"]} == {"BN008", "BN003"}
    assert [layer["path"] for layer in model["bn_layers"]] == ["bn"]
    assert model["bn_layers"][0]["moving_mean"]["non_finite"] > 0  # the arrays as last read
    assert "BN003" in monitor.report._repr_html_()  # the notebook view
