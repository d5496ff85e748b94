"""`check --changed-since REF` in a temporary git repository of real model files: exactly the
added, modified and renamed models are checked; deleted and unchanged ones are not; outside a
repository or with an unknown ref it is a one-line error, exit 2. With a baseline in the
repository, a pull request fails only on what it introduces."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from check_model_files import run

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed repository: models/ holds a healthy, an untrained and a BN-last model, and one
    more healthy model for a test to delete."""
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "test@example.com")
    _git(tmp_path, "config", "user.name", "test")
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(SAMPLES / "cnn_trained.keras", models / "healthy.keras")
    shutil.copy(SAMPLES / "cnn_untrained.keras", models / "old.keras")
    shutil.copy(SAMPLES / "bn_last_layer.keras", models / "head.keras")
    shutil.copy(SAMPLES / "cnn_trained.keras", models / "gone.keras")
    (tmp_path / "README.md").write_text("models\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "models")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _checked(*args: str) -> tuple[int, list[str]]:
    result = run("check", *args, "--format", "json")
    return result.exit_code, sorted(model["path"] for model in json.loads(result.stdout)["models"])


def test_exactly_the_changed_models_are_checked(repo: Path):
    shutil.copy(SAMPLES / "cnn_untrained.keras", repo / "models" / "healthy.keras")  # modified, not staged
    _git(repo, "mv", "models/head.keras", "models/renamed_head.keras")                # renamed
    shutil.copy(SAMPLES / "channels_first_wrong_axis.keras", repo / "models" / "added.keras")
    _git(repo, "add", "models/added.keras")                                          # added
    _git(repo, "rm", "-q", "models/gone.keras")                                      # deleted
    (repo / "README.md").write_text("changed, not a model\n")
    code, checked = _checked("--changed-since", "HEAD", "models")
    assert checked == ["models/added.keras", "models/healthy.keras", "models/renamed_head.keras"]
    assert code == 1


def test_committed_changes_against_a_branch_point(repo: Path):
    _git(repo, "checkout", "-q", "-b", "feature")
    shutil.copy(SAMPLES / "channels_first_wrong_axis.keras", repo / "models" / "added.keras")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "add a model")
    code, checked = _checked("--changed-since", "HEAD~1", "models")
    assert checked == ["models/added.keras"]
    code, checked = _checked("--changed-since", "HEAD", "models")
    assert (code, checked) == (0, [])


def test_with_a_baseline_a_change_fails_only_on_what_it_introduces(repo: Path):
    assert run("check", "--update-baseline", "baseline.json", "models").exit_code == 0
    _git(repo, "add", "baseline.json")
    _git(repo, "commit", "-q", "-m", "baseline")
    # Save the accepted untrained model again (other bytes, same findings) and add a bad one.
    with zipfile.ZipFile(repo / "models" / "old.keras", "a") as archive:
        archive.comment = b"saved again"
    shutil.copy(SAMPLES / "cnn_untrained.h5", repo / "models" / "new_bad.h5")
    _git(repo, "add", ".")
    result = run("check", "--changed-since", "HEAD", "--baseline", "baseline.json", "models", "--format", "json")
    document = json.loads(result.stdout)
    assert result.exit_code == 1
    assert [model["path"] for model in document["models"]] == ["models/new_bad.h5", "models/old.keras"]
    states = {(model["path"], finding["baseline_state"]) for model in document["models"]
              for finding in model["findings"]}
    assert states == {("models/new_bad.h5", "new"), ("models/old.keras", "unchanged")}
    assert document["baseline"]["fixed"] == []  # the models not checked are not "fixed"


def test_outside_a_repository_or_with_a_bad_ref_is_one_line_exit_2(repo: Path, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("not_a_repo")
    shutil.copy(SAMPLES / "cnn_trained.keras", elsewhere / "m.keras")
    result = run("check", "--changed-since", "HEAD", str(elsewhere))
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "is not inside a git repository" in result.stderr
    result = run("check", "--changed-since", "no-such-ref", "models")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1 and "no-such-ref" in result.stderr


def test_name_status_parsing():
    from bninspect.changed import parse_name_status

    output = "M\tmodels/a.h5\nD\tmodels/gone.h5\nR087\tmodels/old.keras\tmodels/new.keras\nA\tb c.keras\nT\tlink.h5\n"
    assert parse_name_status(output) == ["models/a.h5", "models/new.keras", "b c.keras", "link.h5"]
