"""The package as users install it: the light install without TensorFlow, the release files, the
pre-commit hooks and the GitHub Action.

The slow tests build the sdist and wheel once per session (`python -m build`, as a release does),
install the wheel into one fresh virtual environment with no TensorFlow, and run the real
pre-commit (`pre-commit try-repo`) against this repository. They need PyPI (pip installs the
light dependencies into the venvs) and git. Every subprocess runs without PYTHONPATH, so what is
tested is the installed package, not this checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
TENSORFLOW_INSTALL = "pip install 'bninspect[tensorflow]'"
REPORT_INSTALL = "pip install 'bninspect[report]'"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without PYTHONPATH (so a venv runs its own bninspect) plus `extra`."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env.update(extra)
    return env


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(arg) for arg in args], cwd=cwd, env=env if env is not None else clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_failure(result: subprocess.CompletedProcess, *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("bninspect: error:")]
    assert len(errors) == 1, output
    for text in expected:
        assert text in errors[0], output


USAGE_DOC = ROOT / "docs" / "usage.md"  # where the README sends users for the workflow and the hook config


def documented_block(marker: str) -> str:
    """The fenced code block between `<!-- marker:start -->` and `<!-- marker:end -->` in docs/usage.md."""
    usage = USAGE_DOC.read_text(encoding="utf-8")
    section = re.search(rf"<!-- {marker}:start -->\n```\w*\n(.*?)```\n<!-- {marker}:end -->", usage, re.S)
    assert section is not None, f"docs/usage.md has no code block between the {marker} markers"
    return section.group(1)


# --- a missing extra, simulated: fast, and every command that needs TensorFlow or matplotlib -------

# Runs the CLI with every backend, keras, tf_keras and matplotlib made unimportable, as in the light install.
WITHOUT_EXTRAS = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "jax", "torch", "keras", "tf_keras", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
from bninspect.cli import main
main(sys.argv[1:])
"""


def run_without_extras(*args: str | Path) -> subprocess.CompletedProcess:
    return run(sys.executable, "-c", WITHOUT_EXTRAS, *args, cwd=ROOT, env=clean_env(PYTHONPATH=str(ROOT)),
               timeout=120)


MODEL = SAMPLES / "cnn_trained.keras"
DATA = SAMPLES / "cnn_data.npy"


@pytest.mark.parametrize("args, needed_for, install", [
    (("probe", MODEL, "--data", DATA), "`bninspect probe` needs TensorFlow", TENSORFLOW_INSTALL),
    (("check", MODEL, "--data", DATA), "`bninspect check --data` needs TensorFlow", TENSORFLOW_INSTALL),
    (("recalibrate", MODEL, "--data", DATA, "-o", "never-written.keras"), "`bninspect recalibrate` needs TensorFlow",
     TENSORFLOW_INSTALL),
    (("inspect", SAMPLES / "cnn_trained_tf2_savedmodel"),
     "cnn_trained_tf2_savedmodel: reading SavedModel variables needs TensorFlow", TENSORFLOW_INSTALL),
    (("report", MODEL, "-o", "never-written.html"), "`bninspect report` needs matplotlib", REPORT_INSTALL),
    (("probe", MODEL, "--data", DATA, "--backend", "jax"), "`bninspect probe` on the jax backend needs JAX",
     "pip install 'bninspect[jax]'"),
    (("check", MODEL, "--data", DATA, "--backend", "torch"), "`bninspect check --data` on the torch backend needs "
     "PyTorch", "pip install 'bninspect[torch]'"),
    (("probe", MODEL, "--data", DATA, "--backend", "numpy"), "--backend 'numpy': expected one of tensorflow, jax, "
     "torch", ""),
], ids=["probe", "check-data", "recalibrate", "savedmodel", "report", "jax", "torch", "unknown-backend"])
def test_a_command_that_needs_a_missing_extra_says_which_in_one_line(args, needed_for, install):
    result = run_without_extras(*args)
    assert_one_line_failure(result, needed_for, install)
    assert not (ROOT / "never-written.keras").exists() and not (ROOT / "never-written.html").exists()


def test_check_without_tensorflow_reads_the_other_files_and_names_the_savedmodel():
    result = run_without_extras("check", SAMPLES / "cnn_trained_tf2_savedmodel", SAMPLES / "cnn_untrained.h5")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "BN001" in result.stdout  # the .h5 file was still checked
    assert f"reading SavedModel variables needs TensorFlow, which is not installed: {TENSORFLOW_INSTALL}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_broken_tensorflow_install_is_not_reported_as_a_missing_extra():
    """A module missing inside TensorFlow is TensorFlow's own error: the extra is there, something
    else is wrong, and the pip command would not help."""
    script = """
import sys, types
broken = types.ModuleType("tensorflow")
class Broken:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow":
            raise ModuleNotFoundError("No module named 'tensorflow.python._pywrap'", name="tensorflow.python._pywrap")
sys.meta_path.insert(0, Broken())
from bninspect.tf_runtime import import_tensorflow
try:
    import_tensorflow(quiet=False, keras=False)
except ModuleNotFoundError as error:
    print("ModuleNotFoundError", error.name)
"""
    result = run(sys.executable, "-c", script, env=clean_env(PYTHONPATH=str(ROOT)), timeout=60)
    assert result.stdout.strip() == "ModuleNotFoundError tensorflow.python._pywrap", result.stdout + result.stderr


