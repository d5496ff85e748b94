"""The backend suite: the dynamic commands on the Keras backend this pytest process runs on.

Run by tests/test_backend_matrix.py once per backend (TensorFlow, JAX, PyTorch), each in its own
process with KERAS_BACKEND set, and for JAX and PyTorch as if TensorFlow were not installed
(without_tensorflow/sitecustomize.py). The models of every backend are written before, by
write_models.py, into BNINSPECT_BACKEND_MODELS; recalibrated files go to
BNINSPECT_BACKEND_OUTPUT for the matrix to load in every backend. Not collected by a plain
`pytest` run (tests/conftest.py leaves this directory out): there is no models directory then.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BACKENDS = ("tensorflow", "jax", "torch")
MODELS = ("cnn", "mlp", "mobilenet")


def pytest_configure(config):
    config.addinivalue_line("markers", "backend_suite: runs on the backend of its process")


@pytest.fixture(scope="session")
def backend() -> str:
    import keras

    chosen = keras.config.backend()
    assert chosen == os.environ.get("KERAS_BACKEND"), "the suite runs on the backend the matrix asked for"
    if os.environ.get("BNINSPECT_TEST_WITHOUT_TENSORFLOW") == "1":
        assert sys.modules.get("tensorflow") is None, "TensorFlow was imported on a backend that must not need it"
    return chosen


@pytest.fixture(scope="session")
def models() -> Path:
    directory = os.environ.get("BNINSPECT_BACKEND_MODELS")
    if not directory:
        pytest.fail("BNINSPECT_BACKEND_MODELS is not set: run the suite through tests/test_backend_matrix.py")
    return Path(directory)


@pytest.fixture(scope="session")
def output() -> Path:
    directory = Path(os.environ["BNINSPECT_BACKEND_OUTPUT"])
    directory.mkdir(parents=True, exist_ok=True)
    return directory
