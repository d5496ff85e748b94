"""The architecture sweep (issue 16): bninspect on every keras.applications family with BatchNormalization.

Each model is built with `weights=None` at the smallest input its constructor accepts, fit for two
steps on random images (so its moving statistics moved and its optimizer counted the steps), and
saved as `.keras` and legacy `.h5`, by Keras 3 and by tf-keras. Every saved file is then read the
way users read it, through `bninspect.inspect` and `bninspect check --format json`, and compared with
Keras' own view of the live model (`bn_model_zoo.expected_bn_layers`): the BN layers, their config,
their arrays, the step count, and the findings, each of which is explained in docs/usage.md
("Real architectures").

The fine-tuning models at the end are the case BN019 is for: a MobileNetV2 backbone inside
`inputs -> base(inputs) -> GlobalAveragePooling2D -> Dense`, called plainly, with training=False,
and frozen.

Each model is built once (module-scoped parametrised fixtures: pytest finishes the tests of one
model and deletes its files before it builds the next). TensorFlow is imported inside functions only.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import bninspect
from bninspect.cli import app
from bn_model_zoo import ExpectedBN, expected_bn_layers, randomize_bn_weights

pytestmark = pytest.mark.slow

LIBRARIES = ("keras", "tf_keras")
# File suffix -> the format bninspect reports for it.
FORMATS = {"keras": "keras-v3", "h5": "h5-legacy"}
CLASSES = 3
BATCH = 2
STEPS = 2
CONFIG_FIELDS = ("axis", "epsilon", "momentum", "center", "scale", "trainable")
# After two steps every BN layer still holds momentum ** 2 of its initial 0/1 statistics: 98% at
# Keras' default momentum 0.99, 99.8% at the 0.999 of MobileNetV2/V3. Nothing else is expected.
UNCONVERGED = frozenset({"BN018"})


@dataclass(frozen=True)
class Architecture:
    constructor: str          # the keras.applications function
    size: int                 # the smallest input size it accepts (square, 3 channels)
    bn_layers: int            # how many BN layers Keras builds for it
    libraries: tuple[str, ...] = LIBRARIES
    warnings: frozenset[str] = UNCONVERGED

    def __str__(self) -> str:
        return self.constructor


ARCHITECTURES = (
    Architecture("ResNet50", 32, 53),
    Architecture("ResNet50V2", 32, 49),
    Architecture("MobileNet", 32, 27),
    Architecture("MobileNetV2", 32, 52),
    Architecture("MobileNetV3Small", 32, 34),
    Architecture("MobileNetV3Large", 32, 46),
    Architecture("EfficientNetB0", 32, 49),
    Architecture("EfficientNetV2B0", 32, 59),
    Architecture("DenseNet121", 32, 121),
    Architecture("InceptionV3", 75, 94),
    Architecture("InceptionResNetV2", 75, 204),
    Architecture("Xception", 71, 40),
    Architecture("NASNetMobile", 32, 192),
    # Keras 3 has no RegNet (nor ResNetRS) in keras.applications; tf-keras has both.
    Architecture("RegNetX002", 32, 44, libraries=("tf_keras",)),
)
SWEEP = [(library, architecture) for architecture in ARCHITECTURES for library in architecture.libraries]


def _library(name: str) -> Any:
    """keras or tf_keras, imported only when a fixture needs it."""
    import importlib

    return importlib.import_module(name)


def random_images(size: int, low: float = 0.0, high: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """STEPS batches of images with pixels uniform in [low, high] (raw pixels by default), and
    labels in range(CLASSES)."""
    rng = np.random.default_rng(0)
    samples = STEPS * BATCH
    x = rng.uniform(low, high, (samples, size, size, 3)).astype("float32")
    return x, np.arange(samples) % CLASSES


def fit_briefly(K: Any, model: Any, images: tuple[np.ndarray, np.ndarray]) -> None:
    """STEPS optimizer steps. Eager fit: for two steps it is faster than tracing the train step
    (ResNet50 5 s vs 10 s). Clipping each variable's gradient norm keeps the steps small: unclipped
    SGD on raw pixels blows some gamma up to ~5000 in two steps (a true BN007 that says nothing about
    the architecture). Not a global clip: that shrinks the updates of some BN layers' gamma below
    float32's resolution at 1.0 (MobileNetV2's block_16_project_BN: gamma stays exactly 1, a
    BN002 about the clip, not the model)."""
    optimizer = K.optimizers.SGD(learning_rate=0.01, clipnorm=1.0)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", run_eagerly=True)
    x, y = images
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def save_in_every_format(model: Any, folder: Path, stem: str) -> dict[str, Path]:
    files = {suffix: folder / f"{stem}.{suffix}" for suffix in FORMATS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "HDF5 is considered legacy"
        for path in files.values():
            model.save(path)
    return files


def optimizer_steps(model: Any) -> int:
    return int(np.asarray(model.optimizer.iterations))


@dataclass(frozen=True)
class SweptModel:
    library: str
    architecture: Architecture
    model: Any
    expected: tuple[ExpectedBN, ...]
    steps: int
    files: dict[str, Path]
    seconds: float            # build + fit + save

    @property
    def keras_version(self) -> str:
        return _library(self.library).__version__


@pytest.fixture(scope="module", params=SWEEP, ids=[f"{library}-{arch}" for library, arch in SWEEP])
def swept(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    library, architecture = request.param
    K = _library(library)
    folder = tmp_path_factory.mktemp(f"{library}_{architecture}")
    start = time.perf_counter()
    K.utils.set_random_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "input shape not in [96, 128, 160, 192, 224]" and the like
        model = getattr(K.applications, architecture.constructor)(
            weights=None, input_shape=(architecture.size, architecture.size, 3), classes=CLASSES)
    fit_briefly(K, model, random_images(architecture.size))
    files = save_in_every_format(model, folder, architecture.constructor)
    seconds = time.perf_counter() - start
    yield SweptModel(library, architecture, model, expected_bn_layers(model), optimizer_steps(model), files,
                     seconds)
    # Up to 0.9 GB per model (InceptionResNetV2 from tf-keras): not kept for pytest's last runs.
    shutil.rmtree(folder, ignore_errors=True)
    K.backend.clear_session()


def check_json(path: Path) -> tuple[int, dict]:
    """`bninspect check PATH --format json`: exit code and the one model entry."""
    result = CliRunner().invoke(app, ["check", str(path), "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    document = json.loads(result.stdout)
    (entry,) = document["models"]
    return result.exit_code, entry


def assert_layer_matches(read: Any, want: ExpectedBN) -> None:
    """One BN layer read from the file (`bninspect.model.BNLayer`) against Keras' view of it."""
    assert read.class_name == want.class_name, want.path
    for name in CONFIG_FIELDS:
        assert getattr(read, name) == pytest.approx(getattr(want, name)), f"{want.path} {name}"
    present = read.arrays()
    assert set(present) == set(want.arrays), want.path
    for name, array in want.arrays.items():
        # Both sides are float64 copies of the float32 values the file stores: exact.
        np.testing.assert_array_equal(present[name], array, err_msg=f"{want.path} {name}")


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_bn_layer_reads_as_keras_holds_it(swept, suffix):
    description = bninspect.inspect(swept.files[suffix]).description
    assert description.format == FORMATS[suffix]
    assert description.keras_version == swept.keras_version
    assert description.training_steps == swept.steps == STEPS
    assert len(swept.expected) == swept.architecture.bn_layers
    read = {bn.path: bn for bn in description.bn_layers}
    assert sorted(read) == sorted(want.path for want in swept.expected)
    for want in swept.expected:
        assert_layer_matches(read[want.path], want)


