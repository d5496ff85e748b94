"""Reporters take plain data (ModelReports, findings) and return text. One module per format.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from enum import Enum


class OutputFormat(str, Enum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"
    JUNIT = "junit"
    GITHUB = "github"
    GITLAB = "gitlab"
