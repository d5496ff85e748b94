"""Every rule's findings on BN layers of different widths, grouped as the human outputs group them:
each group's message is one layer's own message (its numbers, its channel list), then the range
of each quantity over the layers, never a sentence whose numbers come from different layers.

The issue's case: BN005 on 64-, 16- and 264-channel layers printed "2…45 of 64…264 channels" and
cut the channel list.
"""

from __future__ import annotations

import numpy as np
import pytest

from bninspect.checking import run_static_rules
from bninspect.findings import HIGHER
from bninspect.loaders.common import bn_layer
from bninspect.model import Layer, ModelDescription
from bninspect.reporters.grouping import FindingGroup, group_findings
from rule_case_specs import BN_DEFAULT_CONFIG, trained_arrays


def _bn(path: str, channels: int, config: dict | None = None, **changes) -> tuple:
    """A BN layer and its graph layer; `changes` maps an array name to {channel: value} (or a
    value for every channel)."""
    arrays = trained_arrays(channels)
    for name, change in changes.items():
        if isinstance(change, dict):
            for channel, value in change.items():
                arrays[name][channel] = value
        else:
            arrays[name][:] = change
    full_config = {**BN_DEFAULT_CONFIG, **(config or {})}
    bn = bn_layer(path, "BatchNormalization", full_config, {name: (values, "float32") for name, values in arrays.items()})
    return bn, Layer(path=path, name=path, class_name="BatchNormalization", config=full_config)


def _description(*specs: tuple, producers: tuple[Layer, ...] = (), **extra) -> ModelDescription:
    bn_layers = tuple(bn for bn, _ in specs)
    layers = producers + tuple(layer for _, layer in specs)
    return ModelDescription(source="m.h5", format="h5-legacy", bn_layers=bn_layers, layers=layers, **extra)


def _every(channels: int, count: int, value: float) -> dict[int, float]:
    """`count` channels spread over the layer, set to `value`."""
    return {int(index): value for index in np.linspace(0, channels - 1, count).round()}


def _fed_by(producer: Layer, spec: tuple) -> tuple:
    bn, layer = spec
    return bn, Layer(path=layer.path, name=layer.name, class_name=layer.class_name, config=layer.config,
                     inbound=(producer.path,))


DROPOUT_A = Layer("drop_a", "drop_a", "Dropout", {"rate": 0.2})
DROPOUT_B = Layer("drop_b", "drop_b", "Dropout", {"rate": 0.5})
CONV_A = Layer("conv_a", "conv_a", "Conv2D", {"use_bias": True, "filters": 4, "data_format": "channels_last"})
CONV_B = Layer("conv_b", "conv_b", "Conv2D", {"use_bias": True, "filters": 64, "data_format": "channels_last"})

CASES = {
    "BN001": _description(_bn("a", 4, moving_mean=0.0, moving_variance=1.0),
                          _bn("b", 64, moving_mean=0.0, moving_variance=1.0)),
    "BN002": _description(_bn("a", 4, gamma=1.0, beta=0.0), _bn("b", 16, gamma=1.0, beta=0.0)),
    "BN003": _description(_bn("a", 4, moving_variance={0: np.nan}),
                          _bn("b", 16, gamma={1: np.inf}, moving_mean=_every(16, 3, np.nan))),
    "BN004": _description(_bn("a", 16, moving_variance={2: -0.5}), _bn("b", 64, moving_variance=_every(64, 3, -0.1))),
    "BN005": _description(_bn("block1", 64, gamma=2.0, moving_variance=_every(64, 2, 1e-8)),
                          _bn("block2", 16, gamma=0.5, moving_variance=_every(16, 5, 1e-8)),
                          _bn("block3", 264, gamma=1.0, moving_variance=_every(264, 45, 1e-8))),
    "BN006": _description(_bn("a", 4, gamma={3: 0.0}), _bn("b", 64, gamma=_every(64, 7, 0.0))),
    "BN007": _description(_bn("a", 16, {"epsilon": 1e-8}, moving_variance={0: 1e-12}),
                          _bn("b", 64, {"epsilon": 1e-8}, gamma=5.0, moving_variance=_every(64, 3, 1e-12))),
    "BN008": _description(_bn("a", 4, {"momentum": 0.1}), _bn("b", 64, {"momentum": 0.1}),
                          _bn("c", 16, {"momentum": 0.3})),
    "BN011": _description(_fed_by(CONV_A, _bn("a", 4)), _fed_by(CONV_B, _bn("b", 64)), producers=(CONV_A, CONV_B)),
    "BN012": _description(_fed_by(DROPOUT_A, _bn("a", 4)), _fed_by(DROPOUT_B, _bn("b", 64)),
                          producers=(DROPOUT_A, DROPOUT_B)),
    "BN013": _description(_bn("a", 4, {"trainable": False}), _bn("b", 64, {"trainable": False})),
    "BN014": _description(_bn("a", 4, moving_mean={1: 0.0}, moving_variance={1: 1.0}),
                          _bn("b", 64, moving_mean=_every(64, 9, 0.0), moving_variance=_every(64, 9, 1.0))),
    "BN016": _description(_bn("a", 4, {"epsilon": 1e-5}), _bn("b", 64, {"epsilon": 1e-6}), dtype_policy="mixed_float16"),
    "BN018": _description(_bn("a", 4, moving_variance=1.5), _bn("b", 64, {"momentum": 0.995}, moving_variance=1.5),
                          training_steps=48),
}


