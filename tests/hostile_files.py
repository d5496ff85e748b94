"""Hostile model files, built as an attacker would: each function writes one into a directory and
returns its path. They start from the real sample models, so everything but the attack is what
Keras wrote.

Used by tests/test_hostile_files.py (and by benchmarks/bench_hostile.py for time and memory).
"""

from __future__ import annotations

import bz2
import io
import json
import os
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
WEIGHTS = SAMPLES / "cnn_trained.weights.h5"  # layers/batch_normalization/vars/0..3, 8 channels
LEGACY = SAMPLES / "cnn_trained.h5"
ARCHIVE = SAMPLES / "cnn_trained.keras"
BN_VARS = "layers/batch_normalization/vars"

# What an attacker would like to read: a file outside the model that a CI job can see.
OUTSIDE_FILE = "/etc/passwd"


def _copy(source: Path, directory: Path, name: str) -> Path:
    target = directory / name
    shutil.copy(source, target)
    return target


def _secret_model(directory: Path) -> Path:
    """Another HDF5 file on the machine, the target of links and virtual datasets."""
    path = directory / "elsewhere.h5"
    if not path.exists():
        with h5py.File(path, "w") as handle:
            group = handle.create_group(BN_VARS)
            group.attrs["name"] = "batch_normalization"
            for index in range(4):
                group.create_dataset(str(index), data=np.full(8, 1234.5, "float32"))
    return path


def _replace_dataset(path: Path, where: str, make) -> None:
    with h5py.File(path, "a") as handle:
        group_path, _, name = where.rpartition("/")
        del handle[where]
        make(handle[group_path], name)


# --- data that is not in the file ----------------------------------------------------------------

def external_storage(directory: Path) -> Path:
    """A moving mean whose bytes are declared to live in /etc/passwd."""
    path = _copy(WEIGHTS, directory, "external_storage.weights.h5")
    _replace_dataset(path, f"{BN_VARS}/2", lambda group, name: group.create_dataset(
        name, shape=(8,), dtype="float32", external=[(OUTSIDE_FILE, 0, 32)]))
    return path


def external_storage_legacy(directory: Path) -> Path:
    """The same in a legacy full-model .h5 (graph-guided reading)."""
    path = _copy(LEGACY, directory, "external_storage_legacy.h5")
    with h5py.File(path, "a") as handle:
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in handle["model_weights/bn1"].attrs["weight_names"]]
        where = "model_weights/bn1/" + next(n for n in names if "moving_mean" in n)
    _replace_dataset(path, where, lambda group, name: group.create_dataset(
        name, shape=(8,), dtype="float32", external=[(OUTSIDE_FILE, 0, 32)]))
    return path


def external_storage_kernel(directory: Path) -> Path:
    """A legacy .h5 whose convolution kernel (not a BN array) lives in /etc/passwd: the static
    reading never reads it; Keras, loading the model to run it, would."""
    path = _copy(LEGACY, directory, "external_kernel.h5")
    _replace_dataset(path, "model_weights/conv1/cnn/conv1/kernel", lambda group, name: group.create_dataset(
        name, shape=(3, 3, 3, 8), dtype="float32", external=[(OUTSIDE_FILE, 0, 3 * 3 * 3 * 8 * 4)]))
    return path


def _externally_on_fifo(directory: Path, name: str, where: str, shape: tuple[int, ...], dtype: str) -> Path:
    """A copy of the weights sample whose dataset `where` is stored externally on a FIFO."""
    fifo = directory / f"{name}_pipe"
    if not fifo.exists():
        os.mkfifo(fifo)
    path = _copy(WEIGHTS, directory, f"{name}.weights.h5")
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    _replace_dataset(path, where, lambda group, leaf: group.create_dataset(
        leaf, shape=shape, dtype=dtype, external=[(str(fifo), 0, size)]))
    return path


def external_storage_fifo(directory: Path) -> Path:
    """External storage on a FIFO: reading it would wait for a writer forever."""
    return _externally_on_fifo(directory, "external_fifo", f"{BN_VARS}/3", (8,), "float32")


