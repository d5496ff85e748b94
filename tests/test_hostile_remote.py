"""Hostile servers and careless command lines (issue 25, "Safe on hostile models"):

- a server whose directory listing names files outside the listed directory (`..`, absolute
  links, backslashes) never makes bninspect write outside its temporary directory, and a download
  is bounded in files and bytes;
- a password or a signed URL's secrets never appear in any output (stdout, stderr, every report
  format, the HTML page), whatever the server answers;
- no option that writes a file (`--output`/`-o`, recalibrate's `--report`) may name an input model,
  however spelled (symlink, hard link, `./x`), a file inside an input model directory, or a file
  of an input TF checkpoint: one line, exit 2, the input unchanged.

The servers run on 127.0.0.1, started here (tests/remote_servers.py): a stdlib `http.server`
serving what each test wants, and moto's S3 server for object keys and presigned URLs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

from remote_servers import RangeHTTPServer  # noqa: E402
from test_safety import digest  # noqa: E402  (sha256 of a file, or of a directory's files)

from bninspect import loaders  # noqa: E402
from bninspect.errors import ModelReadError, UsageProblem  # noqa: E402
from bninspect.loaders import remote  # noqa: E402
from bninspect.loaders.graph import ConfigError  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bninspect", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def assert_one_line_failure(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


# --- downloads stay in their temporary directory -------------------------------------------------

# Links a hostile listing holds, relative to the listed directory: each would leave it.
ESCAPING_LINKS = ("a/../../../../escaped.txt", "../escaped.txt", "sub\\..\\..\\escaped.txt")
HOSTILE_BODY = b"written by a hostile server"


class Sandbox:
    """A directory holding the temporary directory (TMPDIR), HOME and the working directory of
    the command under test: whatever a download writes outside its own temporary directory lands
    in here, where `snapshot` sees it."""

    def __init__(self, root: Path):
        self.root = root
        self.tmp, self.home, self.cwd = root / "tmp", root / "home", root / "work"
        for directory in (self.tmp, self.home, self.cwd):
            directory.mkdir(parents=True)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmp), "HOME": str(self.home),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}

    def snapshot(self) -> set[str]:
        return {str(path.relative_to(self.root)) for path in self.root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path):
    return Sandbox(tmp_path / "sandbox")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A server with a SavedModel-like directory `/savedmodel/` and a TF checkpoint directory
    `/checkpoint/`, each listed with the escaping links of the test (set per test), and any path
    outside them answered with HOSTILE_BODY."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "savedmodel").mkdir()
    (root / "savedmodel" / "saved_model.pb").write_bytes(b"not a real graph")
    (root / "checkpoint").mkdir()
    (root / "checkpoint" / "checkpoint").write_text('model_checkpoint_path: "ckpt"\n')
    (root / "checkpoint" / "ckpt.index").write_bytes(b"not a real index")
    (root / "checkpoint" / "ckpt.data-00000-of-00001").write_bytes(b"not real data")
    with RangeHTTPServer(root) as server:
        server.fallback = HOSTILE_BODY
        yield server, root


def _list(server, root: Path, directory: str, *extra: str) -> str:
    """Serve `/directory/`'s real files plus `extra` links as its listing; its URL."""
    names = sorted(path.name for path in (root / directory).iterdir())
    server.listings = {f"/{directory}/": [*names, *extra]}
    return f"{server.url}/{directory}/"


@pytest.mark.parametrize("directory", ["savedmodel", "checkpoint"])
@pytest.mark.parametrize("link", ESCAPING_LINKS)
def test_a_listing_that_leaves_the_directory_writes_nothing_outside(hostile, sandbox, directory, link):
    server, root = hostile
    url = _list(server, root, directory, link)
    before = sandbox.snapshot()
    result = run_cli("inspect", url, env=sandbox.env, cwd=sandbox.cwd)
    assert_one_line_failure(result, url, repr(link), "outside")
    assert sandbox.snapshot() == before
    assert not any(sandbox.tmp.iterdir()), "the temporary directory was not removed"


def test_an_absolute_link_on_the_same_server_writes_nothing_outside(hostile, sandbox):
    server, root = hostile
    url = _list(server, root, "savedmodel")
    url = _list(server, root, "savedmodel", f"{url}../../escaped.txt", "/escaped.txt")
    before = sandbox.snapshot()
    result = run_cli("inspect", url, env=sandbox.env, cwd=sandbox.cwd)
    assert_one_line_failure(result, url, "'../../escaped.txt'", "outside")
    assert sandbox.snapshot() == before


