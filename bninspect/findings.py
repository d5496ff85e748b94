"""What a rule or probe reports: one problem in one layer of one model file.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


# Which way a quantity makes a layer worse (`Quantity.worse`).
HIGHER = "higher"
LOWER = "lower"


@dataclass(frozen=True)
class Quantity:
    """One number of a finding's message, named, so that grouped outputs can give its range over
    the layers of a group without taking it apart from the text (where "2…45 of 64…264 channels"
    paired the count of one layer with the size of another).

    `label` reads with the range in place of `{}`: "{} channels below epsilon", "momentum {}".
    `worse` says which way the layer is worse (the first quantity with a direction names the
    worst layer of a group); None for a number that does not measure how bad the layer is.
    """

    label: str
    value: float
    text: str  # the number as the message writes it
    worse: str | None = HIGHER


# The fields of a finding in the JSON document, SARIF and the rest (quantities stay internal).
FINDING_FIELDS = ("code", "name", "severity", "source", "layer", "message", "hint")


@dataclass(frozen=True)
class Finding:
    code: str
    name: str
    severity: Severity
    source: str  # the model file
    layer: str | None  # layer path, None for findings about the whole model
    message: str  # one line, with the numbers behind it
    hint: str  # how to fix it
    quantities: tuple[Quantity, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in FINDING_FIELDS}
        data["severity"] = self.severity.value
        return data


@dataclass(frozen=True)
class Suppressed:
    """A finding a per-layer or per-file ignore dropped, and which one (`--show-suppressed`)."""

    finding: Finding
    by: str  # "per-file-ignores 'legacy/*'"