def external_step_counter_fifo(directory: Path) -> Path:
    """The optimizer's step counter (read for BN018) stored externally on a FIFO."""
    return _externally_on_fifo(directory, "external_counter", "optimizer/vars/0", (1,), "int64")


def virtual_dataset(directory: Path) -> Path:
    """A gamma that is a view of another file."""
    elsewhere = _secret_model(directory)
    path = _copy(WEIGHTS, directory, "virtual.weights.h5")

    def make(group, name):
        layout = h5py.VirtualLayout(shape=(8,), dtype="float32")
        layout[:] = h5py.VirtualSource(str(elsewhere), f"{BN_VARS}/0", shape=(8,))
        group.create_virtual_dataset(name, layout, fillvalue=0)

    _replace_dataset(path, f"{BN_VARS}/0", make)
    return path


def external_link_group(directory: Path) -> Path:
    """A BN layer's variables group is an external link to another file."""
    elsewhere = _secret_model(directory)
    path = _copy(WEIGHTS, directory, "external_link_group.weights.h5")
    with h5py.File(path, "a") as handle:
        del handle[BN_VARS]
        handle[BN_VARS] = h5py.ExternalLink(str(elsewhere), f"/{BN_VARS}")
    return path


def external_link_dataset(directory: Path) -> Path:
    """One BN array is an external link to another file's dataset."""
    elsewhere = _secret_model(directory)
    path = _copy(WEIGHTS, directory, "external_link_dataset.weights.h5")
    with h5py.File(path, "a") as handle:
        del handle[f"{BN_VARS}/2"]
        handle[f"{BN_VARS}/2"] = h5py.ExternalLink(str(elsewhere), f"/{BN_VARS}/2")
    return path


def external_link_legacy(directory: Path) -> Path:
    """A legacy .h5 whose model_weights group of a BN layer is an external link."""
    path = _copy(LEGACY, directory, "external_link_legacy.h5")
    with h5py.File(path, "a") as handle:
        del handle["model_weights/bn1"]
        handle["model_weights/bn1"] = h5py.ExternalLink(str(_copy(LEGACY, directory, "other_legacy.h5")),
                                                        "/model_weights/bn1")
    return path


# --- structures that cost time ----------------------------------------------------------------------

def soft_link_cycle(directory: Path) -> Path:
    """A weights tree whose layer group links back to its parent: a walk without memory loops."""
    path = _copy(WEIGHTS, directory, "soft_cycle.weights.h5")
    with h5py.File(path, "a") as handle:
        handle["layers/conv2d/loop"] = h5py.SoftLink("/layers")
    return path


def hard_link_diamonds(directory: Path, levels: int = 40) -> Path:
    """A chain of diamonds: each level's group holds two hard links to the next one, so a walk
    that does not remember where it has been takes 2^levels paths. Only a few KB on disk."""
    path = directory / "diamonds.weights.h5"
    with h5py.File(path, "w") as handle:
        groups = [handle.create_group(f"level{index}") for index in range(levels + 1)]
        for upper, lower in zip(groups, groups[1:]):
            upper["left"] = lower
            upper["right"] = lower
        bottom = groups[-1].create_group("layers/batch_normalization/vars")
        for index in range(4):
            bottom.create_dataset(str(index), data=np.ones(8, "float32"))
        handle["layers/top"] = groups[0]
    return path


def declared_channels(directory: Path, layers: int = 16, channels: int = 1 << 24) -> Path:
    """BN layers declaring 2^24 channels each, all fill value: a 1 GB model in a few KB."""
    path = directory / "declared.weights.h5"
    with h5py.File(path, "w") as handle:
        for layer in range(layers):
            key = "batch_normalization" + (f"_{layer}" if layer else "")
            group = handle.create_group(f"layers/{key}/vars")
            for index in range(4):
                group.create_dataset(str(index), shape=(channels,), dtype="float32", fillvalue=1.0)
    return path


