"""Every format round-trips: what Keras saved is what bninspect reads, layer by layer, array by array.

The models come from conftest: every BN variant, nested models, distinct random values in every
array. Bad input must give a ModelReadError with a reason, and a one-line CLI error with exit 2.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bninspect import loaders
from bninspect.model import ModelDescription, ModelReadError
from bn_model_zoo import expected_bn_layers, randomize_bn_weights

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CASE_IDS = ("keras3-keras", "keras3-keras-no-name-attrs", "keras3-keras-swapped-keys", "keras3-keras-deflated",
            "keras3-weights-h5", "keras3-legacy-h5",
            "tf-keras-h5", "tf-keras-weights-h5", "old-keras-naming-h5", "old-keras-naming-weights-h5",
            "tf-keras-savedmodel")
CONFIG_FIELDS = ("axis", "epsilon", "momentum", "center", "scale", "trainable")


def assert_same_bn_layers(description: ModelDescription, expected, has_config: bool) -> None:
    got = {bn.path: bn for bn in description.bn_layers}
    assert sorted(got) == sorted(e.path for e in expected)
    for want in expected:
        bn = got[want.path]
        present = bn.arrays()
        # Without a config a Keras 3 weights tree (numbered variables) cannot tell gamma from beta
        # when only one of them exists; the reader then reports just the moving statistics.
        ambiguous = not has_config and description.format in ("weights-v3", "keras-v3") and want.center != want.scale
        expected_names = ({"moving_mean", "moving_variance"} if ambiguous else set(want.arrays))
        assert set(present) == expected_names, want.path
        for name in expected_names:
            np.testing.assert_array_equal(present[name], want.arrays[name], err_msg=f"{want.path} {name}")
        if has_config:
            assert bn.class_name == want.class_name, want.path
            for name in CONFIG_FIELDS:
                assert getattr(bn, name) == pytest.approx(getattr(want, name)), f"{want.path} {name}"
        else:
            assert all(getattr(bn, name) is None for name in CONFIG_FIELDS), want.path


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_saved_file_round_trips(case_id, saved_bn_cases):
    case = saved_bn_cases[case_id]
    description = loaders.load(case.path)
    assert description.format == case.format
    assert description.has_config == case.has_config
    assert description.keras_version == case.keras_version
    assert_same_bn_layers(description, case.expected, case.has_config)


@pytest.mark.parametrize("case_id", ("keras3-keras", "tf-keras-h5", "tf-keras-savedmodel"))
def test_graph_is_read_through_nested_models(case_id, saved_bn_cases):
    description = loaders.load(saved_bn_cases[case_id].path)
    assert description.outputs == ("bn_out",)
    # The first layer inside a nested model is fed by whatever feeds the nested model.
    assert description.layer("residual/deep/deep_conv").inbound == ("block/bn",)
    deep_bn = next(bn.path for bn in description.bn_layers if bn.path.startswith("residual/deep/"))
    assert description.layer("residual/bn").inbound == (deep_bn,)
    assert description.layer("conv_cf").inbound == ("residual/bn",)
    assert description.layer("conv_cf").config["data_format"] == "channels_first"


def test_input_files_are_not_written(saved_bn_cases):
    stamps = {case.path: (case.path.stat().st_mtime_ns, case.path.stat().st_size)
              for case in saved_bn_cases.values() if case.path.is_file()}
    for path in stamps:
        loaders.load(path)
    assert stamps == {path: (path.stat().st_mtime_ns, path.stat().st_size) for path in stamps}


@pytest.mark.parametrize("library", ("keras3", "tf_keras"))
def test_in_memory_model_matches_keras(library, keras3_bn_model, tf_keras_bn_model):
    from bninspect.loaders.in_memory import describe_keras_model

    model = keras3_bn_model if library == "keras3" else tf_keras_bn_model
    description = describe_keras_model(model)
    assert description.has_config
    library_module = __import__("keras" if library == "keras3" else "tf_keras")
    assert description.keras_version == library_module.__version__
    assert_same_bn_layers(description, expected_bn_layers(model), has_config=True)


@pytest.mark.parametrize("library,case_id", (("keras3", "keras3-keras"), ("tf_keras", "tf-keras-h5")))
def test_in_memory_model_reads_like_its_file(library, case_id, keras3_bn_model, tf_keras_bn_model, saved_bn_cases):
    from bninspect.loaders.in_memory import describe_keras_model

    live = describe_keras_model(keras3_bn_model if library == "keras3" else tf_keras_bn_model)
    saved = loaders.load(saved_bn_cases[case_id].path)
    assert [layer.path for layer in live.layers] == [layer.path for layer in saved.layers]
    assert [layer.inbound for layer in live.layers] == [layer.inbound for layer in saved.layers]
    assert live.outputs == saved.outputs


def test_savedmodel_without_keras_metadata_file_reads_metadata_from_saved_model_pb(saved_bn_cases, tmp_path):
    """TF 2.0-2.4 kept the Keras metadata in saved_model.pb; rebuild such a directory."""
    from tensorflow.core.protobuf import saved_model_pb2

    from bninspect.loaders.savedmodel import _nodes_from_saved_metadata

    case = saved_bn_cases["tf-keras-savedmodel"]
    old = tmp_path / "old_savedmodel"
    shutil.copytree(case.path, old)
    nodes = _nodes_from_saved_metadata((old / "keras_metadata.pb").read_bytes())
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((old / "saved_model.pb").read_bytes())
    objects = saved_model.meta_graphs[0].object_graph_def.nodes
    for node_id, node in _node_ids_by_path(objects).items():
        match = next((n for n in nodes if n.node_path == node), None)
        if match is not None:
            import json

            objects[node_id].user_object.metadata = json.dumps(match.metadata)
    (old / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    (old / "keras_metadata.pb").unlink()
    description = loaders.load(old)
    assert description.has_config
    assert_same_bn_layers(description, case.expected, has_config=True)


def _node_ids_by_path(objects) -> dict[int, str]:
    paths = {0: "root"}
    queue = [0]
    for node_id in queue:
        for child in objects[node_id].children:
            if child.node_id not in paths:
                paths[child.node_id] = f"{paths[node_id]}.{child.local_name}"
                queue.append(child.node_id)
    return paths


def test_savedmodel_without_any_keras_metadata_is_read_by_variable_names(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1, name="conv"),
                              keras.layers.BatchNormalization(name="bn")], name="net")
    rng = np.random.default_rng(5)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.1, 2, w.shape) for w in bn.get_weights()])
    model.export(tmp_path / "exported", verbose=False)
    description = loaders.load(tmp_path / "exported")
    assert not description.has_config
    assert description.notes
    (read,) = description.bn_layers
    assert read.path.endswith("bn")
    for name, value in zip(("gamma", "beta", "moving_mean", "moving_variance"), bn.get_weights()):
        np.testing.assert_array_equal(read.arrays()[name], value)


@pytest.mark.parametrize("kind", ("keras", "weights_h5", "legacy_h5"))
def test_static_loading_imports_neither_tensorflow_nor_keras(kind, keras3_bn_files):
    code = ("import bninspect.loaders as l, sys; d = l.load(sys.argv[1]); assert d.bn_layers; "
            "bad = [m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code, str(keras3_bn_files[kind])], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_static_loading_of_tf_keras_h5_imports_no_tensorflow(tf_keras_bn_files):
    code = ("import bninspect.loaders as l, sys; [l.load(p) for p in sys.argv[1:]]; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    paths = [str(tf_keras_bn_files[kind]) for kind in ("h5", "weights_h5", "old_naming_h5")]
    result = subprocess.run([sys.executable, "-c", code, *paths], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


# --- bad input ---------------------------------------------------------------------------------


def _truncated(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _zip_without_config(source: Path, target: Path) -> Path:
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            if info.filename != "config.json":
                out.writestr(info.filename, archive.read(info.filename))
    return target


def _zip_bomb(source: Path, target: Path) -> Path:
    """A .keras whose compressed weights member expands a thousandfold (and is not HDF5 at all)."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("config.json", archive.read("config.json"))
        out.writestr("model.weights.h5", bytes(16 * 1024 * 1024))
    return target