@pytest.mark.parametrize("name", ["../x", "a/../../x", "..", "/etc/x", "//x", "C:/x", "c:x", "a\\b", "a/b\\..\\c",
                                  "", "a/\x00/b", "./..", "a/./../.."])
def test_unsafe_listed_names_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="outside|not a file name"):
        remote.local_target(str(tmp_path), name)


@pytest.mark.parametrize("name, expected", [("a/b", "a/b"), ("a//b", "a/b"), ("./a/./b", "a/b"), ("a/", "a"),
                                            ("variables/variables.index", "variables/variables.index")])
def test_safe_listed_names_are_normalised(tmp_path, name, expected):
    assert remote.local_target(str(tmp_path), name) == str(tmp_path / expected)


def test_a_name_through_a_link_out_of_the_directory_is_refused(tmp_path):
    scratch, outside = tmp_path / "scratch", tmp_path / "outside"
    scratch.mkdir()
    outside.mkdir()
    (scratch / "link").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside"):
        remote.local_target(str(scratch), "link/x")


def _serve_files(server, root: Path, directory: str, files: dict[str, bytes]) -> str:
    (root / directory).mkdir(exist_ok=True)
    for name, content in files.items():
        (root / directory / name).write_bytes(content)
    return _list(server, root, directory)


@pytest.fixture
def local_tmp(sandbox, monkeypatch):
    """tempfile's directory set to the sandbox's, for the tests that call the loader in-process."""
    monkeypatch.setattr(tempfile, "tempdir", str(sandbox.tmp))
    return sandbox


def test_a_download_of_too_many_files_is_refused_before_any_is_written(hostile, local_tmp, monkeypatch):
    server, root = hostile
    url = _serve_files(server, root, "many_files", {"saved_model.pb": b"x", "a": b"x", "b": b"x"})
    monkeypatch.setattr(remote, "MAX_DOWNLOAD_FILES", 2)
    server.reset_counts()
    with pytest.raises(ModelReadError, match="lists 3 files, more than the 2 a download may write"):
        loaders.load(url)
    assert not any(local_tmp.tmp.iterdir())


def test_a_download_of_too_many_bytes_stops_and_is_removed(hostile, local_tmp, monkeypatch):
    server, root = hostile
    url = _serve_files(server, root, "big_files", {"saved_model.pb": b"x" * 600, "variables.bin": b"y" * 600})
    monkeypatch.setattr(remote, "MAX_DOWNLOAD_BYTES", 1000)
    with pytest.raises(ModelReadError, match="more than 1,000 bytes"):
        loaders.load(url)
    assert not any(local_tmp.tmp.iterdir()), "the partial download was not removed"


def test_a_whole_file_download_is_bounded_too(hostile, local_tmp, monkeypatch):
    server, root = hostile
    server.listings = {}
    (root / "whole.h5").write_bytes((SAMPLES / "cnn_trained.h5").read_bytes())
    monkeypatch.setattr(remote, "MAX_DOWNLOAD_BYTES", 1000)
    with pytest.raises(ModelReadError, match="more than 1,000 bytes"):
        with remote.local_copy(f"{server.url}/whole.h5", remote.NO_OPTIONS):
            pass
    assert not any(local_tmp.tmp.iterdir())


def test_a_download_is_removed_after_success(hostile, local_tmp):
    server, root = hostile
    server.listings = {}
    shutil.copy(SAMPLES / "cnn_trained.h5", root / "copied.h5")
    with remote.local_copy(f"{server.url}/copied.h5", remote.NO_OPTIONS) as local:
        assert Path(local).read_bytes() == (SAMPLES / "cnn_trained.h5").read_bytes()
        assert Path(local).resolve().is_relative_to(local_tmp.tmp.resolve())
    assert not any(local_tmp.tmp.iterdir())