def many_layers(directory: Path, layers: int = 12_000) -> Path:
    """Thousands more than any real model of one-channel BN layers, each a hard link to the same small group."""
    path = directory / "many.weights.h5"
    with h5py.File(path, "w") as handle:
        shared = handle.create_group("shared")
        for index in range(4):
            shared.create_dataset(str(index), data=np.ones(1, "float32"))
        for layer in range(layers):
            handle[f"layers/batch_normalization_{layer}/vars"] = shared
    return path


def huge_chunk(directory: Path) -> Path:
    """An 8-value gamma stored in one chunk of 2^28 values: HDF5 reads a chunk whole."""
    path = _copy(WEIGHTS, directory, "huge_chunk.weights.h5")
    _replace_dataset(path, f"{BN_VARS}/0", lambda group, name: group.create_dataset(
        name, shape=(8,), maxshape=(None,), chunks=(1 << 28,), dtype="float32", fillvalue=1.0))
    return path


def deflate_chunk_bomb(directory: Path) -> Path:
    """A gzip-filtered chunk (of 2^20 floats, 8 of them the gamma) whose stored bytes inflate to 256 MB."""
    path = directory / "chunk_bomb.weights.h5"
    # The oldest file format: its chunk index records a compressed size of up to 4 GB.
    with h5py.File(WEIGHTS, "r") as source, h5py.File(path, "w", libver="earliest") as handle:
        for name in source:
            source.copy(source[name], handle, name)
        del handle[f"{BN_VARS}/0"]
        dataset = handle[BN_VARS].create_dataset("0", shape=(8,), maxshape=(None,), chunks=(1 << 20,),
                                                 dtype="float32", compression="gzip")
        dataset.id.write_direct_chunk((0,), _compressed_zeros(zipfile.ZIP_DEFLATED, 1 << 28, raw=False))
    return path


# --- zip archives ----------------------------------------------------------------------------------

