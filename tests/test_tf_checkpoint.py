"""TF-format checkpoints: `save_weights("dir/ckpt")` (no .h5), `tf.train.Checkpoint(...).save/.write`,
a TF1 `Saver` checkpoint, read from real files written here with tf-keras, Keras 3 and TensorFlow.

Which checkpoint a path names, and what `check DIR` lists, are tested on plain files without
TensorFlow; everything that writes a checkpoint is `slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect import loaders
from bninspect.checking import inspect_path
from bninspect.cli import app
from bninspect.loaders.tf_checkpoint import checkpoint_prefix
from bninspect.model import ModelReadError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
DATA_SHARD = ".data-00000-of-00001"


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def run_json(*args: str) -> tuple[int, dict]:
    result = run(*args, "--format", "json")
    return result.exit_code, json.loads(result.stdout)


def codes(report) -> set[str]:
    return {finding.code for finding in report.findings}


# --- which checkpoint a path names, what `check DIR` lists (no TensorFlow) --------------------


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_checkpoint_directory_is_one_model_and_a_savedmodel_index_is_not_listed(tmp_path):
    ckpt = tmp_path / "training"
    _touch(ckpt / "checkpoint", 'model_checkpoint_path: "cp-0002"\n')
    for name in ("cp-0001", "cp-0002"):
        _touch(ckpt / f"{name}.index")
        _touch(ckpt / f"{name}{DATA_SHARD}")
    _touch(ckpt / "extra.h5")
    _touch(tmp_path / "loose" / "weights.index")
    _touch(tmp_path / "loose" / f"weights{DATA_SHARD}")
    _touch(tmp_path / "loose" / "vectors.index")  # a FAISS index, no data shard: not a checkpoint
    saved = tmp_path / "exported"
    _touch(saved / "saved_model.pb")
    _touch(saved / "variables" / "variables.index")
    _touch(saved / "variables" / f"variables{DATA_SHARD}")
    found = loaders.discover([tmp_path])
    assert found == [str(saved), str(tmp_path / "loose" / "weights.index"), str(ckpt), str(ckpt / "extra.h5")]
    assert loaders.discover([ckpt]) == [str(ckpt), str(ckpt / "extra.h5")]
    assert loaders.discover([tmp_path / "loose" / "weights"]) == [str(tmp_path / "loose" / "weights")]


@pytest.mark.parametrize("state, expected", [
    ('model_checkpoint_path: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-2"\n', "ckpt-3"),
    ('model_checkpoint_path: "sub dir/we\\"ird"\n', 'sub dir/we"ird'),
])
def test_the_checkpoint_file_names_the_latest_prefix(tmp_path, state, expected):
    _touch(tmp_path / "checkpoint", state)
    _touch(tmp_path / f"{expected}.index")
    assert str(checkpoint_prefix(tmp_path)) == str(tmp_path / expected)


def test_an_absolute_path_in_a_moved_directory_and_the_other_path_forms(tmp_path):
    _touch(tmp_path / "checkpoint", 'model_checkpoint_path: "/where/it/was/saved/ckpt"\n')
    _touch(tmp_path / "ckpt.index")
    assert str(checkpoint_prefix(tmp_path)) == str(tmp_path / "ckpt")
    assert str(checkpoint_prefix(tmp_path / "ckpt.index")) == str(tmp_path / "ckpt")
    assert str(checkpoint_prefix(tmp_path / f"ckpt{DATA_SHARD}")) == str(tmp_path / "ckpt")
    assert str(checkpoint_prefix(tmp_path / "ckpt")) == str(tmp_path / "ckpt")


def test_without_a_checkpoint_file_the_newest_index_is_read(tmp_path):
    old, new = _touch(tmp_path / "a.index"), _touch(tmp_path / "b.index")
    os.utime(old, (2_000_000_000, 2_000_000_000))
    os.utime(new, (1_000_000_000, 1_000_000_000))
    assert str(checkpoint_prefix(tmp_path)) == str(tmp_path / "a")


@pytest.mark.parametrize("state, reason", [
    ('model_checkpoint_path: "gone"\n', "'gone', but gone.index does not exist"),
    ("garbage\n", "names no model_checkpoint_path"),
])
def test_a_checkpoint_file_naming_nothing_readable_is_a_one_line_error(tmp_path, state, reason):
    _touch(tmp_path / "checkpoint", state)
    with pytest.raises(ModelReadError) as caught:
        loaders.load(tmp_path)
    assert caught.value.source == str(tmp_path) and reason in caught.value.reason
    assert "\n" not in str(caught.value)


# A TF1 `saver.save(session, "/home/someone/elsewhere/run_17/")` on its author's machine: the EMPTY
# prefix of that folder, its files `.index` and `.data-00000-of-00001`.
FOREIGN_EMPTY_PREFIX = "/home/someone/elsewhere/run_17/"


def _empty_prefix_checkpoint(directory: Path, state: str | None = FOREIGN_EMPTY_PREFIX) -> Path:
    _touch(directory / ".index")
    _touch(directory / DATA_SHARD)
    if state is not None:
        _touch(directory / "checkpoint", f'model_checkpoint_path: "{state}"\nall_model_checkpoint_paths: "{state}"\n')
    return directory


@pytest.mark.parametrize("state", [FOREIGN_EMPTY_PREFIX, ".", "/home/someone/elsewhere/other", "../../x/", None])
def test_an_empty_prefix_is_read_from_its_directory_whatever_the_state_file_names(tmp_path, state):
    run_17 = _empty_prefix_checkpoint(tmp_path / "run_17", state)
    for form in (run_17, run_17 / ".index", run_17 / DATA_SHARD):
        prefix = checkpoint_prefix(form)
        assert (prefix.directory, prefix.name) == (run_17, ""), form
        assert prefix.index == run_17 / ".index" and prefix.data_shards() == [run_17 / DATA_SHARD]
        assert str(prefix) == str(run_17) + os.sep  # what TensorFlow's reader takes for the empty prefix


def test_a_state_file_in_the_parent_naming_an_empty_prefix_below_it_is_followed(tmp_path):
    _touch(tmp_path / "checkpoint", 'model_checkpoint_path: "run_17/"\n')
    _empty_prefix_checkpoint(tmp_path / "run_17", state=None)
    assert str(checkpoint_prefix(tmp_path)) == str(tmp_path / "run_17") + os.sep


@pytest.mark.parametrize("named", ["absolute", "../elsewhere/"])
def test_a_state_file_naming_an_empty_prefix_outside_its_directory_is_not_followed(tmp_path, named):
    elsewhere = _empty_prefix_checkpoint(tmp_path / "elsewhere", state=None)
    model = tmp_path / "model"
    _touch(model / "checkpoint", f'model_checkpoint_path: "{str(elsewhere) + os.sep if named == "absolute" else named}"\n')
    with pytest.raises(ModelReadError) as caught:
        loaders.load(model)
    assert "outside the checkpoint directory" in caught.value.reason


def test_check_dir_lists_empty_prefix_checkpoints(tmp_path):
    run_17 = _empty_prefix_checkpoint(tmp_path / "pkg" / "run_17")
    loose = _empty_prefix_checkpoint(tmp_path / "loose", state=None)
    assert loaders.discover([tmp_path]) == [str(loose / ".index"), str(run_17)]


@pytest.mark.parametrize("given, output", [(".index", DATA_SHARD), (DATA_SHARD, ".index"), ("", DATA_SHARD)])
def test_no_output_may_name_a_file_of_an_empty_prefix_checkpoint(tmp_path, given, output):
    from bninspect.loaders.footprint import overwritten_input

    run_17 = _empty_prefix_checkpoint(tmp_path / "run_17")
    assert overwritten_input(run_17 / output, run_17 / given) is not None  # `run_17 / ""`: the directory


# --- real checkpoints ------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """A checkpoint written here, what the live model held, and how to point at it."""

    directory: Path  # the directory holding the checkpoint (and usually its `checkpoint` file)
    prefix: Path
    expected: dict[str, dict[str, np.ndarray]]  # BN path -> {array name: values}
    steps: int | None


def _arrays(layer: Any) -> dict[str, np.ndarray]:
    """A BN layer's arrays by the variables' own names (`bn1/gamma:0`, Keras 3 `gamma`)."""
    names = [variable.name.split("/")[-1].split(":")[0] for variable in layer.weights]
    return dict(zip(names, (np.asarray(value, dtype=np.float64) for value in layer.get_weights())))


def _functional(K: Any) -> Any:
    layers = K.layers
    image = K.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, use_bias=False, name="conv1")(image)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(6, 3, name="conv2")(x)
    x = layers.BatchNormalization(center=False, name="bn2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return K.Model(image, layers.Dense(2, name="head")(x), name="cnn")


def _data(steps: int, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 3.0, (steps * batch, 8, 8, 3)).astype("float32")
    return x, rng.normal(size=(steps * batch, 2)).astype("float32")


def _subclassed(K: Any) -> Any:
    class Block(K.layers.Layer):
        def __init__(self):
            super().__init__()
            self.bn = K.layers.BatchNormalization(scale=False)

        def call(self, inputs, training=None):
            return self.bn(inputs, training=training)

    class Net(K.Model):
        def __init__(self):
            super().__init__()
            self.conv = K.layers.Conv2D(4, 3)
            self.bn1 = K.layers.BatchNormalization(momentum=0.1)
            self.block = Block()
            self.pool = K.layers.GlobalAveragePooling2D()
            self.head = K.layers.Dense(2)

        def call(self, inputs, training=None):
            x = self.bn1(self.conv(inputs), training=training)
            return self.head(self.pool(self.block(x, training=training)))

    return Net()


@pytest.fixture(scope="session")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Written]:
    """{kind: Written}: `untrained` (Functional, save_weights, no optimizer), `trained` (fit with
    Adam, save_weights; also `trained.h5` in its directory's parent for diff), `legacy` (the legacy
    Adam, whose counter is `iter`), `tf_checkpoint` (`tf.train.Checkpoint(model, optimizer).save`),
    `subclassed` (named BN attributes), `keras3` (`tf.train.Checkpoint(model=...).write`, no
    `checkpoint` file), `tf1` (a `tf.compat.v1.train.Saver` checkpoint, no object graph)."""
    import warnings

    import tensorflow as tf
    import tf_keras
    import keras

    root = tmp_path_factory.mktemp("tf_checkpoints")
    found: dict[str, Written] = {}

    def save(kind: str, model: Any, bns: dict[str, Any], steps: int | None, write: Any = None,
             stem: str = "ckpt") -> None:
        directory = root / kind
        directory.mkdir()
        prefix = (write or model.save_weights)(str(directory / stem))
        prefix = Path(prefix) if isinstance(prefix, str) and prefix else directory / stem
        found[kind] = Written(directory, prefix, {path: _arrays(layer) for path, layer in bns.items()}, steps)

    x, y = _data(steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf_keras.utils.set_random_seed(0)
        model = _functional(tf_keras)
        save("untrained", model, {"bn1": model.get_layer("bn1"), "bn2": model.get_layer("bn2")}, None)

        model.compile(optimizer=tf_keras.optimizers.Adam(), loss="mse")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        bns = {"bn1": model.get_layer("bn1"), "bn2": model.get_layer("bn2")}
        save("trained", model, bns, int(model.optimizer.iterations))
        model.save(root / "trained.h5")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        save("tf_checkpoint", model, {f"model/{path}": layer for path, layer in bns.items()},
             int(model.optimizer.iterations), write=checkpoint.save, stem="ck")

        legacy = _functional(tf_keras)
        legacy.compile(optimizer=tf_keras.optimizers.legacy.Adam(), loss="mse")
        legacy.fit(x[:24], y[:24], batch_size=8, epochs=1, verbose=0)
        save("legacy", legacy, {"bn1": legacy.get_layer("bn1"), "bn2": legacy.get_layer("bn2")},
             int(legacy.optimizer.iterations))

        net = _subclassed(tf_keras)
        net.compile(optimizer="adam", loss="mse")
        net.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0)
        save("subclassed", net, {"bn1": net.bn1, "block/bn": net.block.bn}, int(net.optimizer.iterations))

    keras.utils.set_random_seed(0)
    k3 = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv"),
                           keras.layers.BatchNormalization(name="k3_bn"), keras.layers.GlobalAveragePooling2D(),
                           keras.layers.Dense(2)], name="seq")
    k3.compile(optimizer="adam", loss="mse")
    k3.fit(x, y, batch_size=8, epochs=1, verbose=0)
    # Keras 3 objects are trackable under the TF backend; `model.optimizer` is tracked by the model.
    save("keras3", k3, {"model/k3_bn": k3.get_layer("k3_bn")}, int(k3.optimizer.iterations),
         write=tf.train.Checkpoint(model=k3).write)

    found["tf1"] = _tf1_checkpoint(tf, root / "tf1")
    return found


def _tf1_checkpoint(tf: Any, directory: Path) -> Written:
    rng = np.random.default_rng(3)
    arrays = {"gamma": rng.uniform(0.5, 2, 5), "beta": rng.normal(size=5), "moving_mean": rng.normal(size=5),
              "moving_variance": rng.uniform(0.1, 3, 5)}
    directory.mkdir()
    with tf.Graph().as_default():
        for name, values in arrays.items():
            tf.compat.v1.get_variable(f"block/bn/{name}", initializer=values.astype(np.float32))
        tf.compat.v1.get_variable("block/conv/kernel", initializer=np.ones((3, 5), np.float32))
        step = tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(step.assign(7))
            prefix = saver.save(session, str(directory / "model.ckpt"))
    return Written(directory, Path(prefix), {"block/bn": arrays}, 7)


ALL_KINDS = ("untrained", "trained", "legacy", "tf_checkpoint", "subclassed", "keras3", "tf1")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_bn_layers_arrays_and_step_count_equal_the_live_model(written, kind):
    case = written[kind]
    description = loaders.load(case.directory)
    assert description.format == "tf-checkpoint" and not description.has_config
    assert [bn.path for bn in description.bn_layers] == list(case.expected)
    for bn in description.bn_layers:
        read = bn.arrays()
        assert set(read) == set(case.expected[bn.path]), bn.path
        for name, values in case.expected[bn.path].items():
            assert read[name].dtype == np.float64
            np.testing.assert_allclose(read[name], values, rtol=1e-6, err_msg=f"{bn.path} {name}")
    assert description.training_steps == case.steps


@pytest.mark.slow
def test_the_step_counter_is_the_optimizers_and_absent_without_one(written):
    assert written["untrained"].steps is None
    assert {kind: written[kind].steps for kind in ("trained", "legacy", "subclassed")} == \
        {"trained": 5, "legacy": 3, "subclassed": 2}


@pytest.mark.slow
def test_untrained_gets_bn001_trained_does_not_and_both_say_the_config_is_missing(written):
    untrained, trained = inspect_path(written["untrained"].directory), inspect_path(written["trained"].directory)
    assert {"BN001", "BN015"} <= codes(untrained)
    assert "BN001" not in codes(trained) and "BN015" in codes(trained)


@pytest.mark.slow
def test_paths_of_a_nested_functional_model_name_its_bn_layers_and_keep_the_edges_of_nested_models(
        tf_keras_bn_model, tmp_path):
    from bn_model_zoo import expected_bn_layers

    tf_keras_bn_model.save_weights(str(tmp_path / "zoo"))
    description = loaders.load(tmp_path / "zoo")
    expected = expected_bn_layers(tf_keras_bn_model)
    assert len(description.bn_layers) == len(expected)
    read = {bn.path: bn for bn in description.bn_layers}
    for bn in expected:
        if "/" not in bn.path:  # a layer of the top model: its own name
            matches = [read[bn.path]]
        else:  # in a nested model: `layer_with_weights-N/.../name`
            matches = [layer for path, layer in read.items()
                       if path.startswith("layer_with_weights-") and path.endswith("/" + bn.path.rsplit("/", 1)[-1])
                       and np.array_equal(layer.moving_mean, bn.arrays["moving_mean"])]
        assert len(matches) == 1, bn.path
        np.testing.assert_allclose(matches[0].moving_variance, bn.arrays["moving_variance"], rtol=1e-6)
    assert any("layer_with_weights-N" in note for note in description.notes)


@pytest.mark.slow
def test_every_way_of_pointing_at_the_checkpoint_gives_the_same_report(written):
    case = written["trained"]
    forms = [case.directory, case.prefix, Path(f"{case.prefix}.index"), Path(f"{case.prefix}{DATA_SHARD}")]
    documents = []
    for form in forms:
        code, document = run_json("inspect", str(form))
        assert code == 0
        (model,) = document["models"]
        assert model["path"] == str(form) and model["format"] == "tf-checkpoint" and model["error"] is None
        assert all(finding["source"] == str(form) for finding in model["findings"])
        documents.append({**model, "path": None,
                          "findings": [{**finding, "source": None} for finding in model["findings"]]})
    assert all(document == documents[0] for document in documents)
    assert documents[0]["training_steps"] == 5
    assert [layer["path"] for layer in documents[0]["bn_layers"]] == ["bn1", "bn2"]


def _registry(written, root: Path) -> dict[str, Path]:
    """A model registry: a checkpoint directory, a loose `.index` checkpoint, a SavedModel, an .h5."""
    shutil.copytree(written["untrained"].directory, root / "runs" / "untrained")
    loose = root / "loose"
    loose.mkdir()
    for suffix in (".index", DATA_SHARD):
        shutil.copyfile(f"{written['trained'].prefix}{suffix}", loose / f"weights{suffix}")
    shutil.copytree(SAMPLES / "cnn_trained_tf2_savedmodel", root / "exported")
    shutil.copyfile(SAMPLES / "cnn_trained_tf2.h5", root / "cnn.h5")
    return {"checkpoint_dir": root / "runs" / "untrained", "loose": loose / "weights.index",
            "savedmodel": root / "exported", "h5": root / "cnn.h5"}


@pytest.mark.slow
def test_check_dir_lists_each_model_once_in_every_format(written, tmp_path):
    models = _registry(written, tmp_path)
    code, document = run_json("check", str(tmp_path))
    assert code == 1  # BN001 on the untrained checkpoint
    listed = [model["path"] for model in document["models"]]
    assert sorted(listed) == sorted(str(path) for path in models.values())
    by_path = {model["path"]: model for model in document["models"]}
    assert by_path[str(models["checkpoint_dir"])]["format"] == "tf-checkpoint"
    assert by_path[str(models["loose"])]["training_steps"] == 5
    assert "BN001" in {f["code"] for f in by_path[str(models["checkpoint_dir"])]["findings"]}
    assert document["summary"]["unreadable"] == 0

    text = run("check", str(tmp_path))
    assert text.exit_code == 1 and str(models["checkpoint_dir"]) in text.stdout
    sarif = run("check", str(tmp_path), "--format", "sarif")
    results = json.loads(sarif.stdout)["runs"][0]["results"]
    assert any(result["ruleId"] == "BN001" for result in results)


@pytest.mark.slow
def test_diff_against_the_h5_of_the_same_model_matches_the_layers_by_name(written):
    case = written["trained"]
    code, document = run_json("diff", str(case.directory.parent / "trained.h5"), str(case.directory))
    assert code == 0
    assert {layer["path"]: layer["status"] for layer in document["layers"]} == {"bn1": "unchanged", "bn2": "unchanged"}
    # The tf.train.Checkpoint of the same model names the model `model/`: nothing matches, nothing breaks.
    code, document = run_json("diff", str(case.directory), str(written["tf_checkpoint"].directory))
    assert code == 0 and document["summary"]["only_in_a"] == 2 and document["summary"]["only_in_b"] == 2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bninspect", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_recalibrate_and_probe_refuse_a_weights_only_checkpoint_in_one_line(written, tmp_path):
    case = written["trained"]
    data = tmp_path / "x.npy"
    np.save(data, _data(steps=1)[0])
    probe = _cli("probe", str(case.directory), "--data", str(data))
    assert probe.returncode == 2 and "weights-only" in probe.stderr and str(case.directory) in probe.stderr
    recalibrate = _cli("recalibrate", str(case.prefix), "--data", str(data), "-o", str(tmp_path / "out"))
    assert recalibrate.returncode == 2 and "tf-checkpoint" in recalibrate.stderr
    for result in (probe, recalibrate):
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr + result.stdout


def _broken(written, tmp_path: Path, how: str) -> tuple[Path, str]:
    target = tmp_path / how
    shutil.copytree(written["trained"].directory, target)
    index, data = target / "ckpt.index", target / f"ckpt{DATA_SHARD}"
    if how == "truncated-index":
        index.write_bytes(index.read_bytes()[:40])
        return index, "cannot be read"
    if how == "missing-data":
        data.unlink()
        return target / "ckpt", "data file ckpt.data-00000-of-00001 is missing"
    if how == "truncated-data":
        data.write_bytes(data.read_bytes()[:100])
        return target, "cannot be read"
    if how == "missing-prefix":
        (target / "checkpoint").write_text('model_checkpoint_path: "ckpt-99"\n')
        return target, "ckpt-99.index does not exist"
    raise AssertionError(how)


@pytest.mark.slow
@pytest.mark.parametrize("how", ("truncated-index", "missing-data", "truncated-data", "missing-prefix"))
def test_a_broken_checkpoint_is_one_line_naming_the_file(written, tmp_path, how):
    path, reason = _broken(written, tmp_path, how)
    with pytest.raises(ModelReadError) as caught:
        loaders.load(path)
    assert reason in caught.value.reason and "\n" not in str(caught.value)
    result = run("check", str(path))
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert str(path) in line and reason in line and "Traceback" not in result.output


# --- TF1 graph checkpoints (tf.compat.v1 Saver) ---------------------------------------------------


TF1_BN_LAYERS = ("hand/bn", "net/batch_normalization", "net/batch_normalization_1", "resnet/block1/conv1/BatchNorm",
                 "resnet/block1/conv1/BatchNorm_1", "root")
TF1_WITHOUT = {"hand/bn": {"gamma", "beta"}, "resnet/block1/conv1/BatchNorm": {"gamma"}, "root": {"gamma", "beta"}}
# Every way of pointing at the two layouts written by tests/tf1_graph_checkpoints.py, relative to
# its output: the empty prefix `run_17/` whose state file names the author's machine, and the
# prefix `named/model.ckpt-3`.
TF1_FORMS = ("run_17", "run_17/.index", f"run_17/{DATA_SHARD}", "named", "named/model.ckpt-3",
             "named/model.ckpt-3.index")


@pytest.fixture(scope="session")
def tf1_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory tests/tf1_graph_checkpoints.py wrote its checkpoints to, in a process of its
    own (graph mode is global). tf.compat.v1.layers needs tf-keras (TF_USE_LEGACY_KERAS)."""
    out = tmp_path_factory.mktemp("tf1") / "out"
    script = Path(__file__).resolve().parent / "tf1_graph_checkpoints.py"
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    written = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, env=env,
                             timeout=300)
    assert written.returncode == 0, written.stderr[-3000:]
    return out


