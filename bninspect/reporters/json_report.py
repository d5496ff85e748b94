"""The schema_version 1 JSON document.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import json
import math

from bninspect.report import ModelReport, document


def _finite_or_text(value):
    # JSON has no NaN/Inf; the document stays parseable by strict parsers.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite_or_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_text(item) for item in value]
    return value


def render(reports: list[ModelReport]) -> str:
    # Compact: indent=None lets json use its C encoder, which matters for files with thousands of layers.
    data = document(reports)
    try:
        return json.dumps(data, allow_nan=False) + "\n"
    except ValueError:
        # Only a document with a NaN/Inf somewhere (rare) pays for the walk that spells them out.
        return json.dumps(_finite_or_text(data), allow_nan=False) + "\n"