def _groups(code: str) -> list[FindingGroup]:
    findings = [f for f in run_static_rules(CASES[code]) if f.code == code]
    assert len(findings) >= 2, findings
    return group_findings(findings)


@pytest.mark.parametrize("code", sorted(CASES))
def test_a_group_message_is_one_layers_message_then_ranges(code):
    for group in _groups(code):
        if group.count == 1:
            continue
        text = group.message()
        messages = {finding.message for finding in group.findings}
        if len(messages) == 1:
            assert text == group.findings[0].message
            continue
        lead, _, ranges = text.partition("; per layer: ")
        named = [finding for finding in group.findings
                 if lead in (f"worst: {finding.layer}, {finding.message}", f"e.g. {finding.layer}: {finding.message}")]
        assert named, f"{text!r} does not start with one layer's own message"
        assert "…" not in lead
        if lead.startswith("worst: "):
            (worst,) = named
            measure = next(quantity for quantity in worst.quantities if quantity.worse is not None)
            values = [next(q.value for q in finding.quantities if q.label == measure.label) for finding in group.findings]
            assert measure.value == (max(values) if measure.worse == HIGHER else min(values))
        if ranges:
            assert all("…" in part for part in ranges.split(", "))


def test_bn005_names_the_worst_layer_with_its_own_numbers():
    (group,) = _groups("BN005")
    assert group.message() == (
        "worst: block3, 45 of 264 channels have moving variance below epsilon 0.001 (min 1e-08) and effective scale "
        "|gamma|/sqrt(var+eps) up to 31.62, above 10: channels 0, 6, 12, 18, 24, 30 and 39 more; "
        "per layer: 2…45 amplified collapsed channels, effective scale up to 15.81…63.25")


@pytest.mark.parametrize(("code", "expected"), [
    ("BN003", "worst: b, non-finite values in 4 of 16 channels: gamma 1 Inf, moving_mean 3 NaN; "
              "per layer: 1…4 channels with NaN/Inf"),
    ("BN004", "worst: b, 3 of 64 channels have a negative moving variance (min -0.1): channels 0, 32, 63; "
              "per layer: 1…3 channels with a negative variance, lowest variance -0.5…-0.1"),
    ("BN016", "worst: b, epsilon 1e-06 is below 6.1e-05, the smallest normal float16, under dtype policy "
              "mixed_float16; per layer: epsilon 1e-06…1e-05"),
    ("BN018", "worst: b, after 48 training steps at momentum 0.995, 79% of the moving statistics are still the "
              "initial 0/1 (below 5% needs 598 steps); per layer: 62%…79% still initial, momentum 0.99…0.995"),
    ("BN001", "e.g. a: moving mean is exactly 0 and moving variance exactly 1 in all 4 channels: the statistics "
              "were never updated; per layer: 4…64 channels"),
    ("BN012", "worst: b, drop_b (Dropout, rate 0.5) feeds this BN: the variance BN sees in training differs from "
              "the one at inference; per layer: dropout rate 0.2…0.5"),
])
def test_group_messages(code, expected):
    (group,) = _groups(code)
    assert group.message() == expected


def test_pytorch_momenta_group_by_their_fix():
    """BN008's hint names the momentum to use, so each momentum is a group of its own, whose layers
    have the same message."""
    groups = _groups("BN008")
    assert [(group.count, group.message()) for group in groups] == [
        (2, "momentum 0.1 is below 0.5: every update keeps only 10% of the old moving statistics (Keras default 0.99)"),
        (1, "momentum 0.3 is below 0.5: every update keeps only 30% of the old moving statistics (Keras default 0.99)"),
    ]
