"""Hostile model files, built as an attacker would: each function writes one into a directory and
returns its path. They start from the real sample models, so everything but the attack is what
Keras wrote.

Used by tests/test_hostile_files.py (and by benchmarks/bench_hostile.py for time and memory).
"""

from __future__ import annotations

import bz2
import io
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


def external_storage_fifo(directory: Path) -> Path:
    """External storage on a FIFO: reading it would wait for a writer forever."""
    fifo = directory / "pipe"
    if not fifo.exists():
        os.mkfifo(fifo)
    path = _copy(WEIGHTS, directory, "external_fifo.weights.h5")
    _replace_dataset(path, f"{BN_VARS}/3", lambda group, name: group.create_dataset(
        name, shape=(8,), dtype="float32", external=[(str(fifo), 0, 32)]))
    return path


def external_step_counter_fifo(directory: Path) -> Path:
    """The optimizer's step counter (read for BN018) stored externally on a FIFO."""
    fifo = directory / "counter_pipe"
    if not fifo.exists():
        os.mkfifo(fifo)
    path = _copy(WEIGHTS, directory, "external_counter.weights.h5")
    _replace_dataset(path, "optimizer/vars/0", lambda group, name: group.create_dataset(
        name, shape=(1,), dtype="int64", external=[(str(fifo), 0, 8)]))
    return path


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

def _archive_members() -> dict[str, bytes]:
    with zipfile.ZipFile(ARCHIVE) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


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