def test_shell_completion_is_enabled():
    result = run(sys.executable, "-m", "bninspect", "--show-completion", "bash", env=clean_env(PYTHONPATH=str(ROOT)),
                 timeout=60)
    assert result.returncode == 0, result.stderr
    assert "_BNINSPECT_COMPLETE=complete_bash" in result.stdout


# --- pre-commit and the GitHub Action: the files validate against their schemas ---------------------

def test_action_validates_against_the_github_actions_schema():
    result = run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-actions",
                 ROOT / "action.yml", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    action = (ROOT / "action.yml").read_text(encoding="utf-8")
    assert '"$ACTION_PATH"' in action and "ACTION_PATH: ${{ github.action_path }}" in action
    assert "github/codeql-action/upload-sarif@" in action


def test_documented_workflow_validates_against_the_github_workflows_schema(tmp_path):
    workflow = tmp_path / "bninspect.yml"
    workflow.write_text(documented_block("workflow"), encoding="utf-8")
    result = run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", workflow,
                 timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"uses: [\w-]+/bninspect@v\d", workflow.read_text(encoding="utf-8"))


def test_hooks_manifest_and_documented_config_validate_with_pre_commit(tmp_path):
    manifest = run(sys.executable, "-m", "pre_commit", "validate-manifest", ROOT / ".pre-commit-hooks.yaml",
                   timeout=120)
    assert manifest.returncode == 0, manifest.stdout + manifest.stderr
    config = tmp_path / ".pre-commit-config.yaml"
    config.write_text(documented_block("pre-commit-config"), encoding="utf-8")
    validated = run(sys.executable, "-m", "pre_commit", "validate-config", config, timeout=120)
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_the_hooks_run_on_every_model_suffix_and_nothing_else():
    import yaml  # pre-commit's own dependency

    hooks = {hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text("utf-8"))}
    assert hooks["bninspect"]["entry"] == "bninspect check --strict"
    assert hooks["bninspect-errors"]["entry"] == "bninspect check"
    for hook in hooks.values():
        assert hook["language"] == "python" and hook["pass_filenames"] is True
        files = re.compile(hook["files"])
        for name in ("m.h5", "dir/m.hdf5", "m.keras", "m.weights.h5", "M.H5"):
            assert files.search(name), (hook["id"], name)
        for name in ("data.npy", "m.keras.bak", "h5", "notes.md"):
            assert not files.search(name), (hook["id"], name)


