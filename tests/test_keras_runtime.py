"""Which backend bninspect runs a model on: chosen as Keras chooses it, without importing Keras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHOSEN = """
import sys
from bninspect.keras_runtime import configured_backend
print(configured_backend(), "keras" in sys.modules)
"""


def chosen(tmp_path: Path, keras_json: dict | None, variable: str | None) -> list[str]:
    home = tmp_path / "keras_home"
    home.mkdir(exist_ok=True)
    if keras_json is not None:
        (home / "keras.json").write_text(json.dumps(keras_json), encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    env.update({"KERAS_HOME": str(home), "PYTHONPATH": str(ROOT)})
    if variable is not None:
        env["KERAS_BACKEND"] = variable
    result = subprocess.run([sys.executable, "-c", CHOSEN], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("keras_json, variable, expected", [
    (None, None, "tensorflow"),
    ({"backend": "jax"}, None, "jax"),
    ({"backend": "jax"}, "torch", "torch"),  # the variable wins, as in Keras
    ({"floatx": "float32"}, None, "tensorflow"),
    ("not a dict", None, "tensorflow"),
])
def test_the_backend_is_the_one_keras_would_choose_and_keras_is_not_imported(tmp_path, keras_json, variable,
                                                                              expected):
    assert chosen(tmp_path, keras_json, variable) == [expected, "False"]


def test_a_keras_json_that_is_not_json_falls_back_to_tensorflow(tmp_path):
    home = tmp_path / "keras_home"
    home.mkdir()
    (home / "keras.json").write_text("{ not json", encoding="utf-8")
    assert chosen(tmp_path, None, None) == ["tensorflow", "False"]


def test_backend_option_refuses_an_unknown_name_and_a_second_backend(monkeypatch):
    from bninspect.errors import UsageProblem
    from bninspect.keras_runtime import select_backend

    with pytest.raises(UsageProblem, match=r"--backend 'numpy': expected one of tensorflow, jax, torch"):
        select_backend("numpy")
    import keras  # this process runs Keras on TensorFlow (the main suite's backend)

    monkeypatch.setenv("KERAS_BACKEND", keras.config.backend())
    with pytest.raises(UsageProblem, match=r"--backend jax: Keras already runs on tensorflow in this process"):
        select_backend("jax")
    assert select_backend(None) == "tensorflow" and select_backend("tensorflow") == "tensorflow"