@pytest.fixture(scope="module")
def moto_bucket():
    """moto's S3 server with a bucket `models`: object keys are any text, `..` included."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from remote_servers import make_bucket, moto_s3

    with moto_s3() as endpoint:
        make_bucket(endpoint, "models")
        yield endpoint


def _s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def test_s3_keys_that_leave_the_prefix_write_nothing_outside(moto_bucket, sandbox):
    from remote_servers import S3_ENVIRONMENT

    client = _s3_client(moto_bucket)
    client.put_object(Bucket="models", Key="hostile/savedmodel/saved_model.pb", Body=b"not a real graph")
    client.put_object(Bucket="models", Key="hostile/savedmodel/a/../../../../escaped.txt", Body=HOSTILE_BODY)
    before = sandbox.snapshot()
    env = {**sandbox.env, **S3_ENVIRONMENT, "AWS_ENDPOINT_URL": moto_bucket}
    result = run_cli("inspect", "s3://models/hostile/savedmodel/", env=env, cwd=sandbox.cwd)
    assert_one_line_failure(result, "s3://models/hostile/savedmodel/", "'a/../../../../escaped.txt'", "outside")
    assert sandbox.snapshot() == before


# --- secrets in URLs never reach an output -------------------------------------------------------

SECRETS = ("s3cr3tpass", "SECRETSIG", "SECRETCRED", "SECRETTOK")
SIGNED_QUERY = "X-Amz-Signature=SECRETSIG&X-Amz-Credential=SECRETCRED&token=SECRETTOK"
REDACTED_QUERY = "X-Amz-Signature=***&X-Amz-Credential=***&token=***"


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("secret_models")
    shutil.copy(SAMPLES / "cnn_trained.h5", root / "m.h5")
    shutil.copy(SAMPLES / "cnn_trained.keras", root / "m.keras")
    shutil.copy(SAMPLES / "cnn_untrained.keras", root / "untrained.keras")  # dynamic findings on cnn_data.npy
    with RangeHTTPServer(root) as server:
        yield server


def secret_urls(server) -> tuple[str, str]:
    host = server.url.removeprefix("http://")
    return f"http://user:s3cr3tpass@{host}/m.h5", f"{server.url}/m.keras?{SIGNED_QUERY}"


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} shown in:\n{text}"


@pytest.mark.parametrize("mode", ["range", "403", "404", "500"])
def test_no_command_shows_a_secret_of_the_url(model_server, tmp_path, mode):
    model_server.mode = mode
    try:
        with_password, signed = secret_urls(model_server)
        runs = [run_cli("check", with_password, signed, "--format", output_format)
                for output_format in ("text", "json", "sarif", "junit", "github")]
        runs += [run_cli("check", with_password, signed, "--jobs", "2", "--format", "json"),
                 run_cli("inspect", with_password, signed),
                 run_cli("inspect", with_password, signed, "--format", "json"),
                 run_cli("diff", with_password, signed), run_cli("diff", with_password, signed, "--format", "json")]
        page = tmp_path / "page.html"
        runs.append(run_cli("report", with_password, signed, "-o", str(page)))
        for result in runs:
            assert result.returncode in ((0, 1) if mode == "range" else (2,)), (result.args, result.stderr)
            assert_no_secret(result.stdout, result.stderr)
        if mode == "range":
            assert_no_secret(page.read_text())
            for result in (runs[1], runs[5], runs[7]):
                paths = [model["path"] for model in json.loads(result.stdout)["models"]]
                assert paths == [with_password.replace("s3cr3tpass", "***"),
                                 signed.replace(SIGNED_QUERY, REDACTED_QUERY)]
        else:
            # The failure still names the model, redacted, on stderr.
            assert "user:***@" in runs[0].stderr and REDACTED_QUERY in runs[0].stderr
    finally:
        model_server.mode = "range"


def test_a_presigned_s3_url_is_read_and_shown_without_its_signature(moto_bucket):
    client = _s3_client(moto_bucket)
    client.put_object(Bucket="models", Key="signed/m.h5", Body=(SAMPLES / "cnn_trained.h5").read_bytes())
    url = client.generate_presigned_url("get_object", Params={"Bucket": "models", "Key": "signed/m.h5"},
                                        ExpiresIn=600)
    signature = next(value for name, _, value in (part.partition("=") for part in url.split("?")[1].split("&"))
                     if name in ("Signature", "X-Amz-Signature"))
    result = run_cli("check", url, "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    assert signature not in result.stdout + result.stderr
    shown = json.loads(result.stdout)["models"][0]["path"]
    assert shown.startswith(url.split("?")[0] + "?") and "Signature=***" in shown


def test_a_download_for_keras_does_not_show_a_secret(model_server):
    """`probe`/`recalibrate` download a model at a URL (`remote.local_copy`); its errors too."""
    model_server.mode = "403"
    try:
        with pytest.raises(ModelReadError) as raised:
            with remote.local_copy(secret_urls(model_server)[1], remote.NO_OPTIONS):
                pass
    finally:
        model_server.mode = "range"
    assert_no_secret(str(raised.value), raised.value.source, raised.value.reason)
    assert REDACTED_QUERY in str(raised.value)


@pytest.mark.slow
def test_a_model_run_on_data_from_a_url_is_named_by_the_redacted_url(model_server):
    """`check --data` runs a downloaded copy: its dynamic findings name the URL, not the copy."""
    signed = f"{model_server.url}/untrained.keras?{SIGNED_QUERY}"
    result = run_cli("check", signed, "--data", str(SAMPLES / "cnn_data.npy"), "--format", "json")
    assert result.returncode == 1, result.stderr
    assert_no_secret(result.stdout, result.stderr)
    model = json.loads(result.stdout)["models"][0]
    shown = signed.replace(SIGNED_QUERY, REDACTED_QUERY)
    assert model["path"] == shown
    assert "BN101" in {finding["code"] for finding in model["findings"]}
    assert {finding["source"] for finding in model["findings"]} == {shown}


def test_error_types_and_results_redact_what_they_hold():
    url = "https://user:s3cr3tpass@example.com/m.h5?X-Goog-Signature=SECRETSIG&sig=SECRETTOK"
    from bninspect.report import ModelReport

    from bninspect.recalibration import RecalibrationSummary

    error = ModelReadError(url, f"cannot be read ({url})")
    usage = UsageProblem(f"{url}: cannot upload the recalibrated model")
    report = ModelReport(source=url, description=None, error=f"access denied ({url})")
    # `recalibrate s3://... -o https://...?X-Amz-Signature=...`: both named in its report.
    summary = RecalibrationSummary(source=url, output=url, keras="keras", samples=0, batches=0, batch_size=1,
                                   layers=(), kept=(), check=report)
    assert_no_secret(str(error), error.source, error.reason, str(usage), report.source, report.error,
                     json.dumps(report.to_dict()), summary.source, summary.output)


def test_a_description_read_from_a_url_names_it_redacted(model_server):
    with_password, signed = secret_urls(model_server)
    for url in (with_password, signed):
        description = loaders.load(url)
        assert_no_secret(description.source, *description.notes)
        assert_no_secret(*(finding.source for finding in _static_findings(description)))


def _static_findings(description):
    from bninspect.checking import run_static_rules

    return run_static_rules(description)


def test_the_reason_of_a_backend_exception_is_redacted():
    url = "http://user:s3cr3tpass@example.com/m.h5?token=SECRETTOK"
    assert_no_secret(remote.remote_reason(ConnectionError(f"Cannot connect to host {url}")),
                     remote.remote_reason(OSError(f"unexpected answer from {url}")))


# --- no output names an input --------------------------------------------------------------------

def _model_inputs(tmp_path: Path) -> Path:
    """A directory of inputs: models of every kind, a directory to search, links to m.h5."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(SAMPLES / "cnn_trained.h5", inputs / "m.h5")
    shutil.copy(SAMPLES / "cnn_trained.keras", inputs / "b.keras")
    shutil.copytree(SAMPLES / "cnn_trained_tf2_savedmodel", inputs / "savedmodel")
    preset = inputs / "preset"
    preset.mkdir()
    (preset / "config.json").write_text(json.dumps({"class_name": "ResNetBackbone", "config": {},
                                                   "registered_name": "keras_hub>ResNetBackbone"}))
    shutil.copy(SAMPLES / "cnn_trained.weights.h5", preset / "model.weights.h5")
    checkpoints = inputs / "ckpt_dir"
    checkpoints.mkdir()
    (checkpoints / "checkpoint").write_text('model_checkpoint_path: "ckpt"\n')
    (checkpoints / "ckpt.index").write_bytes(b"index bytes")
    (checkpoints / "ckpt.data-00000-of-00001").write_bytes(b"data bytes")
    registry = inputs / "registry"
    registry.mkdir()
    shutil.copy(SAMPLES / "cnn_trained.keras", registry / "inside.keras")
    (inputs / "hard.h5").hardlink_to(inputs / "m.h5")
    (inputs / "soft.h5").symlink_to(inputs / "m.h5")
    return inputs