@pytest.mark.parametrize("suffix", FORMATS)
def test_check_passes_with_only_the_expected_warnings(swept, suffix):
    exit_code, entry = check_json(swept.files[suffix])
    assert entry["error"] is None
    assert entry["training_steps"] == swept.steps
    assert [layer["path"] for layer in entry["bn_layers"]] == [want.path for want in swept.expected]
    errors = [finding for finding in entry["findings"] if finding["severity"] == "error"]
    assert errors == []
    assert exit_code == 0
    warned = [finding for finding in entry["findings"] if finding["severity"] == "warning"]
    assert {finding["code"] for finding in warned} == swept.architecture.warnings, warned[:5]
    # BN018 on every BN layer, each once: none of them has had the steps to converge.
    bn018 = sorted(finding["layer"] for finding in warned if finding["code"] == "BN018")
    assert bn018 == sorted(want.path for want in swept.expected)


def test_a_fine_tuning_model_around_it_gets_bn019(swept):
    """Keras names each applications model after its architecture (`resnet50`, `NASNet`,
    `efficientnetv2-b0`, ...): BN019 must recognise every one of them as a pretrained backbone."""
    K = _library(swept.library)
    base = swept.model
    inputs = K.Input(base.input_shape[1:])
    outputs = K.layers.Dense(CLASSES, name="fine_tune_head")(base(inputs))
    report = bninspect.inspect(K.Model(inputs, outputs, name="fine_tune"))
    bn019 = [finding for finding in report.findings if finding.code == "BN019"]
    assert [finding.layer for finding in bn019] == [base.name]
    count = swept.architecture.bn_layers
    assert f"{count} of its {count} BN layers are trainable" in bn019[0].message


# --- the fine-tuning pitfall (BN019) ---------------------------------------------------------------

FINE_TUNE_SIZE = 32
FINE_TUNE_BN_LAYERS = 52          # MobileNetV2
FINE_TUNE_VARIANTS = ("called_plainly", "training_false", "frozen")


