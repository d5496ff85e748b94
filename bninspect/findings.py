"""What a rule or probe reports: one problem in one layer of one model file.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    code: str
    name: str
    severity: Severity
    source: str  # the model file
    layer: str | None  # layer path, None for findings about the whole model
    message: str  # one line, with the numbers behind it
    hint: str  # how to fix it

    def to_dict(self) -> dict:
        data = asdict(self)
        data["severity"] = self.severity.value
        return data