# (the command up to the output option, the output, the input that must stay unchanged). Paths
# relative to the inputs directory, which is the working directory.
OVERWRITES = [
    (["check", "m.h5"], "m.h5", "m.h5"),
    (["check", "m.h5"], "./m.h5", "m.h5"),
    (["check", "m.h5"], "../inputs/m.h5", "m.h5"),
    (["check", "m.h5"], "hard.h5", "m.h5"),
    (["check", "m.h5"], "soft.h5", "m.h5"),
    (["check", "m.h5", "b.keras"], "b.keras", "b.keras"),
    (["check", "--format", "json", "m.h5"], "m.h5", "m.h5"),
    (["check", "registry"], "registry/inside.keras", "registry"),
    (["check", "registry"], "registry/new.keras", "registry"),
    (["check", "savedmodel"], "savedmodel/saved_model.pb", "savedmodel"),
    (["check", "savedmodel"], "savedmodel/variables/report.txt", "savedmodel"),
    (["check", "ckpt_dir"], "ckpt_dir/ckpt.index", "ckpt_dir"),
    (["check", "ckpt_dir/ckpt"], "ckpt_dir/ckpt.data-00000-of-00001", "ckpt_dir"),
    (["check", "ckpt_dir/ckpt.index"], "ckpt_dir/ckpt.data-00000-of-00001", "ckpt_dir"),
    (["inspect", "m.h5"], "m.h5", "m.h5"),
    (["inspect", "m.h5"], "soft.h5", "m.h5"),
    (["inspect", "preset"], "preset/config.json", "preset"),
    (["inspect", "m.h5", "--format", "json"], "hard.h5", "m.h5"),
    (["report", "m.h5"], "m.h5", "m.h5"),
    (["report", "savedmodel"], "savedmodel/keras_metadata.pb", "savedmodel"),
    (["report", "m.h5", "--format", "png"], "./m.h5", "m.h5"),
    (["diff", "m.h5", "b.keras"], "m.h5", "m.h5"),
    (["diff", "m.h5", "b.keras"], "soft.h5", "m.h5"),
    (["probe", "m.h5", "--data", str(SAMPLES / "cnn_data.npy")], "m.h5", "m.h5"),
    (["recalibrate", "m.h5", "--data", str(SAMPLES / "cnn_data.npy"), "-o", "new.h5", "--report"], "m.h5", "m.h5"),
    (["recalibrate", "m.h5", "--data", str(SAMPLES / "cnn_data.npy"), "-o"], "hard.h5", "m.h5"),
    (["recalibrate", "preset", "--data", str(SAMPLES / "cnn_data.npy"), "-o"], "preset/copy", "preset"),
]