def fine_tuning_model(K: Any, variant: str) -> Any:
    """inputs -> MobileNetV2 base -> GlobalAveragePooling2D -> Dense, as in Keras' transfer-learning
    guide; `variant` says how the base is used. The base's BN arrays get random values, standing in
    for the pretrained statistics that weights=None cannot download."""
    base = K.applications.MobileNetV2(weights=None, include_top=False,
                                      input_shape=(FINE_TUNE_SIZE, FINE_TUNE_SIZE, 3))
    randomize_bn_weights(base, seed=3)
    if variant == "frozen":
        base.trainable = False
    inputs = K.Input((FINE_TUNE_SIZE, FINE_TUNE_SIZE, 3))
    x = base(inputs, training=False) if variant == "training_false" else base(inputs)
    x = K.layers.GlobalAveragePooling2D()(x)
    return K.Model(inputs, K.layers.Dense(CLASSES, activation="softmax")(x), name=f"fine_tune_{variant}")


def moving_statistics(model: Any) -> list[np.ndarray]:
    return [np.array(variable) for variable in model.non_trainable_weights if "moving" in variable.name]


@dataclass(frozen=True)
class FineTuneFile:
    library: str
    path: Path
    base_name: str
    # Keras' own answer to "did fit run the base's BN layers in training mode": their moving
    # statistics changed during the fit steps.
    base_statistics_moved: bool


@pytest.fixture(scope="module", params=LIBRARIES)
def fine_tune_files(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], FineTuneFile]:
    """(variant, suffix) -> the saved fine-tuning model."""
    K = _library(request.param)
    folder = tmp_path_factory.mktemp(f"{request.param}_fine_tune")
    files = {}
    for variant in FINE_TUNE_VARIANTS:
        K.utils.set_random_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = fine_tuning_model(K, variant)
        (base,) = (layer for layer in model.layers if hasattr(layer, "layers"))
        before = moving_statistics(base)
        # Pixels in [-1, 1], what MobileNetV2's preprocess_input gives.
        fit_briefly(K, model, random_images(FINE_TUNE_SIZE, -1.0, 1.0))
        moved = any(not np.array_equal(old, new) for old, new in zip(before, moving_statistics(base)))
        for suffix, path in save_in_every_format(model, folder, variant).items():
            files[variant, suffix] = FineTuneFile(request.param, path, base.name, moved)
    return files


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("variant", FINE_TUNE_VARIANTS)
def test_bn019_exactly_when_fit_runs_the_base_in_training_mode(fine_tune_files, variant, suffix):
    """BN019 must fire where fine-tuning overwrites the base's statistics and nowhere else; Keras
    itself says where: the base's moving statistics moved during the two fit steps or not."""
    saved = fine_tune_files[variant, suffix]
    exit_code, entry = check_json(saved.path)
    assert entry["error"] is None
    assert len(entry["bn_layers"]) == FINE_TUNE_BN_LAYERS
    assert all(layer["path"].startswith(saved.base_name + "/") for layer in entry["bn_layers"])
    assert [finding for finding in entry["findings"] if finding["severity"] == "error"] == []
    assert exit_code == 0
    warned = {finding["code"] for finding in entry["findings"] if finding["severity"] == "warning"}
    assert warned == ({"BN019"} if saved.base_statistics_moved else set())
    bn019 = [finding for finding in entry["findings"] if finding["code"] == "BN019"]
    if saved.base_statistics_moved:
        assert [finding["layer"] for finding in bn019] == [saved.base_name]
        assert f"{FINE_TUNE_BN_LAYERS} of its {FINE_TUNE_BN_LAYERS} BN layers" in bn019[0]["message"]
    bn013 = sorted(finding["layer"] for finding in entry["findings"] if finding["code"] == "BN013")
    assert bn013 == (sorted(layer["path"] for layer in entry["bn_layers"]) if variant == "frozen" else [])


def test_fit_runs_the_base_in_training_mode_exactly_where_expected(fine_tune_files):
    """What the BN019 test above relies on, spelled out: a base called plainly and unfrozen has its
    statistics overwritten by fit, a frozen one does not, in both libraries. `training=False` keeps
    them in tf-keras; Keras 3 up to 3.15 lets fit's training=True override it (keras-team/keras
    pull request 23364, not in 3.15), so there the statistics move too."""
    moved = {variant: fine_tune_files[variant, "keras"].base_statistics_moved for variant in FINE_TUNE_VARIANTS}
    assert moved["called_plainly"] and not moved["frozen"]
    library = fine_tune_files["frozen", "keras"].library
    version = tuple(int(part) for part in _library(library).__version__.split(".")[:2])
    assert moved["training_false"] == (library == "keras" and version < (3, 16))
