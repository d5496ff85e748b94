"""Write the sample models of this folder: small CNNs in every format bninspect reads, and the
models behind the questions bninspect answers. See README.md here for what each file shows.

    python sample_models/generate.py          # needs tensorflow, keras 3 and tf-keras

Tiny on purpose (16x16x3 inputs, 8 filters): the files are committed. Seeds are fixed; "trained"
means a real fit on synthetic data in [0, 1]. The learning rate decays to 0 over the first 60% of
the steps and stays there: the moving statistics (an average with momentum 0.99, a memory of ~100
steps) then settle on what the final weights produce, as in a model trained to convergence, and
match the data (`cnn_data.npy` is drawn from the same distribution) within a few percent.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import shutil  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
IMAGE_SHAPE = (16, 16, 3)
CLASSES = 3
TRAIN_SAMPLES = 512
BATCH_SIZE = 32
EPOCHS = 40
LEARNING_FRACTION = 0.6


def image_data(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1] whose class is their brightest channel: easy to learn, so training is real."""
    rng = np.random.default_rng(seed)
    brightness = rng.uniform(0.2, 1.0, (samples, 1, 1, 3))
    x = (rng.uniform(0, 1, (samples, *IMAGE_SHAPE)) * brightness).astype(np.float32)
    y = x.mean(axis=(1, 2)).argmax(axis=1)
    return x, y


def cnn(K: Any, name: str = "cnn") -> Any:
    """conv-BN-ReLU twice, then a softmax head. Convolutions have no bias: BN's beta replaces it."""
    layers = K.layers
    return K.Sequential([
        K.Input(IMAGE_SHAPE, name="image"),
        layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1"),
        layers.BatchNormalization(name="bn1"),
        layers.ReLU(name="relu1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2"),
        layers.BatchNormalization(name="bn2"),
        layers.ReLU(name="relu2"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(CLASSES, activation="softmax", name="classes"),
    ], name=name)


def fit(K: Any, model: Any, x: np.ndarray, y: np.ndarray, loss: str = "sparse_categorical_crossentropy") -> None:
    steps = EPOCHS * int(np.ceil(len(x) / BATCH_SIZE))
    schedule = K.optimizers.schedules.CosineDecay(3e-3, decay_steps=int(steps * LEARNING_FRACTION))
    model.compile(optimizer=K.optimizers.Adam(schedule), loss=loss)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=True, verbose=0)


def save_keras3(model: Any, stem: str) -> list[Path]:
    paths = [HERE / f"{stem}.keras", HERE / f"{stem}.h5", HERE / f"{stem}.weights.h5"]
    model.save(paths[0])
    model.save(paths[1])  # Keras 3's legacy HDF5 full model
    model.save_weights(paths[2])
    return paths


def save_tf_keras(model: Any, stem: str, savedmodel: bool = True) -> list[Path]:
    # Not `.weights.h5`: for that suffix tf-keras writes the Keras 3 weights layout (without the
    # layer names); `_weights.h5` gets the legacy HDF5 weights-only format that tf.keras users have.
    paths = [HERE / f"{stem}_tf2.h5", HERE / f"{stem}_tf2_weights.h5"]
    model.save(paths[0])
    model.save_weights(paths[1])
    if savedmodel:
        # Only the trained model: a SavedModel is ~200 KB of traced graphs even for a tiny CNN.
        directory = HERE / f"{stem}_tf2_savedmodel"
        if directory.exists():
            shutil.rmtree(directory)
        model.save(directory, save_format="tf")
        paths.append(directory)
    return paths


def keras3_cnns(x: np.ndarray, y: np.ndarray) -> list[Path]:
    import keras

    keras.utils.set_random_seed(1)
    model = cnn(keras)
    written = save_keras3(model, "cnn_untrained")
    fit(keras, model, x, y)
    return written + save_keras3(model, "cnn_trained")