@pytest.mark.parametrize("command, output, kept", OVERWRITES, ids=[" ".join([*c, o]) for c, o, _ in OVERWRITES])
def test_no_output_may_name_an_input(tmp_path, command, output, kept):
    inputs = _model_inputs(tmp_path)
    option = [] if command[-1] in ("-o", "--report") else ["-o"]
    before = digest(inputs / kept)
    listing = sorted(str(path.relative_to(inputs)) for path in inputs.rglob("*"))
    result = run_cli(*command, *option, output, cwd=inputs)
    assert_one_line_failure(result, str(Path(output)))  # as the option parses it: `./m.h5` is `m.h5`
    assert "TensorFlow" not in result.stderr  # refused before anything was read or imported
    assert digest(inputs / kept) == before
    assert sorted(str(path.relative_to(inputs)) for path in inputs.rglob("*")) == listing, "something was written"


def test_a_report_next_to_the_models_of_a_searched_directory_is_written(tmp_path):
    """`check . -o bninspect.sarif`, as the GitHub Action runs it: a report that is no model file
    and lies in no model's directory overwrites nothing."""
    inputs = _model_inputs(tmp_path)
    result = run_cli("check", "registry", "m.h5", "--format", "sarif", "-o", "registry/bninspect.sarif", cwd=inputs)
    assert result.returncode in (0, 1), result.stderr
    assert json.loads((inputs / "registry" / "bninspect.sarif").read_text())["runs"]


def test_debug_traceback_redacts_the_url_secrets():
    """--debug shows the traceback of a one-line error, with the URL's password and signature
    redacted like every other output (the backend's exception text holds the URL)."""
    url = "http://user:s3cr3tpass@127.0.0.1:9/m.h5?X-Amz-Signature=SECRETSIG"
    result = subprocess.run([sys.executable, "-m", "bninspect", "inspect", url, "--debug"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "s3cr3tpass" not in result.stderr and "SECRETSIG" not in result.stderr
    assert "user:***@127.0.0.1" in result.stderr