def _hdf5_without_model(target: Path) -> Path:
    import h5py

    with h5py.File(target, "w") as handle:
        handle.create_dataset("numbers", data=np.arange(3))
    return target


def _mismatched_shapes(source: Path, target: Path) -> Path:
    """A legacy .h5 whose first BN layer has a moving variance one channel shorter than the rest."""
    import h5py

    shutil.copyfile(source, target)
    with h5py.File(target, "r+") as handle:
        group = handle["model_weights"]["bn"]
        name = next(n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]
                    if "moving_variance" in (n.decode() if isinstance(n, bytes) else n))
        values = group[name][()]
        del group[name]
        group.create_dataset(name, data=values[:-1])
    return target


BAD_INPUTS = {
    "missing": (lambda cases, tmp: tmp / "no_such_model.h5", "no such file"),
    "empty": (lambda cases, tmp: _write(tmp / "empty.h5", b""), "empty"),
    "truncated-h5": (lambda cases, tmp: _truncated(cases["tf-keras-h5"].path, tmp / "cut.h5"), "truncated"),
    "truncated-keras": (lambda cases, tmp: _truncated(cases["keras3-keras"].path, tmp / "cut.keras"), "zip"),
    "not-hdf5": (lambda cases, tmp: _write(tmp / "notes.h5", b"just some text, not a model\n" * 10),
                 "not an HDF5 file"),
    "not-a-zip": (lambda cases, tmp: _write(tmp / "fake.keras", b"PK\x03\x04" + b"\x00" * 200), "zip"),
    "zip-without-config": (lambda cases, tmp: _zip_without_config(cases["keras3-keras"].path, tmp / "nocfg.keras"),
                           "config.json"),
    "zip-bomb-weights": (lambda cases, tmp: _zip_bomb(cases["keras3-keras"].path, tmp / "bomb.keras"), "zip bomb"),
    "hdf5-without-model": (lambda cases, tmp: _hdf5_without_model(tmp / "data.h5"), "no Keras model"),
    "mismatched-shapes": (lambda cases, tmp: _mismatched_shapes(cases["tf-keras-h5"].path, tmp / "mismatch.h5"),
                          "different lengths"),
    "directory-without-model": (lambda cases, tmp: _mkdir(tmp / "empty_dir"), "not a SavedModel"),
    "savedmodel-without-variables": (lambda cases, tmp: _broken_savedmodel(cases, tmp, "no_variables"), "variables"),
    "savedmodel-truncated-variables": (lambda cases, tmp: _broken_savedmodel(cases, tmp, "cut_variables"),
                                       "variables"),
    "savedmodel-truncated-keras-metadata": (lambda cases, tmp: _broken_savedmodel(cases, tmp, "cut_metadata"),
                                            "keras_metadata.pb"),
    "savedmodel-garbage-saved-model-pb": (lambda cases, tmp: _broken_savedmodel(cases, tmp, "garbage_pb"),
                                          "saved_model.pb"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _broken_savedmodel(cases, tmp: Path, how: str) -> Path:
    target = tmp / f"{how}_savedmodel"
    shutil.copytree(cases["tf-keras-savedmodel"].path, target)
    if how == "no_variables":
        shutil.rmtree(target / "variables")
    elif how == "cut_variables":
        (data_file,) = (target / "variables").glob("variables.data-*")
        _truncated(data_file, data_file)
    elif how == "cut_metadata":
        _truncated(target / "keras_metadata.pb", target / "keras_metadata.pb")
    elif how == "garbage_pb":
        # Without keras_metadata.pb the Keras metadata is looked for in saved_model.pb (TF <= 2.4).
        (target / "keras_metadata.pb").unlink()
        _write(target / "saved_model.pb", b"\xff" * 64)
    return target


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_gives_a_read_error_with_a_reason(kind, saved_bn_cases, tmp_path):
    make, reason_part = BAD_INPUTS[kind]
    path = make(saved_bn_cases, tmp_path)
    with pytest.raises(ModelReadError) as caught:
        loaders.load(path)
    assert caught.value.source == str(path)
    assert reason_part.lower() in caught.value.reason.lower()
    assert caught.value.reason and "\n" not in caught.value.reason


@pytest.mark.parametrize("kind", ("missing", "empty", "truncated-h5", "not-a-zip", "mismatched-shapes"))
def test_cli_reports_bad_input_in_one_line(kind, saved_bn_cases, tmp_path):
    from typer.testing import CliRunner

    from bninspect.cli import app

    path = BAD_INPUTS[kind][0](saved_bn_cases, tmp_path)
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # Click 8.2 keeps stderr apart by default and dropped the argument
        runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def _subclassed(K):
    class Net(K.Model):
        def __init__(self):
            super().__init__(name="net")
            self.conv = K.layers.Conv2D(3, 1, name="conv")
            self.bn = K.layers.BatchNormalization(epsilon=1e-4, name="bn")
            self.block = K.Sequential([K.layers.Conv2D(2, 1, name="conv"),
                                       K.layers.BatchNormalization(center=False, name="bn")], name="block")

        def call(self, inputs, training=None):
            return self.block(self.bn(self.conv(inputs), training=training), training=training)

    model = Net()
    model(np.zeros((1, 4, 4, 3), np.float32))
    randomize_bn_weights(model, seed=9)
    return model


def _assert_layers_and_their_own_configs(description, model):
    """A subclassed model has no graph config; the BN layers and their own configs still read."""
    assert not description.has_config and description.notes
    expected = expected_bn_layers(model)
    assert [bn.path for bn in description.bn_layers] == [e.path for e in expected] == ["bn", "block/bn"]
    for bn, want in zip(description.bn_layers, expected):
        assert set(bn.arrays()) == set(want.arrays)
        for name, values in want.arrays.items():
            np.testing.assert_array_equal(bn.arrays()[name], values)
        assert (bn.epsilon, bn.center, bn.scale) == (pytest.approx(want.epsilon), want.center, want.scale)


@pytest.mark.parametrize("library", ("keras", "tf_keras"))
def test_in_memory_subclassed_model(library):
    from bninspect.loaders.in_memory import describe_keras_model

    model = _subclassed(__import__(library))
    _assert_layers_and_their_own_configs(describe_keras_model(model, source="notebook", fmt="keras-v3"), model)


def test_savedmodel_of_a_subclassed_model(tmp_path):
    import tf_keras

    model = _subclassed(tf_keras)
    model.save(tmp_path / "subclassed", save_format="tf")
    description = loaders.load(tmp_path / "subclassed")
    assert description.format == "savedmodel"
    _assert_layers_and_their_own_configs(description, model)


def test_in_memory_unbuilt_model_is_refused_with_a_reason():
    import keras

    from bninspect.loaders.graph import ConfigError
    from bninspect.loaders.in_memory import describe_keras_model

    model = keras.Sequential([keras.layers.Dense(2), keras.layers.BatchNormalization(name="bn")])
    with pytest.raises(ConfigError, match="not built"):
        describe_keras_model(model)


@pytest.mark.parametrize("suffix,fmt", ((".keras", "keras-v3"), (".h5", "h5-legacy")))
def test_keras3_subclassed_model_file_is_read_from_its_weights(suffix, fmt, tmp_path):
    """The config of a subclassed model lists no layers; its BN layers must not silently vanish."""
    import keras

    model = _subclassed(keras)
    path = tmp_path / f"net{suffix}"
    model.save(path)
    description = loaders.load(path)
    assert description.format == fmt
    assert not description.has_config and description.architecture.kind == "code"
    assert description.architecture.class_name == "Net" and "architecture is code" in description.notes[0]
    assert_same_bn_layers(description, expected_bn_layers(model), has_config=False)


def _wrapped_and_custom(K):
    """BN layers the model graph does not list: in a TimeDistributed wrapper and in a custom layer."""
    class ConvBN(K.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = K.layers.Conv2D(4, 1, name="conv")
            self.bn = K.layers.BatchNormalization(momentum=0.7, name="bn")

        def call(self, inputs, training=None):
            return self.bn(self.conv(inputs), training=training)

    frames = K.Input((5, 6, 6, 3))
    x = K.layers.TimeDistributed(K.layers.BatchNormalization(epsilon=1e-2, name="td_bn"), name="td")(frames)
    x = K.layers.Reshape((30, 6, 3), name="reshape")(x)
    model = K.Model(frames, ConvBN(name="block")(x), name="wrapped")
    randomize_bn_weights(model, seed=11)
    return model


@pytest.fixture(scope="module")
def wrapped_and_custom_files(tmp_path_factory):
    import warnings

    import keras
    import tf_keras

    folder = tmp_path_factory.mktemp("wrapped")
    models = {"keras3": _wrapped_and_custom(keras), "tf_keras": _wrapped_and_custom(tf_keras)}
    files = {"keras3-keras": ("keras3", folder / "m.keras"), "keras3-legacy-h5": ("keras3", folder / "m3.h5"),
             "tf-keras-h5": ("tf_keras", folder / "m2.h5"), "tf-keras-savedmodel": ("tf_keras", folder / "m2_sm")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for library, path in files.values():
            models[library].save(path, **({"save_format": "tf"} if path.suffix == "" else {}))
    return models, files


@pytest.mark.parametrize("case_id", ("keras3-keras", "keras3-legacy-h5", "tf-keras-h5", "tf-keras-savedmodel",
                                     "keras3-in-memory", "tf-keras-in-memory"))
def test_bn_inside_wrappers_and_custom_layers_is_found(case_id, wrapped_and_custom_files):
    from bninspect.loaders.in_memory import describe_keras_model

    models, files = wrapped_and_custom_files
    if case_id.endswith("in-memory"):
        model = models["keras3" if case_id.startswith("keras3") else "tf_keras"]
        description = describe_keras_model(model)
    else:
        library, path = files[case_id]
        model = models[library]
        description = loaders.load(path)
    expected = {bn.path: bn for bn in expected_bn_layers(model)}
    got = {bn.path: bn for bn in description.bn_layers}
    assert sorted(got) == sorted(expected) == ["block/bn", "td/td_bn"]
    for path, want in expected.items():
        for name, values in want.arrays.items():
            np.testing.assert_array_equal(got[path].arrays()[name], values)
    # A wrapped layer's config is in the wrapper's; a custom layer's sublayers have none in the
    # files (SavedModel metadata and live models do have it).
    assert got["td/td_bn"].epsilon == pytest.approx(1e-2)
    has_inner_config = case_id.endswith(("in-memory", "savedmodel"))
    assert got["block/bn"].momentum == (pytest.approx(0.7) if has_inner_config else None)


def _heap_free_space_zeroed(source: Path, target: Path) -> Path:
    """A .keras whose weights file has the free-space entry of its global heap (where the `name`
    strings live) set to size 0: HDF5 1.14 loops forever reading such a heap."""
    import struct

    with zipfile.ZipFile(source) as archive:
        members = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    weights = bytearray(members["model.weights.h5"])
    heap = weights.find(b"GCOL\x01")
    size = struct.unpack_from("<Q", weights, heap + 8)[0]
    position = heap + 16
    while struct.unpack_from("<H", weights, position)[0] != 0:
        position += 16 + (struct.unpack_from("<Q", weights, position + 8)[0] + 7) // 8 * 8
        assert position < heap + size
    struct.pack_into("<Q", weights, position + 8, 0)
    members["model.weights.h5"] = bytes(weights)
    with zipfile.ZipFile(target, "w") as out:
        for name, data in members.items():
            out.writestr(name, data)
    return target


def test_damaged_global_heap_fails_instead_of_hanging(saved_bn_cases, tmp_path):
    path = _heap_free_space_zeroed(saved_bn_cases["keras3-keras"].path, tmp_path / "heap.keras")
    code = ("import sys; from bninspect import loaders; from bninspect.model import ModelReadError\n"
            "try:\n    loaders.load(sys.argv[1])\nexcept ModelReadError as error:\n    print(error.reason)")
    # In a child process: if the guard regressed, HDF5 would hang this test run forever.
    result = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "global heap" in result.stdout