def _tf1_reference(tf1_checkpoints: Path) -> Any:
    """What TensorFlow itself reads from the checkpoint: `named/model.ckpt-3`, which holds the values
    of `run_17/` too (test_the_two_tf1_layouts_hold_the_same_values)."""
    import tensorflow as tf

    return tf.train.load_checkpoint(str(tf1_checkpoints / "named" / "model.ckpt-3"))


@pytest.mark.slow
def test_the_two_tf1_layouts_hold_the_same_values(tf1_checkpoints):
    """Saved at the same step of one session. `tf.train.load_checkpoint` cannot open `run_17/` (it
    follows the state file to /home/someone/...): TensorFlow's reader of the prefix can."""
    import tensorflow as tf

    reference = _tf1_reference(tf1_checkpoints)
    empty_prefix = tf.compat.v1.train.NewCheckpointReader(str(tf1_checkpoints / "run_17") + os.sep)
    names = reference.get_variable_to_shape_map()
    assert names == empty_prefix.get_variable_to_shape_map()
    assert all(np.array_equal(reference.get_tensor(name), empty_prefix.get_tensor(name)) for name in names)


def _tf1_key(layer: str, name: str) -> str:
    return name if layer == "root" else f"{layer}/{name}"


@pytest.mark.slow
@pytest.mark.parametrize("form", TF1_FORMS)
def test_a_tf1_checkpoint_in_every_layout_holds_what_tensorflow_reads(tf1_checkpoints, form):
    reference = _tf1_reference(tf1_checkpoints)
    description = loaders.load(tf1_checkpoints / form)
    assert description.source == str(tf1_checkpoints / form)
    assert description.format == "tf-checkpoint" and description.architecture.kind == "none"
    assert [bn.path for bn in description.bn_layers] == list(TF1_BN_LAYERS)
    for bn in description.bn_layers:
        expected = {"gamma", "beta", "moving_mean", "moving_variance"} - TF1_WITHOUT.get(bn.path, set())
        assert set(bn.arrays()) == expected, bn.path
        for name, values in bn.arrays().items():
            stored = reference.get_tensor(_tf1_key(bn.path, name))
            assert bn.stored_dtype == "float32" and values.dtype == np.float64
            assert np.array_equal(values, stored.astype(np.float64)), f"{bn.path} {name}"
        assert bn.momentum is None and bn.epsilon is None and bn.axis is None
    assert description.training_steps == int(reference.get_tensor("global_step")) == 3


