"""BNMonitor (issue 28) on this process's backend: tests/test_monitor.py's conditions, each caused
with `fit`, run again here by the backend matrix on TensorFlow, JAX and PyTorch. TensorBoard
summaries need tf.summary: on another backend the monitor warns once and keeps its numbers in
History, which the last test checks."""

from __future__ import annotations

import test_monitor
from test_monitor import (_fit, _conv_bn, _no_project_config,  # noqa: F401 (the autouse fixture applies here)
                          test_base_called_with_training_false_still_moves_in_keras_3_15,
                          test_base_called_without_training_false_trains_and_is_not_reported,
                          test_collapsing_variance_of_a_constant_input_is_caught_at_the_epoch_end_it_appears,
                          test_frozen_bn_runs_in_inference_mode_and_does_not_move,
                          test_healthy_run_has_no_finding_and_logs_the_lowest_variance,
                          test_ignore_drops_the_codes_like_the_cli,
                          test_nan_from_one_data_batch_is_caught_at_its_step,
                          test_on_finding_raise_raises_with_the_finding,
                          test_on_finding_stop_ends_fit_early_with_the_finding_as_reason,
                          test_pytorch_momentum_is_reported_once_at_train_begin,
                          test_report_renders_with_the_json_reporter,
                          test_short_run_reports_unconverged_statistics_at_train_end,
                          test_statistics_that_never_move_in_training_are_reported,
                          test_validation_data_from_another_distribution_drifts_and_the_same_does_not,
                          test_watching_does_not_change_training)

import bninspect


def test_log_dir_on_this_backend(backend, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    monitor = bninspect.BNMonitor(every_n_steps=2, log_dir=tmp_path / "tb")
    history, warned = _fit(_conv_bn(), monitor)
    assert history.history["bn/moving_variance_min"], history.history
    if backend == "tensorflow":
        assert any((tmp_path / "tb").iterdir())
        return
    log_warnings = [message for message in warned if "log_dir" in message]
    assert len(log_warnings) == 1 and f"not {backend}" in log_warnings[0]
    assert not (tmp_path / "tb").exists()


assert test_monitor.SAMPLES == 32  # the conditions' steps are counted in its 4-step epochs
