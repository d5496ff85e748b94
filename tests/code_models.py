"""Shared fixtures and builders for models whose architecture is code: a Keras 3 subclassed model
with a registered class, KerasHub backbones and tasks (built offline from their classes with random
weights, fit a few steps) as presets and `.keras` files, and tf-keras subclassed SavedModels.

The fixtures are session-scoped and registered for every test module by conftest.py; the
`--custom-objects` files that give Keras the subclassed classes are `KERAS_NET_FILE` and
`TF_KERAS_NET_FILE`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
KERAS_NET_FILE = HERE / "subclassed_keras_net.py"
TF_KERAS_NET_FILE = HERE / "subclassed_tf_keras_net.py"
ARRAYS = ("gamma", "beta", "moving_mean", "moving_variance")
SUBCLASSED_STEPS = 4
RESNET_STEPS = 8  # at the backbone's BN momentum 0.9: 0.9 ** 8 = 43% of the initial 0/1 remain
DENSENET_STEPS = 3


def live_bn(layers, prefix: str = "") -> dict[str, dict[str, np.ndarray]]:
    """path -> arrays of every BN layer among `layers` (Keras 3 or tf-keras), from Keras' own variables."""
    return {prefix + layer.name: {name: np.asarray(getattr(layer, name).numpy()) for name in ARRAYS}
            for layer in layers if any(cls.__name__ == "BatchNormalization" for cls in type(layer).__mro__)}


def _fitted(K, net_class, seed: int):
    """A subclassed `net_class` (Keras 3 or tf-keras, `K`) fit SUBCLASSED_STEPS steps with Adam,
    and the inputs it was fit on."""
    K.utils.set_random_seed(seed)
    model = net_class()
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(SUBCLASSED_STEPS * 8, 8, 8, 3)).astype("float32")
    model.fit(x, rng.normal(size=(len(x), 1)).astype("float32"), batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model, x


# --- a Keras 3 subclassed model with a registered class --------------------------------------

@pytest.fixture(scope="session")
def subclassed_files(tmp_path_factory):
    import keras
    from subclassed_keras_net import Net

    model, x = _fitted(keras, Net, seed=1)
    assert int(model.optimizer.iterations.numpy()) == SUBCLASSED_STEPS
    directory = tmp_path_factory.mktemp("subclassed")
    model.save(directory / "net.keras")
    model.save_weights(directory / "net.weights.h5")
    np.save(directory / "x.npy", x)
    return {"keras": directory / "net.keras", "weights": directory / "net.weights.h5",
            "expected": live_bn([model.bn]), "data": directory / "x.npy", "classes": KERAS_NET_FILE}


# --- KerasHub backbones and tasks ----------------------------------------------------------

def _image_data(steps: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(steps * 8, 16, 16, 3)).astype("float32")
    return x, rng.integers(0, classes, size=len(x))


def _resnet_task(keras_hub):
    backbone = keras_hub.models.ResNetBackbone(
        # The first stack of basic blocks adds its input back: it needs 64 filters in and out.
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(16, 16, 3))
    converter = keras_hub.layers.ResNetImageConverter(image_size=(16, 16))
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=3, preprocessor=preprocessor)


def _densenet_task(keras_hub):
    backbone = keras_hub.models.DenseNetBackbone(stackwise_num_repeats=[1, 1], growth_rate=4,
                                                 image_shape=(16, 16, 3))
    converter = keras_hub.layers.DenseNetImageConverter(image_size=(16, 16))
    preprocessor = keras_hub.models.DenseNetImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.DenseNetImageClassifier(backbone=backbone, num_classes=3, preprocessor=preprocessor)


@pytest.fixture(scope="session")
def kerashub_files(tmp_path_factory):
    """{family: {kind: path, ...}}: each family's backbone preset, task preset and task .keras, the
    live BN arrays of each form, the task's classes and fit steps."""
    import keras
    import keras_hub

    root = tmp_path_factory.mktemp("kerashub")
    files = {}
    for family, build, steps, task_class, backbone_class in (
            ("resnet", _resnet_task, RESNET_STEPS, "ResNetImageClassifier", "ResNetBackbone"),
            ("densenet", _densenet_task, DENSENET_STEPS, "DenseNetImageClassifier", "DenseNetBackbone")):
        keras.utils.set_random_seed(2)
        task = build(keras_hub)
        task.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        x, y = _image_data(steps, 3, seed=2)
        task.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        assert int(task.optimizer.iterations.numpy()) == steps
        directory = root / family
        directory.mkdir()
        np.save(directory / "x.npy", x[:24])
        task.save(directory / "task.keras")
        task.save_to_preset(str(directory / "task_preset"))
        task.backbone.save_to_preset(str(directory / "backbone_preset"))
        backbone_layers = task.backbone.layers
        head_layers = [layer for layer in task.layers if layer is not task.backbone]
        in_task = {**live_bn(backbone_layers, task.backbone.name + "/"), **live_bn(head_layers)}
        files[family] = {
            "task_keras": directory / "task.keras", "task_preset": directory / "task_preset",
            "backbone_preset": directory / "backbone_preset", "directory": directory, "data": directory / "x.npy",
            "expected": {"task_keras": in_task, "task_preset": in_task,
                         "backbone_preset": live_bn(backbone_layers)},
            "momenta": {layer.momentum for layer in backbone_layers
                        if isinstance(layer, keras.layers.BatchNormalization)},
            "steps": steps, "task_class": f"keras_hub>{task_class}", "backbone_class": f"keras_hub>{backbone_class}",
            "keras_hub_version": keras_hub.__version__,
        }
    return files


# --- a tf-keras subclassed SavedModel ----------------------------------------------------------

@pytest.fixture(scope="session")
def tf_keras_subclassed_savedmodel(tmp_path_factory):
    import tf_keras
    from subclassed_tf_keras_net import Net

    model, _ = _fitted(tf_keras, Net, seed=3)
    path = tmp_path_factory.mktemp("tf_keras_subclassed") / "net_savedmodel"
    model.save(str(path), save_format="tf")
    return path, live_bn([model.bn])


@pytest.fixture(scope="session")
def tf_keras_nested_savedmodel(tmp_path_factory):
    """`NestedNet` as a SavedModel: the metadata holds every layer's config (the block's BN too)
    and says the model is not a graph network, so nothing is left for --build to read."""
    import tf_keras
    from subclassed_tf_keras_net import NestedNet

    model, _ = _fitted(tf_keras, NestedNet, seed=4)
    path = tmp_path_factory.mktemp("tf_keras_nested") / "nested_savedmodel"
    model.save(str(path), save_format="tf")
    return path, live_bn([model.block.bn], "block/") | live_bn([model.head_bn])
