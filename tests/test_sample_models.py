"""The committed sample models read as sample_models/README.md says: format, BN layers, trained or not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bninspect import loaders
from bninspect.model import ModelDescription

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
CNN_BN = ("bn1", "bn2")

# file -> (format, BN paths, trained)
EXPECTED = {
    "cnn_untrained.h5": ("h5-legacy", CNN_BN, False),
    "cnn_untrained.keras": ("keras-v3", CNN_BN, False),
    "cnn_untrained.weights.h5": ("weights-v3", CNN_BN, False),
    "cnn_untrained_tf2.h5": ("h5-legacy", CNN_BN, False),
    "cnn_untrained_tf2_weights.h5": ("h5-weights", CNN_BN, False),
    "cnn_trained.keras": ("keras-v3", CNN_BN, True),
    "cnn_trained.h5": ("h5-legacy", CNN_BN, True),
    "cnn_trained.weights.h5": ("weights-v3", CNN_BN, True),
    "cnn_trained_tf2.h5": ("h5-legacy", CNN_BN, True),
    "cnn_trained_tf2_weights.h5": ("h5-weights", CNN_BN, True),
    "bn_last_layer.keras": ("keras-v3", ("bn_out",), True),
    "channels_first_wrong_axis.keras": ("keras-v3", ("bn",), True),
    "channels_first_axis1.keras": ("keras-v3", ("bn",), True),
    "nested.keras": ("keras-v3", ("stem_bn", "block/bn", "residual/bn"), True),
}


def _statistics_moved(description: ModelDescription) -> list[bool]:
    return [bool(np.any(bn.moving_mean != 0) or np.any(bn.moving_variance != 1)) for bn in description.bn_layers]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_model_reads_as_documented(name):
    fmt, paths, trained = EXPECTED[name]
    description = loaders.load(SAMPLES / name)
    assert description.format == fmt
    assert tuple(bn.path for bn in description.bn_layers) == paths
    assert _statistics_moved(description) == [trained] * len(paths)
    if trained:
        # A real fit moves gamma and beta too.
        assert all(not np.all(bn.gamma == 1) and not np.all(bn.beta == 0) for bn in description.bn_layers)


def test_readme_lists_every_sample_model():
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    on_disk = {path.name for path in SAMPLES.iterdir()
               if path.suffix in (".h5", ".keras", ".npy") or path.name.endswith("_savedmodel")}
    assert on_disk == set(EXPECTED) | {"cnn_trained_tf2_savedmodel", "cnn_data.npy"}
    assert all(f"`{name}" in readme for name in on_disk)


def test_sample_data_matches_the_cnn_input():
    data = np.load(SAMPLES / "cnn_data.npy")
    assert data.shape[1:] == (16, 16, 3) and len(data) >= 32
    assert data.dtype == np.float32 and 0 <= data.min() and data.max() <= 1


@pytest.mark.slow
def test_sample_savedmodel_matches_its_h5_twin_layout():
    description = loaders.load(SAMPLES / "cnn_trained_tf2_savedmodel")
    assert description.format == "savedmodel"
    assert tuple(bn.path for bn in description.bn_layers) == CNN_BN
    assert _statistics_moved(description) == [True, True]
    twin = loaders.load(SAMPLES / "cnn_trained_tf2.h5")
    assert [layer.path for layer in description.layers] == [layer.path for layer in twin.layers]


@pytest.mark.slow
def test_trained_statistics_fit_the_sample_data():
    """The trained CNN's first BN layer saw data like cnn_data.npy: its moving statistics match."""
    import keras

    model = keras.saving.load_model(SAMPLES / "cnn_trained.keras")
    bn = model.get_layer("bn1")
    inputs = keras.Model(model.inputs, bn.input).predict(np.load(SAMPLES / "cnn_data.npy"), verbose=0)
    variance_ratio = inputs.var(axis=(0, 1, 2)) / bn.moving_variance.numpy()
    mean_shift = np.abs(inputs.mean(axis=(0, 1, 2)) - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy())
    assert np.all((variance_ratio > 0.8) & (variance_ratio < 1.25)), variance_ratio
    assert np.all(mean_shift < 0.25), mean_shift
