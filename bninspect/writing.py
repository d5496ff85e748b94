"""Write new BN moving statistics into a copy of a model file, atomically.

The copy keeps every byte the statistics do not touch: the same format, the same Keras flavour
that wrote it, the same other weights, optimizer state and metadata. Only the moving_mean and
moving_variance datasets the static reader located (`BNLayer.locations`) are overwritten, in the
dtype the file stores them in. The copy is made next to the output under a temporary name and
renamed over it at the end, so a reader never sees a half-written file and a failure leaves the
output as it was. The input file is only read (unless the output is the input: `--in-place`).

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from typing import Iterator, Mapping

import numpy as np

from bninspect.errors import UsageProblem
from bninspect.model import ModelDescription

WEIGHTS_MEMBER = "model.weights.h5"
WRITABLE_FORMATS = ("h5-legacy", "h5-weights", "keras-v3", "weights-v3", "kerashub-preset")

# layer path -> (moving_mean, moving_variance)
Statistics = Mapping[str, tuple[np.ndarray, np.ndarray]]


def check_writable(description: ModelDescription) -> None:
    if description.format not in WRITABLE_FORMATS:
        raise UsageProblem(f"{description.source}: recalibrate writes .keras, .h5, weights files and KerasHub "
                           f"presets, not {description.format}; save the model as .keras first")


def write_statistics(description: ModelDescription, statistics: Statistics, output: str | os.PathLike) -> None:
    """Copy `description.source` to `output` with the given layers' moving statistics replaced."""
    check_writable(description)
    locations = _locations(description, statistics)
    source = description.source
    if description.format == "kerashub-preset":
        _write_preset(source, locations, statistics, output)
        return
    with _atomic(output, like=source) as temporary:
        if description.format == "keras-v3":
            _rewrite_archive(source, temporary, locations, statistics)
        else:
            shutil.copyfile(source, temporary)
            _patch_hdf5(temporary, locations, statistics)


def _locations(description: ModelDescription, statistics: Statistics) -> dict[str, dict[str, str]]:
    by_path = {layer.path: dict(layer.locations) for layer in description.bn_layers}
    located = {}
    for path in statistics:
        where = by_path.get(path, {})
        if "moving_mean" not in where or "moving_variance" not in where:
            raise UsageProblem(f"{description.source}: cannot find where layer {path!r} stores its moving "
                               "statistics in the file")
        located[path] = where
    return located


@contextmanager
def _atomic(output: str | os.PathLike, like: str) -> Iterator[str]:
    """A temporary path next to `output`, renamed over it when the block succeeds."""
    output = os.path.abspath(output)
    directory = os.path.dirname(output)
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(output)}.", suffix=".tmp")
    except OSError as error:
        raise UsageProblem(f"{output}: cannot write here ({error.strerror or error})") from None
    os.close(handle)
    try:
        yield temporary
        shutil.copymode(like, temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, output)
    except OSError as error:
        raise UsageProblem(f"{output}: cannot write the recalibrated model ({error.strerror or error})") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _patch_hdf5(path: str, locations: Mapping[str, Mapping[str, str]], statistics: Statistics) -> None:
    import h5py

    with h5py.File(path, "r+") as handle:
        for layer, (moving_mean, moving_variance) in statistics.items():
            for name, values in (("moving_mean", moving_mean), ("moving_variance", moving_variance)):
                dataset = handle[locations[layer][name]]
                values = np.asarray(values, np.float64)
                if values.size != dataset.size:
                    raise UsageProblem(f"{path}: layer {layer!r} stores {dataset.size} values of {name}, "
                                       f"the data gave {values.size}")
                dataset[...] = values.reshape(dataset.shape).astype(dataset.dtype)


def _rewrite_archive(source: str, target: str, locations: Mapping[str, Mapping[str, str]],
                     statistics: Statistics) -> None:
    """A new .keras zip: every member copied as it was, the weights member patched."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as rewritten:
        for info in archive.infolist():
            if info.filename != WEIGHTS_MEMBER:
                with archive.open(info) as member, rewritten.open(info, "w") as copy:
                    shutil.copyfileobj(member, copy, 1 << 20)
                continue
            handle, weights = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".weights.h5")
            os.close(handle)
            try:
                with archive.open(info) as member, open(weights, "wb") as copy:
                    shutil.copyfileobj(member, copy, 1 << 20)
                _patch_hdf5(weights, locations, statistics)
                rewritten.write(weights, info.filename, compress_type=info.compress_type)
            finally:
                os.unlink(weights)


def _write_preset(source: str, locations: Mapping[str, Mapping[str, str]], statistics: Statistics,
                  output: str | os.PathLike) -> None:
    """A copy of the preset directory with the statistics patched in its weights files
    (`model.weights.h5`, `task.weights.h5`), built under a temporary name next to `output` and
    renamed into place. An existing `output` (--in-place) is moved aside first and removed after:
    a directory cannot be renamed over a full one in one step."""
    from bninspect.loaders.kerashub_preset import split_location

    by_member: dict[str, dict[str, dict[str, str]]] = {}
    for layer, where in locations.items():
        for name, location in where.items():
            member, path = split_location(location)
            by_member.setdefault(member, {}).setdefault(layer, {})[name] = path
    output = os.path.abspath(output)
    parent, name = os.path.split(output)
    try:
        temporary = tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".tmp")
    except OSError as error:
        raise UsageProblem(f"{output}: cannot write here ({error.strerror or error})") from None
    aside = None
    try:
        shutil.copytree(source, temporary, dirs_exist_ok=True)
        shutil.copymode(source, temporary)
        for member, member_locations in by_member.items():
            path = os.path.join(temporary, member)
            _patch_hdf5(path, member_locations, {layer: statistics[layer] for layer in member_locations})
            with open(path, "rb+") as written:
                os.fsync(written.fileno())
        if os.path.exists(output):
            aside = tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".old")
            os.rmdir(aside)
            os.replace(output, aside)
        os.replace(temporary, output)
    except OSError as error:
        if aside is not None and not os.path.exists(output):
            os.replace(aside, output)
            aside = None
        raise UsageProblem(f"{output}: cannot write the recalibrated preset ({error.strerror or error})") from None
    finally:
        if os.path.exists(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