def _archive_members(sample: Path = ARCHIVE) -> dict[str, bytes]:
    with zipfile.ZipFile(sample) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _write_archive(target: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return target


def zip_bomb(directory: Path, method: int = zipfile.ZIP_BZIP2, member: str = "model.weights.h5",
             expanded: int = 1 << 28) -> Path:
    """A .keras whose `member` expands to 256 MB of zeros (about 1,000x), declared as 4 KB."""
    members = _archive_members()
    # The archive declares 4 KB for the member; its compressed bytes say otherwise.
    data = _raw_archive([(n, c, zipfile.ZIP_DEFLATED) for n, c in members.items() if n != member],
                        (member, _compressed_zeros(method, expanded), method, 4096))
    path = directory / f"bomb_{member.replace('.', '_')}_{method}.keras"
    path.write_bytes(data)
    return path


def _compressed_zeros(method: int, size: int, raw: bool = True) -> bytes:
    """`size` zero bytes compressed by `method`: deflate as zip stores it (`raw`) or as a zlib stream."""
    block = bytes(1 << 24)
    if method == zipfile.ZIP_BZIP2:
        compressor = bz2.BZ2Compressor(9)
        pieces = [compressor.compress(block) for _ in range(size // len(block))]
        return b"".join(pieces) + compressor.flush()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15 if raw else 15)
    pieces = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join(pieces) + compressor.flush()


def _raw_archive(plain: list[tuple[str, bytes, int]], hostile: tuple[str, bytes, int, int]) -> bytes:
    """A zip archive: `plain` members compressed normally, then `hostile` (name, compressed bytes,
    method, declared uncompressed size) spliced in as it is."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content, method in plain:
            archive.writestr(name, content, compress_type=method)
    data = bytearray(out.getvalue())
    # Drop the central directory and end record zipfile wrote; rebuild both with the extra member.
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        infos = archive.infolist()
        end = max(info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size
                  for info in infos)
    body = bytearray(data[:end])
    name, payload, method, declared = hostile
    offset = len(body)
    encoded = name.encode()
    body += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0, 0, len(payload), declared,
                        len(encoded), 0) + encoded + payload
    central = bytearray()
    entries = [(info.filename.encode(), info.compress_type, info.CRC, info.compress_size, info.file_size,
                info.header_offset) for info in infos] + [(encoded, method, 0, len(payload), declared, offset)]
    for entry_name, entry_method, crc, compressed, size, header in entries:
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, entry_method, 0, 0, crc, compressed, size,
                               len(entry_name), 0, 0, 0, 0, 0, header) + entry_name
    start = len(body)
    body += central
    body += struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), start, 0)
    return bytes(body)


# --- configs: names TensorFlow refuses, values Keras refuses, absurd shapes ------------------------
# Keras 3 archives whose config.json an attacker edited; the weights are the sample's.

def edited_config(target: Path, edit, sample: Path = ARCHIVE) -> Path:
    """A copy of the `.keras` `sample` whose config went through `edit(config)`."""
    members = _archive_members(sample)
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    return _write_archive(target, members)


def config_layers(config: dict):
    """Every layer entry of a Keras 3 config, inside nested models too."""
    for entry in config["config"].get("layers", []):
        yield entry
        if isinstance(entry["config"].get("layers"), list):
            yield from config_layers(entry)


def config_layer(config: dict, name: str) -> dict:
    (entry,) = [entry for entry in config_layers(config) if entry["config"].get("name") == name]
    return entry


def renamed_copy(sample: Path, target: Path, old: str, new: str) -> Path:
    """A copy of a Keras 3 `.keras` sample whose layer `old` is named `new`: in `config.json` and
    in the `name` attribute of its weights group, as Keras would have written it."""
    members = _archive_members(sample)
    config = json.loads(members["config.json"])
    config_layer(config, old)["config"]["name"] = new
    members["config.json"] = json.dumps(config).encode()
    weights = io.BytesIO(members["model.weights.h5"])
    with h5py.File(weights, "r+") as handle:
        groups = [handle["layers"][key]["vars"] for key in handle["layers"]
                  if handle["layers"][key]["vars"].attrs.get("name") == old]
        assert len(groups) == 1, f"{sample} has no weights named {old}"
        groups[0].attrs["name"] = new
    members["model.weights.h5"] = weights.getvalue()
    return _write_archive(target, members)


def model_named(directory: Path, name: str, key: str) -> Path:
    """The trained CNN with the Sequential itself named `name`."""
    return edited_config(directory / f"model_{key}.keras", lambda config: config["config"].update(name=name))


def layer_config(directory: Path, key: str, layer: str, **values) -> Path:
    """The trained CNN with `values` in the config of its layer `layer` (e.g. units=-3)."""
    def edit(config: dict) -> None:
        config_layer(config, layer)["config"].update(values)
    return edited_config(directory / f"{key}.keras", edit)


def _declared_input(config: dict, shape: list, first_layer: str) -> None:
    """`shape` as the model's input everywhere the config records it."""
    for entry in config_layers(config):
        if entry["class_name"] == "InputLayer":
            entry["config"]["batch_shape"] = shape
    config_layer(config, first_layer)["build_config"]["input_shape"] = shape
    config["config"]["build_input_shape"] = shape
    config["build_config"]["input_shape"] = shape


def huge_dense_input(directory: Path, features: int = 10 ** 12) -> Path:
    """`bn_last_layer.keras` (Dense, Dense, BN on 8 features) whose first Dense declares
    `features` input features in its build config, the model's input still (None, 8): Keras
    builds it with a kernel of features x 16 floats before it reads a weight or sees the data."""
    def edit(config: dict) -> None:
        config_layer(config, "hidden")["build_config"]["input_shape"] = [None, features]
    return edited_config(directory / "huge_dense_input.keras", edit, SAMPLES / "bn_last_layer.keras")


def large_image_input(directory: Path, side: int = 8192) -> Path:
    """The trained CNN declared on side x side x 3 images: 768 MiB per image at 8192, under the
    bound per sample, above it for a batch of two; a directory of images is resized to it."""
    return edited_config(directory / f"image_input_{side}.keras",
                         lambda config: _declared_input(config, [None, side, side, 3], "conv1"))


def free_image_input(directory: Path) -> Path:
    """The trained CNN declared on images of any size: the data decides."""
    return edited_config(directory / "free_image_input.keras",
                         lambda config: _declared_input(config, [None, None, None, 3], "conv1"))


def upsampling_instead_of_pooling(directory: Path, size: int = 2000) -> Path:
    """The trained CNN with its max-pooling (no weights) replaced by an UpSampling2D of `size`: the
    16x16 images become (16 size)^2 pixels per channel inside the model."""
    def edit(config: dict) -> None:
        entry = config_layer(config, "pool1")
        entry["class_name"] = "UpSampling2D"
        entry["config"] = {"name": "pool1", "trainable": True, "dtype": "float32", "size": [size, size],
                           "data_format": "channels_last", "interpolation": "nearest"}
    return edited_config(directory / f"upsampling_{size}.keras", edit)


def png_images(directory: Path, count: int = 4, side: int = 16) -> Path:
    """A directory of `count` small RGB PNG images, written without an imaging library."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = b"".join(b"\x00" + bytes([10, 200, 30]) * side for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    image = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
             + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    for index in range(count):
        (directory / f"{index}.png").write_bytes(image)
    return directory


def many_config_layers(directory: Path, extra: int = 30_000) -> Path:
    """A .keras whose config.json lists tens of thousands of ReLU layers (no weights): a few hundred
    KB compressed, minutes to read and check layer by layer without a bound."""
    import json

    members = _archive_members()
    config = json.loads(members["config.json"])
    layers = config["config"]["layers"]
    relu = next(layer for layer in layers if layer["class_name"] == "ReLU")
    added = [json.loads(json.dumps(relu).replace(relu["config"]["name"], f"extra_relu_{index}"))
             for index in range(extra)]
    config["config"]["layers"] = layers[:-1] + added + layers[-1:]
    members["config.json"] = json.dumps(config).encode()
    path = directory / "many_config_layers.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            method = zipfile.ZIP_STORED if name == "model.weights.h5" else zipfile.ZIP_DEFLATED
            archive.writestr(name, content, compress_type=method)
    return path


# --- not files -------------------------------------------------------------------------------------

def fifo_model(directory: Path, name: str = "z.h5") -> Path:
    path = directory / name
    os.mkfifo(path)
    return path


def nested_unmatched_names(directory: Path, layers: int = 2000) -> Path:
    """A legacy .h5 whose nested model holds `layers` BN layers whose weights are stored under
    names that match none of them: they are paired in order, a quadratic search before."""
    import json

    bn_config = {"axis": -1, "momentum": 0.99, "epsilon": 0.001, "center": True, "scale": True, "trainable": True}
    inner_layers = [{"class_name": "InputLayer", "config": {"batch_shape": [None, 4], "name": "inner_input"}}]
    inner_layers += [{"class_name": "BatchNormalization", "config": {**bn_config, "name": f"bn_{index}"}}
                     for index in range(layers)]
    config = {"class_name": "Functional", "config": {"name": "outer", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 4], "name": "input"}, "name": "input",
         "inbound_nodes": []},
        {"class_name": "Sequential", "config": {"name": "inner", "layers": inner_layers}, "name": "inner",
         "inbound_nodes": [[["input", 0, 0, {}]]]}],
        "input_layers": [["input", 0, 0]], "output_layers": [["inner", 0, 0]]}}
    path = directory / "nested_unmatched.h5"
    # The newest format stores attributes of any size (the weight_names list is large).
    with h5py.File(path, "w", libver="latest") as handle:
        handle.attrs["model_config"] = json.dumps(config)
        handle.attrs["keras_version"] = "3.15.1"
        weights = handle.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([b"input", b"inner"])
        weights.create_group("input").attrs["weight_names"] = np.array([], dtype="S1")
        inner = weights.create_group("inner")
        names = []
        for index in range(layers):
            owner = inner.create_group(f"inner/other_{index}")
            for leaf, value in (("gamma", 1.5), ("beta", 0.5), ("moving_mean", 0.25), ("moving_variance", 2.0)):
                owner.create_dataset(leaf, data=np.full(4, value, "float32"))
                names.append(f"inner/other_{index}/{leaf}".encode())
        inner.attrs["weight_names"] = np.array(names)
    return path