# --- the release files ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel of this checkout, built once per session as a release builds them
    (`python -m build`: the sdist first, then the wheel from the unpacked sdist)."""
    out = tmp_path_factory.mktemp("dist")
    result = run(sys.executable, "-m", "build", "--outdir", out, ROOT, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.mark.slow
def test_the_distributions_pass_twine_check_strict(dist):
    result = run(sys.executable, "-m", "twine", "check", "--strict", dist["wheel"], dist["sdist"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_its_metadata_not_the_tests(dist):
    from bninspect._version import __version__

    assert dist["wheel"].name == f"bninspect-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"bninspect-{__version__}.dist-info/METADATA").decode("utf-8")
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "bninspect").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    # The rule documentation `bninspect explain` prints lives in the catalogue module.
    assert "bninspect/rules/catalogue.py" in names
    assert not [name for name in names if name.startswith(("tests/", "sample_models/", "benchmarks/", "docs/"))]
    assert not [name for name in names if not name.startswith(("bninspect/", f"bninspect-{__version__}.dist-info/"))]
    assert f"bninspect-{__version__}.dist-info/licenses/LICENSE" in names

    headers = [line for line in metadata.split("\n\n", 1)[0].splitlines()]
    requires = [line.removeprefix("Requires-Dist: ") for line in headers if line.startswith("Requires-Dist: ")]
    core = sorted(re.split(r"[<>=;\[ ]", req, maxsplit=1)[0] for req in requires if "extra ==" not in req)
    assert core == ["h5py", "numpy", "rich", "typer"]
    assert 'tensorflow>=2.16; extra == "tensorflow"' in requires
    assert 'matplotlib>=3.7; extra == "report"' in requires
    for header in ("Description-Content-Type: text/markdown", "License-Expression: MIT", "Requires-Python: >=3.10",
                   f"Version: {__version__}"):
        assert header in headers, header
    assert any(line.startswith("Project-URL: Changelog, ") for line in headers)
    assert any(line.startswith("Classifier: ") for line in headers)
    assert "## Quick start" in metadata  # the README is the long description


@pytest.mark.slow
def test_the_sdist_can_rebuild_and_test_the_package(dist):
    with tarfile.open(dist["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "bninspect/_version.py",
                   "tests/conftest.py", "tests/test_packaging.py", "sample_models/cnn_untrained.h5", "docs/rules.md"):
        assert needed in names, needed
    assert not [name for name in names if "__pycache__" in name]


# --- the wheel in a fresh virtual environment without TensorFlow ---------------------------------------

@pytest.fixture(scope="session")
def light_venv(dist, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel and its light dependencies (from PyPI); returns its bin dir."""
    home = tmp_path_factory.mktemp("light-venv")
    venv.EnvBuilder(with_pip=True).create(home)
    bin_dir = home / ("Scripts" if os.name == "nt" else "bin")
    result = run(bin_dir / "python", "-m", "pip", "install", "--disable-pip-version-check", dist["wheel"], timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return bin_dir


@pytest.mark.slow
def test_the_light_install_has_no_tensorflow_keras_or_matplotlib(light_venv):
    probe = "import importlib.util as u; print([m for m in ('tensorflow', 'keras', 'tf_keras', 'matplotlib') if u.find_spec(m)])"
    result = run(light_venv / "python", "-c", probe)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.slow
def test_check_works_from_the_light_install(light_venv, tmp_path):
    result = run(light_venv / "bninspect", "check", SAMPLES / "cnn_untrained.h5", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BN001" in result.stdout
    trained = run(light_venv / "bninspect", "check", "--strict", SAMPLES / "cnn_trained.keras", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr


@pytest.mark.slow
def test_probe_from_the_light_install_says_how_to_add_the_extra(light_venv, tmp_path):
    result = run(light_venv / "bninspect", "probe", SAMPLES / "cnn_trained.keras", "--data", SAMPLES / "cnn_data.npy",
                 cwd=tmp_path)
    assert_one_line_failure(result, "`bninspect probe` needs TensorFlow", TENSORFLOW_INSTALL)
    report = run(light_venv / "bninspect", "report", SAMPLES / "cnn_trained.keras", cwd=tmp_path)
    assert_one_line_failure(report, "`bninspect report` needs matplotlib", REPORT_INSTALL)
    assert not (tmp_path / "bninspect-report.html").exists()


# --- the pre-commit hook, run by the real pre-commit ---------------------------------------------------

def _scratch_repository(path: Path, model: Path) -> Path:
    """A git repository at `path` with one committed model file (a copy of `model`)."""
    path.mkdir()
    env = clean_env(GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
                    GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com")
    shutil.copy(model, path / model.name)
    for command in (("init", "-q"), ("add", model.name), ("commit", "-q", "-m", "a model")):
        result = run("git", *command, cwd=path, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="session")
def pre_commit_home(tmp_path_factory) -> Path:
    """A PRE_COMMIT_HOME of the tests' own, so the user's ~/.cache/pre-commit is left alone.

    try-repo builds the hook's environment in a temporary store of its own on every run, so each
    run installs bninspect (the light install, from PyPI) afresh: about a minute.
    """
    if shutil.which("git") is None:
        pytest.skip("pre-commit needs git")
    inside = run("git", "-C", ROOT, "rev-parse", "--is-inside-work-tree", timeout=60)
    if inside.returncode != 0:
        pytest.skip("this checkout is not a git repository (an sdist?): pre-commit try-repo clones one")
    return tmp_path_factory.mktemp("pre-commit-home")


@pytest.mark.slow
@pytest.mark.parametrize("model, passes", [("cnn_untrained.h5", False), ("cnn_trained.keras", True)])
def test_pre_commit_try_repo_runs_the_hook(pre_commit_home, tmp_path, model, passes):
    """`pre-commit try-repo` clones this repository at HEAD (with uncommitted changes to tracked
    files in a temporary commit; untracked files are left out), installs the hook's environment
    and runs `bninspect check --strict` on the scratch repository's model file."""
    scratch = _scratch_repository(tmp_path / "scratch", SAMPLES / model)
    result = run(sys.executable, "-m", "pre_commit", "try-repo", ROOT, "bninspect", "--all-files", "--verbose",
                 cwd=scratch, env=clean_env(PRE_COMMIT_HOME=str(pre_commit_home), PRE_COMMIT_COLOR="never"),
                 timeout=1200)
    output = result.stdout + result.stderr
    if passes:
        assert result.returncode == 0, output
        assert "Passed" in output and model in output
    else:
        assert result.returncode == 1, output
        assert "Failed" in output and "BN001" in output and model in output
