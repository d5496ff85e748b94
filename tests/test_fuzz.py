"""Fuzzed bytes: mutated, truncated and spliced real model files of every static format.

Every outcome must be either a normal report or a ModelReadError whose message is one line. The
seeds are the real files in sample_models/, written by Keras 3 and tf-keras. Inside `.keras`
archives the members are mutated too and re-zipped, so the damage reaches the HDF5 and JSON
readers instead of stopping at the zip's CRC check.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bninspect import loaders
from bninspect.model import ModelReadError
from bninspect.report import ModelReport
from bninspect.reporters import json_report, table
from bninspect.checking import run_static_rules

FUZZ_SETTINGS = settings(max_examples=1000, deadline=5000, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


@pytest.fixture(scope="session")
def seeds() -> dict[str, bytes]:
    """Every committed sample file: .keras, .h5 and .weights.h5 written by Keras 3 and tf-keras."""
    files = sorted(path for path in SAMPLES.iterdir()
                   if path.is_file() and path.suffix in (".keras", ".h5"))
    assert len(files) >= 8, "sample_models/ lost its model files"
    return {path.name: path.read_bytes() for path in files}


def mutate(data: st.DataObject, blob: bytes) -> bytes:
    operation = data.draw(st.sampled_from(["truncate", "flip", "splice", "zero", "duplicate"]))
    size = len(blob)
    if operation == "truncate":
        return blob[:data.draw(st.integers(0, size - 1))]
    if operation == "flip":
        mutable = bytearray(blob)
        for _ in range(data.draw(st.integers(1, 16))):
            position = data.draw(st.integers(0, size - 1))
            mutable[position] ^= data.draw(st.integers(1, 255))
        return bytes(mutable)
    start = data.draw(st.integers(0, size - 1))
    if operation == "splice":
        chunk = data.draw(st.binary(min_size=1, max_size=64))
        return blob[:start] + chunk + blob[start + data.draw(st.integers(0, 64)):]
    length = data.draw(st.integers(1, 256))
    if operation == "zero":
        return blob[:start] + b"\0" * length + blob[start + length:]
    # duplicate: a piece of the file copied over another place, so offsets point at plausible data
    source = data.draw(st.integers(0, size - 1))
    return blob[:start] + blob[source:source + length] + blob[start + length:]


def assert_reads_or_fails_cleanly(path: Path) -> None:
    try:
        description = loaders.load(path)
    except ModelReadError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(path))
        return
    # A file that still reads must go through the rules and every reporter.
    report = ModelReport(source=str(path), description=description, findings=run_static_rules(description))
    json_report.render([report])
    table.render([report])


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_files_read_or_fail_with_one_line(seeds, data):
    name = data.draw(st.sampled_from(sorted(seeds)))
    blob = mutate(data, seeds[name])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzzed{Path(name).suffix}"
        path.write_bytes(blob)
        assert_reads_or_fails_cleanly(path)


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_members_of_keras_archives(seeds, data):
    archives = sorted(name for name, blob in seeds.items() if blob.startswith(b"PK\x03\x04"))
    name = data.draw(st.sampled_from(archives))
    with zipfile.ZipFile(io.BytesIO(seeds[name])) as source:
        members = {info.filename: source.read(info) for info in source.infolist()}
    target = data.draw(st.sampled_from(sorted(members)))
    members[target] = mutate(data, members[target]) if members[target] else b""
    if data.draw(st.booleans()):
        members.pop(data.draw(st.sampled_from(sorted(members))))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.keras"
        with zipfile.ZipFile(path, "w") as out:
            for member, content in members.items():
                out.writestr(member, content)
        assert_reads_or_fails_cleanly(path)