def tf_keras_cnns(x: np.ndarray, y: np.ndarray) -> list[Path]:
    import tf_keras

    tf_keras.utils.set_random_seed(2)
    model = cnn(tf_keras)
    written = save_tf_keras(model, "cnn_untrained", savedmodel=False)
    fit(tf_keras, model, x, y)
    return written + save_tf_keras(model, "cnn_trained")


def bn_last_layer() -> list[Path]:
    """The user question: Dense, then BatchNormalization as the output layer, trained on targets
    around 5 with spread 3. At inference BN applies its stored statistics: predictions are not
    standardised (mean 0, variance 1), which is what the user expected."""
    import keras

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    features = rng.normal(0, 1, (TRAIN_SAMPLES, 8)).astype(np.float32)
    targets = (features[:, :2] @ np.array([[2.0, -1.0], [1.0, 2.0]]) + 5).astype(np.float32)
    model = keras.Sequential([
        keras.Input((8,), name="features"),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(2, name="dense"),
        keras.layers.BatchNormalization(name="bn_out"),
    ], name="bn_last_layer")
    fit(keras, model, features, targets, loss="mse")
    path = HERE / "bn_last_layer.keras"
    model.save(path)
    return [path]


def channels_first(x: np.ndarray, y: np.ndarray) -> list[Path]:
    """Channels-first images (batch, 3, 16, 16). `axis=-1` is the mistake (it keeps the width
    axis, one statistic per image column); `axis=1` is correct (one per channel)."""
    import keras

    x_first = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    written = []
    for stem, axis in (("channels_first_wrong_axis", -1), ("channels_first_axis1", 1)):
        keras.utils.set_random_seed(4)
        model = keras.Sequential([
            keras.Input((3, 16, 16), name="image"),
            keras.layers.Conv2D(8, 3, padding="same", use_bias=False, data_format="channels_first", name="conv"),
            keras.layers.BatchNormalization(axis=axis, name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.GlobalAveragePooling2D(data_format="channels_first", name="gap"),
            keras.layers.Dense(CLASSES, activation="softmax", name="classes"),
        ], name=stem)
        fit(keras, model, x_first, y)
        path = HERE / f"{stem}.keras"
        model.save(path)
        written.append(path)
    return written


def nested(x: np.ndarray, y: np.ndarray) -> list[Path]:
    """A Functional model holding a Sequential block and a Functional residual block: the BN layers
    are `stem_bn`, `block/bn` and `residual/bn`."""
    import keras

    keras.utils.set_random_seed(5)
    layers = keras.layers
    block = keras.Sequential([
        keras.Input((16, 16, 8)),
        layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(name="relu"),
    ], name="block")
    residual_input = keras.Input((16, 16, 8))
    branch = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(residual_input)
    branch = layers.BatchNormalization(name="bn")(branch)
    residual = keras.Model(residual_input, layers.Add(name="add")([residual_input, branch]), name="residual")

    image = keras.Input(IMAGE_SHAPE, name="image")
    h = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(image)
    h = layers.BatchNormalization(name="stem_bn")(h)
    h = layers.ReLU(name="stem_relu")(h)
    h = residual(block(h))
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(image, layers.Dense(CLASSES, activation="softmax", name="classes")(h), name="nested")
    fit(keras, model, x, y)
    path = HERE / "nested.keras"
    model.save(path)
    return [path]


def sample_data() -> list[Path]:
    """64 images from the training distribution (other samples), for `probe` and `recalibrate`."""
    x, _ = image_data(64, seed=100)
    path = HERE / "cnn_data.npy"
    np.save(path, x)
    return [path]


def main() -> None:
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    x, y = image_data(TRAIN_SAMPLES, seed=0)
    written: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf-keras warns that .h5 is legacy: that is the point here
        written += keras3_cnns(x, y)
        written += tf_keras_cnns(x, y)
        written += bn_last_layer()
        written += channels_first(x, y)
        written += nested(x, y)
        written += sample_data()
    for path in written:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        print(f"{size / 1024:7.1f} KB  {path.relative_to(HERE)}")


if __name__ == "__main__":
    main()
