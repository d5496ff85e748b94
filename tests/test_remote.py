"""Models at URLs, read in place against real servers on 127.0.0.1 that the tests start and stop:
an HTTP server with Range support (and modes without it, or refusing with 403/404) and moto's S3
API server used through s3fs. The reports must equal those of the local files, the bytes served
must stay far below the file size, and every failure is one line with exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

from remote_servers import RangeHTTPServer, free_port, make_bucket, moto_s3, s3_environment, s3_filesystem  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SAMPLE_FILES = ("cnn_trained.h5", "cnn_trained_tf2.h5", "cnn_trained.keras", "nested.keras", "cnn_trained.weights.h5",
                "cnn_untrained_tf2_weights.h5")
BIG_KERNEL = 1024  # units: 1024 x 1024 float32 = 4 MB per Dense kernel, 8 of them


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bninspect", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def json_report(*args: str, env: dict | None = None) -> dict:
    result = run_cli(*args, "--format", "json", env=env)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def without_paths(document: dict) -> dict:
    """The report with the model's location left out: the URL and the local path differ."""
    text = json.dumps(document)
    for model in document["models"]:
        text = text.replace(json.dumps(model["path"])[1:-1], "MODEL")
    return json.loads(text)


def assert_one_line_failure(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for text in expected:
        assert text in result.stderr, result.stderr


def write_big_weights_file(path: Path) -> None:
    """A legacy weights-only .h5 whose bulk is Dense kernels between the BN layers (h5py only):
    BN arrays and metadata are spread between 32 MB of kernels the reader must not fetch."""
    rng = np.random.default_rng(0)
    names = []
    with h5py.File(path, "w") as handle:
        for index in range(8):
            dense, bn = f"dense_{index}", f"batch_normalization_{index}"
            group = handle.create_group(dense)
            group.attrs["weight_names"] = [f"{dense}/kernel:0".encode(), f"{dense}/bias:0".encode()]
            group.create_dataset(f"{dense}/kernel:0", data=rng.standard_normal((BIG_KERNEL, BIG_KERNEL), "float32"))
            group.create_dataset(f"{dense}/bias:0", data=np.zeros(BIG_KERNEL, "float32"))
            group = handle.create_group(bn)
            leaves = ("gamma", "beta", "moving_mean", "moving_variance")
            group.attrs["weight_names"] = [f"{bn}/{leaf}:0".encode() for leaf in leaves]
            for leaf in leaves:
                group.create_dataset(f"{bn}/{leaf}:0", data=rng.random(BIG_KERNEL, "float32") + 0.5)
            names += [dense, bn]
        handle.attrs["layer_names"] = [name.encode() for name in names]
        handle.attrs["backend"] = b"tensorflow"


def write_preset(directory: Path) -> None:
    """A KerasHub backbone preset without keras_hub: its files are JSON and a Keras 3 weights tree."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "module": "keras_hub.src.models.resnet.resnet_backbone", "class_name": "ResNetBackbone",
        "config": {"name": "res_net_backbone", "trainable": True}, "registered_name": "keras_hub>ResNetBackbone"}))
    (directory / "metadata.json").write_text(json.dumps({"keras_version": "3.15.1", "keras_hub_version": "0.32.0"}))
    shutil.copy(SAMPLES / "cnn_trained.weights.h5", directory / "model.weights.h5")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    for name in SAMPLE_FILES:
        shutil.copy(SAMPLES / name, root / name)
    write_big_weights_file(root / "big_weights.h5")
    write_preset(root / "preset")
    with RangeHTTPServer(root) as server:
        yield server, root


@pytest.mark.parametrize("name", SAMPLE_FILES + ("big_weights.h5",))
def test_a_model_over_http_reports_as_the_local_file(served, name):
    server, root = served
    server.mode = "range"
    server.reset_counts()
    remote = json_report(f"{server.url}/{name}")
    assert remote["models"][0]["path"] == f"{server.url}/{name}"
    assert without_paths(remote) == without_paths(json_report(str(root / name)))
    size = (root / name).stat().st_size
    if name == "big_weights.h5":
        # Metadata and BN arrays only: a few blocks, not the 32 MB of kernels.
        assert server.bytes_served < 0.05 * size, (server.bytes_served, size)
        assert server.requests < 40, server.requests
    else:
        assert server.bytes_served <= size + 64 * 1024


def test_a_kerashub_preset_on_a_url_prefix(served):
    server, root = served
    server.mode = "range"
    remote = json_report(f"{server.url}/preset/")
    assert remote["models"][0]["format"] == "kerashub-preset"
    assert without_paths(remote) == without_paths(json_report(str(root / "preset")))


@pytest.mark.parametrize("mode, reason", [
    ("404", "not found"),
    ("403", "access denied (HTTP 403"),
    ("no-range", "does not support range requests"),
])
def test_server_failures_are_one_line(served, mode, reason):
    server, root = served
    server.mode = mode
    try:
        url = f"{server.url}/big_weights.h5"
        result = run_cli("inspect", url)
        assert_one_line_failure(result, url, reason)
        if mode == "no-range":
            assert f"{(root / 'big_weights.h5').stat().st_size:,} bytes" in result.stderr
            assert "--download" in result.stderr
            # With --download the whole file is fetched and read as the local one.
            server.reset_counts()
            downloaded = json_report(url, "--download")
            assert server.bytes_served >= (root / "big_weights.h5").stat().st_size
            assert without_paths(downloaded) == without_paths(json_report(str(root / "big_weights.h5")))
        assert_one_line_failure(run_cli("check", url), url, reason)
    finally:
        server.mode = "range"


def test_unreachable_host_and_bad_options_are_one_line():
    url = f"http://127.0.0.1:{free_port()}/model.h5"
    assert_one_line_failure(run_cli("inspect", url), url, "cannot reach the server")
    assert_one_line_failure(run_cli("inspect", url, "--storage-option", "novalue"), "expected KEY=VALUE")


def test_a_url_without_fsspec_says_what_to_install(tmp_path):
    blocker = tmp_path / "fsspec"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('fsspec is not installed')\n")
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", ""),
                                                        str(Path(__file__).resolve().parents[1])])}
    result = run_cli("inspect", "https://example.invalid/model.keras", env=env)
    assert_one_line_failure(result, "https://example.invalid/model.keras", "pip install 'bninspect[remote]'")


LOCAL_ONLY_IMPORTS = """
import sys
from bninspect.cli import main
try:
    main(["check", sys.argv[1]])
except SystemExit:
    pass
print(",".join(sorted(n for n in ("fsspec", "aiohttp", "s3fs", "tensorflow", "keras") if n in sys.modules)) or "none")
"""


def test_local_static_commands_import_neither_fsspec_nor_tensorflow():
    result = subprocess.run([sys.executable, "-c", "import bninspect, sys; print('fsspec' in sys.modules)"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    result = subprocess.run([sys.executable, "-c", LOCAL_ONLY_IMPORTS, str(SAMPLES / "cnn_trained.keras")],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "none"


# --- S3 (moto's server through s3fs) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_bucket(tmp_path_factory):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    local = tmp_path_factory.mktemp("s3_source")
    write_big_weights_file(local / "big_weights.h5")
    write_preset(local / "preset")
    with moto_s3() as endpoint:
        make_bucket(endpoint, "models")
        fs = s3_filesystem(endpoint)
        for name in ("cnn_trained.h5", "cnn_trained.keras", "cnn_untrained.weights.h5"):
            fs.put_file(str(SAMPLES / name), f"models/registry/{name}")
        fs.put_file(str(SAMPLES / "nested.keras"), "models/registry/team/nested.keras")
        fs.put_file(str(local / "big_weights.h5"), "models/registry/team/big_weights.h5")
        for file in (local / "preset").iterdir():
            fs.put_file(str(file), f"models/registry/preset/{file.name}")
        fs.put_file(str(SAMPLES / "README.md"), "models/registry/README.md")
        fs.put_file(str(SAMPLES / "README.md"), "models/empty/README.md")
        yield endpoint, local


def test_check_an_s3_prefix_lists_every_model_once_with_jobs(s3_bucket):
    endpoint, local = s3_bucket
    document = json_report("check", "s3://models/registry/", "--jobs", "2", env=s3_environment(endpoint))
    paths = [model["path"] for model in document["models"]]
    assert paths == sorted(paths) and len(paths) == len(set(paths))
    assert set(paths) == {f"s3://models/registry/{name}" for name in (
        "cnn_trained.h5", "cnn_trained.keras", "cnn_untrained.weights.h5", "team/nested.keras",
        "team/big_weights.h5", "preset")}
    assert all(model["error"] is None for model in document["models"]), document["models"]
    by_path = {model["path"]: model for model in document["models"]}
    expected = json_report("check", str(SAMPLES / "cnn_trained.keras"))
    assert without_paths({"models": [by_path["s3://models/registry/cnn_trained.keras"]]}) == \
        without_paths({"models": expected["models"]})
    assert by_path["s3://models/registry/preset"]["format"] == "kerashub-preset"
    big = by_path["s3://models/registry/team/big_weights.h5"]
    assert without_paths({"models": [big]}) == \
        without_paths({"models": json_report("check", str(local / "big_weights.h5"))["models"]})


def test_s3_endpoint_from_a_storage_option_and_one_line_errors(s3_bucket):
    endpoint, _ = s3_bucket
    env = s3_environment(endpoint)
    del env["AWS_ENDPOINT_URL"]
    result = run_cli("inspect", "s3://models/registry/cnn_trained.h5", "--storage-option", f"endpoint_url={endpoint}",
                     env=env)
    assert result.returncode == 0, result.stderr
    assert "h5-legacy" in result.stdout
    env = s3_environment(endpoint)
    assert_one_line_failure(run_cli("inspect", "s3://models/registry/missing.h5", env=env),
                            "s3://models/registry/missing.h5", "not found")
    assert_one_line_failure(run_cli("check", "s3://models/empty/", env=env), "s3://models/empty/",
                            "prefix holds no model files")
    assert_one_line_failure(run_cli("check", "s3://no-such-bucket/models/", env=env), "s3://no-such-bucket/models/")
