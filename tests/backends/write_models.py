"""Write the backend suite's models with the Keras backend this process runs on.

Usage: KERAS_BACKEND=jax python tests/backends/write_models.py DIRECTORY

Each model is trained with `fit` for a few steps (so its statistics moved) and saved as `.keras`,
`.h5` and `.weights.h5`, named `<model>_<backend>.<suffix>`: a Conv+BN CNN, a Dense+BN MLP,
MobileNetV2 at 96x96 (alpha 0.35, random weights) and a subclassed Conv+BN net
(tests/subclassed_keras_net.py). The input data is the same for every backend (a fixed seed):
`<model>_x.npy`, and a directory of PNG images for the CNN.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]


def cnn(keras):
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, name="conv2")(x)
    x = keras.layers.BatchNormalization(momentum=0.1, name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4, name="dense")(x)
    x = keras.layers.BatchNormalization(name="bn_head")(x)
    return keras.Model(inputs, x, name="cnn")


def mlp(keras):
    inputs = keras.Input((12,), name="features")
    x = keras.layers.Dense(16, name="dense1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dense(8, name="dense2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x), name="mlp")


def mobilenet(keras):
    return keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=5)


def subclassed(keras):
    sys.path.insert(0, str(TESTS))
    from subclassed_keras_net import Net

    model = Net()
    model(np.zeros((1, 16, 16, 3), np.float32))
    return model


def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(27)
    return {
        "cnn": rng.normal(3.0, 2.0, (70, 16, 16, 3)).astype(np.float32),
        "mlp": (rng.normal(0.0, 1.0, (90, 12)) * np.arange(1, 13) + 20.0).astype(np.float32),
        "mobilenet": rng.uniform(-1.0, 1.0, (40, 96, 96, 3)).astype(np.float32),
        "subclassed": rng.normal(0.0, 1.0, (40, 16, 16, 3)).astype(np.float32),
    }


def write_images(directory: Path) -> None:
    from PIL import Image

    directory.mkdir(exist_ok=True)
    rng = np.random.default_rng(28)
    for index in range(12):
        pixels = rng.integers(0, 256, (20 + index, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"image_{index:02d}.png")


def main(directory: Path) -> None:
    import keras

    backend = keras.config.backend()
    directory.mkdir(parents=True, exist_ok=True)
    arrays = data()
    builders = {"cnn": cnn, "mlp": mlp, "mobilenet": mobilenet, "subclassed": subclassed}
    keras.utils.set_random_seed(5)
    for name, build in builders.items():
        model = build(keras)
        x = arrays[name]
        np.save(directory / f"{name}_x.npy", x)
        outputs = np.asarray(model.predict(x[:1], verbose=0))
        targets = np.random.default_rng(6).normal(size=(len(x), *outputs.shape[1:])).astype(np.float32)
        model.compile(optimizer="sgd", loss="mse")
        model.fit(x, targets, batch_size=16, epochs=1, verbose=0)
        model.save(directory / f"{name}_{backend}.keras")
        model.save_weights(directory / f"{name}_{backend}.weights.h5")
        if name != "subclassed":  # the legacy HDF5 format stores no subclassed model
            model.save(directory / f"{name}_{backend}.h5")
    write_images(directory / "images")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