@pytest.mark.slow
def test_a_tf1_checkpoint_reports_raw_variables_not_their_moving_averages_and_says_so(tf1_checkpoints):
    reference = _tf1_reference(tf1_checkpoints)
    description = loaders.load(tf1_checkpoints / "run_17")
    read = {bn.path: bn for bn in description.bn_layers}
    shadow = reference.get_tensor("net/batch_normalization/moving_mean/ExponentialMovingAverage")
    assert not np.array_equal(read["net/batch_normalization"].moving_mean, shadow)
    notes = " ".join(description.notes)
    assert "momentum (decay), axis and epsilon are not stored" in notes
    assert "ExponentialMovingAverage shadows of 19 BN variables" in notes


@pytest.mark.slow
@pytest.mark.parametrize("form", TF1_FORMS)
def test_a_tf1_checkpoint_has_its_findings_under_the_path_as_given(tf1_checkpoints, form):
    given = str(tf1_checkpoints / form)
    code, document = run_json("inspect", given)
    assert code == 0
    (model,) = document["models"]
    assert model["path"] == given and model["error"] is None and model["training_steps"] == 3
    assert all(layer["momentum"] is None for layer in model["bn_layers"])
    found = {(finding["code"], finding["layer"]) for finding in model["findings"]}
    assert found == {("BN005", "resnet/block1/conv1/BatchNorm"), ("BN006", "net/batch_normalization_1"),
                     ("BN015", None)}
    (skipped,) = [finding for finding in model["findings"] if finding["code"] == "BN015"]
    assert "TF1 checkpoint" in skipped["message"] and "no layer configs" in skipped["message"]
    assert "BN008" in skipped["message"] and "BN018" in skipped["message"]  # need the momentum
    assert "model.save" not in skipped["hint"] and "code that built the graph" in skipped["hint"]


