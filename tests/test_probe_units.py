"""The parts of the dynamic analysis that need no TensorFlow: streaming moments, data reading,
`--rescale`, thresholds, and the BN101-BN104 rules on hand-made statistics."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bninspect.commands.common import UsageProblem
from bninspect.data import DataError, InputSpec, open_data, parse_rescale
from bninspect.probes import rules
from bninspect.probes.moments import ChannelMoments, RunningMoments, merge
from bninspect.probes.results import ConsistencyMeasure, GapMeasure, LayerProbe
from bninspect.probes.thresholds import ProbeThresholds, ThresholdError, resolve

# --- streaming moments -------------------------------------------------------------------------

batch_shapes = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(sizes=batch_shapes, offset=st.sampled_from([0.0, 1.0, -300.0, 1e6]),
       scale=st.sampled_from([1e-3, 1.0, 50.0]), seed=st.integers(0, 2**32 - 1))
def test_chan_merge_of_batches_equals_numpy_on_the_concatenation(sizes, offset, scale, seed):
    rng = np.random.default_rng(seed)
    batches = [offset + scale * rng.standard_normal((size, 5, 3)) for size in sizes]
    running = RunningMoments(3)
    for batch in batches:
        running.add_values(batch, channel_axis=-1)
    result = running.result()
    everything = np.concatenate(batches).reshape(-1, 3)
    np.testing.assert_array_equal(result.count, np.full(3, everything.shape[0]))
    np.testing.assert_allclose(result.mean, everything.mean(axis=0), rtol=1e-12, atol=1e-12 * scale)
    # Far from zero the variance is ill-conditioned even for numpy's two-pass formula: allow float64
    # rounding at the scale offset * std. The naive sum-of-squares formula errs by ~1e-16 * offset^2.
    np.testing.assert_allclose(result.variance, everything.var(axis=0), rtol=1e-9,
                               atol=1e-13 * abs(offset) * scale + 1e-18)


def test_merge_ignores_an_empty_side_whatever_its_mean_holds():
    count, mean, m2 = merge(np.array([0.0, 4.0]), np.array([np.nan, 2.0]), np.array([np.nan, 8.0]),
                            np.array([3.0, 0.0]), np.array([1.0, np.nan]), np.array([6.0, np.nan]))
    np.testing.assert_array_equal(count, [3.0, 4.0])
    np.testing.assert_array_equal(mean, [1.0, 2.0])
    np.testing.assert_array_equal(m2, [6.0, 8.0])


def test_non_finite_values_are_counted_and_left_out_of_the_statistics():
    values = np.array([[1.0, np.nan], [3.0, 5.0], [np.inf, 7.0], [5.0, 9.0]])
    running = RunningMoments(2)
    running.add_values(values[:2])
    running.add_values(values[2:])
    result = running.result()
    np.testing.assert_array_equal(result.non_finite, [1, 1])
    np.testing.assert_array_equal(result.count, [3, 3])
    np.testing.assert_allclose(result.mean, [3.0, 7.0])
    np.testing.assert_allclose(result.variance, [np.var([1, 3, 5]), np.var([5, 7, 9])])


def test_a_channel_without_any_value_has_nan_statistics():
    running = RunningMoments(1)
    running.add_values(np.array([[np.nan], [np.nan]]))
    result = running.result()
    assert result.count[0] == 0 and result.non_finite[0] == 2
    assert np.isnan(result.mean[0]) and np.isnan(result.variance[0])


# --- --rescale -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("1/255", 1 / 255), (" 1 / 127.5 ", 1 / 127.5), ("0.5", 0.5),
                                         ("2e-3", 2e-3), ("1./255", 1 / 255), ("-1", -1.0)])
def test_rescale_parses_numbers_and_fractions(text, value):
    assert parse_rescale(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text", ["__import__('os').getcwd()", "1/0", "abc", "", "1/255/2", "nan", "inf", "0", "2**8"])
def test_rescale_refuses_anything_else(text):
    with pytest.raises(UsageProblem, match="--rescale"):
        parse_rescale(text)


# --- reading data --------------------------------------------------------------------------------

IMAGE = InputSpec("image", (4, 4, 3))


def _collect(source, batch_size):
    return [batch.arrays for batch in source.batches(batch_size)]


def test_npy_is_memory_mapped_and_read_in_batches(tmp_path):
    data = np.random.default_rng(0).uniform(0, 255, (10, 4, 4, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    source = open_data(tmp_path / "x.npy", [IMAGE], rescale=0.5)
    assert isinstance(source._inputs[0]._array, np.memmap)
    batches = _collect(source, 4)
    assert [arrays[0].shape[0] for arrays in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([arrays[0] for arrays in batches]), data * 0.5)
    assert source.batch_count(4) == 3


def _rss_file_mb():
    try:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("RssFile:"))
    except (OSError, StopIteration):
        pytest.skip("needs /proc/self/status with RssFile (Linux)")


def test_npy_pages_read_are_released_so_resident_memory_stays_flat(tmp_path):
    # 64 MB of samples behind a header that leaves the data off a page boundary.
    data = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(4096, 64, 64, 1))
    data[:] = np.arange(4096, dtype=np.float32)[:, None, None, None]
    data.flush()
    del data
    source = open_data(tmp_path / "x.npy", [InputSpec("image", (64, 64, 1))])
    assert source._inputs[0]._array.offset % 4096 != 0
    for _ in range(2):  # a second pass reads the released pages back from the file
        before, peak, firsts = _rss_file_mb(), 0.0, []
        for batch in source.batches(100):
            peak = max(peak, _rss_file_mb() - before)
            firsts.extend(batch.arrays[0][:, 0, 0, 0].tolist())
        assert firsts == list(range(4096))
        assert peak < 8, f"{peak:.1f} MB of the 64 MB file stayed resident"


def test_limit_takes_the_first_samples(tmp_path):
    data = np.arange(10 * 48, dtype=np.float32).reshape(10, 4, 4, 3)
    np.save(tmp_path / "x.npy", data)
    source = open_data(tmp_path / "x.npy", [IMAGE], limit=3)
    assert source.samples == 3
    np.testing.assert_array_equal(np.concatenate([a[0] for a in _collect(source, 2)]), data[:3])


def test_model_dtype_is_applied(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 4, 4, 3), np.uint8))
    (batch,) = _collect(open_data(tmp_path / "x.npy", [IMAGE]), 8)
    assert batch[0].dtype == np.float32


def test_shape_mismatch_names_both_shapes(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 8, 4, 3), np.float32))
    with pytest.raises(DataError) as error:
        open_data(tmp_path / "x.npy", [IMAGE])
    assert "(8, 4, 3)" in str(error.value) and "(None, 4, 4, 3)" in str(error.value)
    assert str(tmp_path / "x.npy") in str(error.value)


def test_missing_batch_axis_and_channel_order_get_a_hint(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DataError, match="without the batch axis"):
        open_data(tmp_path / "one.npy", [IMAGE])
    np.save(tmp_path / "cf.npy", np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match="channels first"):
        open_data(tmp_path / "cf.npy", [IMAGE])


@pytest.mark.parametrize("write, reason", [
    (lambda p: np.save(p, np.array([{"a": 1}] * 2, dtype=object), allow_pickle=True), "not a readable .npy"),
    (lambda p: np.save(p, np.zeros((0, 4, 4, 3), np.float32)), "no samples"),
    (lambda p: p.write_bytes(np.lib.format.magic(1, 0) + b"garbage"), "not a readable .npy"),
    (lambda p: p.write_bytes(b"hello world"), "not an .npy or .npz"),
    (lambda p: np.save(p, np.array(["ab", "cd"])), "expected numbers"),
])
def test_unusable_files_are_one_line_data_errors(tmp_path, write, reason):
    path = tmp_path / "data.npy"
    write(path)
    with pytest.raises(DataError, match=reason) as error:
        open_data(path, [IMAGE])
    assert "\n" not in str(error.value)


def test_truncated_npy_is_a_data_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((50, 4, 4, 3), np.float32))
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(DataError, match="cut.npy"):
        open_data(tmp_path / "cut.npy", [IMAGE])


def test_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        open_data(tmp_path / "nope.npy", [IMAGE])


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_arrays_are_matched_to_inputs_by_name_and_streamed(tmp_path, compressed):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(7, 4, 4, 3)).astype(np.float32)
    meta = rng.normal(size=(7, 2)).astype(np.float32)
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "d.npz", meta=meta, image=image)  # not in the model's input order
    source = open_data(tmp_path / "d.npz", [IMAGE, InputSpec("meta", (2,))])
    batches = _collect(source, 3)
    assert [arrays[0].shape[0] for arrays in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([a[0] for a in batches]), image)
    np.testing.assert_array_equal(np.concatenate([a[1] for a in batches]), meta)
    # A second pass reads the file again from the start.
    np.testing.assert_array_equal(_collect(source, 7)[0][1], meta)


def test_npz_with_one_array_feeds_a_single_input_whatever_its_name(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 4, 4, 3), np.float32))
    assert open_data(tmp_path / "d.npz", [IMAGE]).samples == 3


def test_npz_without_the_input_names_lists_both(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.ones((3, 4, 4, 3)), b=np.ones((3, 2)))
    with pytest.raises(DataError) as error:
        open_data(tmp_path / "d.npz", [IMAGE, InputSpec("meta", (2,))])
    message = str(error.value)
    assert "a, b" in message and "image, meta" in message


def test_npz_arrays_of_different_lengths_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", image=np.ones((3, 4, 4, 3)), meta=np.ones((4, 2)))
    with pytest.raises(DataError, match="different numbers of samples"):
        open_data(tmp_path / "d.npz", [IMAGE, InputSpec("meta", (2,))])


def test_npy_for_a_two_input_model_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 4, 4, 3)))
    with pytest.raises(DataError, match="2 inputs"):
        open_data(tmp_path / "x.npy", [IMAGE, InputSpec("meta", (2,))])


def test_npz_broken_zip_is_a_data_error(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 4, 4, 3)))
    raw = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[:60])
    with pytest.raises(DataError, match="cut.npz"):
        open_data(tmp_path / "cut.npz", [IMAGE])


def test_in_memory_arrays_are_accepted(tmp_path):
    image = np.ones((5, 4, 4, 3), np.float32)
    source = open_data({"image": image, "meta": np.zeros((5, 2))}, [IMAGE, InputSpec("meta", (2,))])
    assert source.samples == 5
    with pytest.raises(DataError, match="expects"):
        open_data(np.ones((5, 3, 3, 3)), [IMAGE])


def test_image_directory_is_decoded_batch_by_batch_in_sorted_order(tmp_path):
    for name in ("b.png", "a.jpg", "sub/c.JPEG", "notes.txt", ".hidden.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    calls = []

    def decoder(paths, height, width, channels):
        calls.append([p.replace(str(tmp_path), "") for p in paths])
        return np.full((len(paths), height, width, channels), 255.0, np.float32)

    source = open_data(tmp_path, [IMAGE], rescale=1 / 255, decoder=decoder)
    batches = _collect(source, 2)
    assert calls == [["/a.jpg", "/b.png"], ["/sub/c.JPEG"]]
    assert batches[0][0].shape == (2, 4, 4, 3)
    np.testing.assert_allclose(batches[1][0], 1.0)


def test_image_directory_for_a_channels_first_model_is_transposed(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    seen = {}

    def decoder(paths, height, width, channels):
        seen["size"] = (height, width, channels)
        return np.arange(height * width * channels, dtype=np.float32).reshape(1, height, width, channels)

    (batch,) = _collect(open_data(tmp_path, [InputSpec("image", (3, 5, 6))], decoder=decoder), 1)
    assert seen["size"] == (5, 6, 3) and batch[0].shape == (1, 3, 5, 6)


def test_image_directory_needs_images_and_a_fixed_size(tmp_path):
    with pytest.raises(DataError, match="no .png or .jpg"):
        open_data(tmp_path, [IMAGE])
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="fixed size"):
        open_data(tmp_path, [InputSpec("image", (None, None, 3))])


def test_reading_data_and_importing_the_probe_api_do_not_import_tensorflow(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 4, 4, 3), np.float32))
    script = ("import sys\n"
              "from bninspect.probes import run_probe, ProbeReport\n"
              "from bninspect.data import InputSpec, open_data\n"
              f"source = open_data({str(tmp_path / 'x.npy')!r}, [InputSpec('image', (4, 4, 3))])\n"
              "print(sum(batch.size for batch in source.batches(2)))\n"
              "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules))\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert completed.stdout.split("\n")[:2] == ["3", "[]"]

# --- thresholds ----------------------------------------------------------------------------------


def test_thresholds_come_from_a_mapping_or_an_object_and_unknown_keys_are_ignored():
    assert resolve(None) == ProbeThresholds()
    assert resolve({"drift-mean-shift": 3, "extreme_scale": 9}).drift_mean_shift == 3.0

    class Configured:
        drift_variance_ratio = 8.0
        zero_gamma = 1.0

    resolved = resolve(Configured())
    assert resolved.drift_variance_ratio == 8.0 and resolved.drift_mean_shift == ProbeThresholds().drift_mean_shift


@pytest.mark.parametrize("key, value", [("drift_mean_shift", -1), ("drift_variance_ratio", 0.5),
                                        ("drift_channel_fraction", 2), ("train_inference_gap", float("nan")),
                                        ("batch_consistency", "big"), ("dead_channel_variance", True)])
def test_bad_thresholds_are_usage_problems(key, value):
    with pytest.raises(ThresholdError, match=key):
        resolve({key: value})


# --- rules on hand-made statistics ---------------------------------------------------------------

def _moments(mean, variance, count=100.0, non_finite=0.0):
    mean = np.asarray(mean, float)
    return ChannelMoments(np.full(mean.size, count), mean, np.asarray(variance, float), np.full(mean.size, non_finite))


def _layer(path, order, mean, variance, moving_mean=0.0, moving_variance=1.0, non_finite=0.0, count=100.0):
    mean = np.asarray(mean, float)
    channels = mean.size
    moments = _moments(mean, variance, count, non_finite)
    return LayerProbe(path=path, order=order, axis=(3,), epsilon=1e-3,
                      moving_mean=np.full(channels, moving_mean), moving_variance=np.full(channels, moving_variance),
                      input=moments, output=moments, calls=1 if order is not None else 0)


T = ProbeThresholds()


def test_drift_names_the_first_layer_and_points_at_preprocessing_with_the_scale():
    # Inputs 255x wider than the stored statistics at the first BN layer, and downstream.
    first = _layer("stem/bn", 0, np.full(4, 120.0), np.full(4, 255.0 ** 2))
    later = _layer("head/bn", 1, np.full(4, 30.0), np.full(4, 900.0))
    findings = rules.evaluate("m.h5", (later, first), None, None, T)
    drift = [f for f in findings if f.code == "BN101"]
    assert [f.layer for f in drift] == ["stem/bn", "head/bn"]
    assert drift[0].message.startswith("first drifting layer, and the first BN layer")
    assert "--rescale 1/255" in drift[0].hint and "~255x" in drift[0].hint
    assert "downstream of the first drifting layer stem/bn" in drift[1].message
    assert all(f.severity.value == "warning" and f.source == "m.h5" for f in drift)


def test_drift_first_at_a_deeper_layer_suggests_recalibration_not_preprocessing():
    findings = rules.evaluate("m", (_layer("a", 0, np.zeros(4), np.ones(4)),
                                    _layer("b", 1, np.full(4, 3.0), np.ones(4))), None, None, T)
    (drift,) = findings
    assert drift.layer == "b" and drift.message.startswith("first drifting layer:")
    assert "recalibrate" in drift.hint and "--rescale" not in drift.hint


def test_drift_needs_more_than_the_channel_fraction():
    # 1 of 4 channels shifted is exactly 25%: not more than the default fraction.
    layer = _layer("bn", 0, [5.0, 0.0, 0.0, 0.0], np.ones(4))
    assert rules.drifting_channels(layer, T).tolist() == [True, False, False, False]
    assert rules.evaluate("m", (layer,), None, None, T) == ()
    stricter = ProbeThresholds(drift_channel_fraction=0.2)
    assert [f.code for f in rules.evaluate("m", (layer,), None, None, stricter)] == ["BN101"]


def test_variance_ratio_counts_both_directions_and_includes_epsilon():
    layer = _layer("bn", 0, np.zeros(3), [4.0, 0.25, 1.0])
    ratio = layer.variance_ratio
    np.testing.assert_allclose(ratio, (np.array([4.0, 0.25, 1.0]) + 1e-3) / (1.0 + 1e-3))
    assert rules.drifting_channels(layer, T).tolist() == [True, True, False]


def test_non_finite_activations_are_errors_with_counts():
    layer = _layer("bn", 0, np.zeros(2), np.ones(2), non_finite=3.0)
    (finding,) = [f for f in rules.evaluate("m", (layer,), None, None, T) if f.code == "BN103"]
    assert finding.severity.value == "error"
    assert finding.message.startswith("6 of 206 input values")


def test_constant_channels_are_dead_channel_infos_and_not_variance_drift():
    layer = _layer("bn", 0, [0.0, 100.0, 0.0], [0.0, 1e-9, 1.0], moving_mean=0.0)
    constant = rules.constant_channels(layer, T)
    assert constant.tolist() == [True, True, False]
    findings = {f.code: f for f in rules.evaluate("m", (layer,), None, None, T)}
    assert findings["BN104"].severity.value == "info"
    assert findings["BN104"].message.startswith("2 of 3 channels")
    # Channel 1 drifts by its mean (100 stored std); channel 0's zero variance is not counted.
    assert rules.drifting_channels(layer, T).tolist() == [False, True, False]


def test_unreached_layers_are_ignored_by_the_rules():
    nan = np.full(2, np.nan)
    layer = LayerProbe("bn", None, (1,), 1e-3, np.zeros(2), np.ones(2),
                       ChannelMoments(np.zeros(2), nan, nan, np.zeros(2)),
                       ChannelMoments(np.zeros(2), nan, nan, np.zeros(2)), calls=0)
    assert rules.evaluate("m", (layer,), None, None, T) == ()


def test_gap_and_consistency_findings_follow_their_thresholds():
    # Inference-mode variance at 0.42 of the moving variance: what Dropout(0.5) before BN during
    # training leaves behind.
    shifted = (_layer("stem/bn", 0, np.zeros(4), np.ones(4)), _layer("head/bn", 1, np.zeros(4), np.full(4, 0.42)))
    small = rules.evaluate("m", shifted, GapMeasure(0.05, 4, 32), ConsistencyMeasure(1e-6, 0, 4, 32), T)
    assert [f.code for f in small] == ["BN101"]
    large = rules.evaluate("m", shifted, GapMeasure(0.42, 4, 32), ConsistencyMeasure(0.3, 2, 4, 32), T)
    gap, alone = [f for f in large if f.code == "BN102"]
    assert "42.0%" in gap.message and "moving statistics of head/bn disagree" in gap.message
    assert "sample 2" in alone.message
    assert gap.layer is None and alone.layer is None


def test_a_gap_without_statistics_that_disagree_with_the_data_is_batch_noise():
    # Numbers like the healthy trained sample CNN's: moving statistics that match the data (mean
    # shift ~0.05 stored std, variance ratio ~0.95), yet predictions on the batch statistics of 32
    # samples differ by 14%. That is the noise of batch statistics, not a property of the model.
    healthy = (_layer("bn1", 0, np.full(8, 0.05), np.full(8, 0.97)), _layer("bn2", 1, np.full(8, -0.08), np.full(8, 0.93)))
    assert rules.first_mismatched_layer(healthy, T) is None
    assert rules.evaluate("m", healthy, GapMeasure(0.143, 2, 32), ConsistencyMeasure(0.0, 0, 4, 32), T) == ()
    # The batch-consistency half of BN102 does not depend on the statistics.
    (alone,) = rules.evaluate("m", healthy, GapMeasure(0.143, 2, 32), ConsistencyMeasure(0.3, 1, 4, 32), T)
    assert alone.code == "BN102" and "predicted alone" in alone.message


def test_the_gap_names_the_first_mismatched_layer_in_graph_order():
    late = _layer("late", 2, np.zeros(4), np.full(4, 0.3))
    early = _layer("early", 1, np.full(4, 2.0), np.ones(4))
    unreached = LayerProbe("never", None, (1,), 1e-3, np.zeros(4), np.ones(4),
                           ChannelMoments(np.zeros(4), np.full(4, np.nan), np.full(4, np.nan), np.zeros(4)),
                           ChannelMoments(np.zeros(4), np.full(4, np.nan), np.full(4, np.nan), np.zeros(4)), calls=0)
    assert rules.first_mismatched_layer((late, unreached, early), T) is early
    (gap,) = [f for f in rules.evaluate("m", (late, unreached, early), GapMeasure(0.3, 4, 32), None, T)
              if f.code == "BN102"]
    assert "moving statistics of early disagree" in gap.message


@pytest.mark.parametrize("batch_count, batch_size, expected", [
    (5, 32, 1),      # 144 samples in batches of 32: one batch, not four (the cost of a second pass)
    (32, 32, 1),     # 1,000 samples: still one
    (40, 8, 4),      # small batches: 32 samples need 4
    (100, 1, 4),     # at most 4 batches however small they are
    (3, 4, 2),       # at most half of the data's batches
    (1, 32, 1),      # at least one
])
def test_the_gap_costs_a_bounded_number_of_samples_whatever_the_data_size(batch_count, batch_size, expected):
    from bninspect.probes.runner import gap_batches

    assert gap_batches(batch_count, batch_size) == expected


def test_probe_report_dict_is_json_ready():
    import json

    from bninspect.probes.results import ProbeReport
    from bninspect.reporters.json_report import _finite_or_text

    layer = _layer("bn", 0, np.full(2, 5.0), np.ones(2))
    findings = rules.evaluate("m", (layer,), GapMeasure(0.5, 1, 8), None, T)
    report = ProbeReport("m", "keras 3", 8, 8, 1, 0.1, (layer,), findings, T, gap=GapMeasure(0.5, 1, 8))
    data = json.loads(json.dumps(_finite_or_text(report.to_dict()), allow_nan=False))
    (entry,) = data["layers"]
    assert entry["findings"] == ["BN101"]
    assert entry["input"]["drifting_channels"] == 2
    assert entry["input"]["mean_shift"]["median"] == pytest.approx(5 / np.sqrt(1 + 1e-3))
    assert data["train_inference_gap"]["relative_difference"] == 0.5
    filtered = report.with_findings(lambda found: [f for f in found if f.code != "BN101"])
    assert [f.code for f in filtered.findings] == ["BN102"]
    assert filtered.to_dict()["layers"][0]["findings"] == []


def test_zip_magic_without_npz_members_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(DataError, match="no arrays"):
        open_data(tmp_path / "d.npz", [IMAGE])
