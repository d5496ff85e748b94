"""Reporters take plain data (ModelReports, findings) and return text. One module per format."""

from enum import Enum


class OutputFormat(str, Enum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"
    JUNIT = "junit"
    GITHUB = "github"