@pytest.mark.slow
def test_check_dir_reads_every_tf1_checkpoint_directory(tf1_checkpoints):
    code, document = run_json("check", str(tf1_checkpoints))
    assert code == 0  # BN005 is a warning, BN006 and BN015 infos
    assert {model["path"]: model["training_steps"] for model in document["models"]} == {
        str(tf1_checkpoints / "later" / "run_18"): 4, str(tf1_checkpoints / "named"): 3,
        str(tf1_checkpoints / "run_17"): 3}
    assert document["summary"]["unreadable"] == 0


@pytest.mark.slow
def test_a_state_file_naming_a_real_checkpoint_elsewhere_on_the_machine_is_not_read(tf1_checkpoints, tmp_path):
    """TensorFlow's `load_checkpoint(dir)` opens what the state file names; bninspect reads the
    directory's own checkpoint, never `later/run_18/` (one step further: global_step 4)."""
    model = shutil.copytree(tf1_checkpoints / "run_17", tmp_path / "model")
    (model / "checkpoint").write_text(f'model_checkpoint_path: "{tf1_checkpoints / "later" / "run_18"}/"\n')
    description = loaders.load(model)
    assert description.training_steps == 3
    own = {bn.path: bn.moving_mean for bn in loaders.load(tf1_checkpoints / "run_17" / ".index").bn_layers}
    assert all(np.array_equal(bn.moving_mean, own[bn.path]) for bn in description.bn_layers)


# --- fuzzed bytes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_fuzzed_index_data_and_state_files_read_or_fail_with_one_line(written):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from test_fuzz import assert_reads_or_fails_cleanly, mutate

    case = written["trained"]
    seeds = {name: (case.directory / name).read_bytes() for name in ("ckpt.index", f"ckpt{DATA_SHARD}", "checkpoint")}

    @settings(max_examples=300, deadline=5000, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def check(data):
        target = data.draw(st.sampled_from(sorted(seeds)))
        with tempfile.TemporaryDirectory() as folder:
            for name, blob in seeds.items():
                Path(folder, name).write_bytes(mutate(data, blob) if name == target else blob)
            assert_reads_or_fails_cleanly(Path(folder))
            assert_reads_or_fails_cleanly(Path(folder) / "ckpt.index")

    check()
