"""Properties over arbitrary BN arrays: the rules never crash, and the exact-value rules agree
with their definitions whatever the numbers (NaN, Inf, negative, huge)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bninspect.loaders.common import bn_layer
from bninspect.model import Layer, ModelDescription
from bninspect.checking import run_static_rules
from bninspect.rules.catalogue import RULES_BY_CODE

values = st.one_of(st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e-12, 1e30]),
                   st.floats(allow_nan=True, allow_infinity=True, width=32))


@st.composite
def bn_layers(draw):
    channels = draw(st.integers(1, 6))
    arrays = {key: np.array(draw(st.lists(values, min_size=channels, max_size=channels)), dtype=np.float64)
              for key in ("gamma", "beta", "moving_mean", "moving_variance")}
    config = {"axis": draw(st.sampled_from([-1, 0, 1, 3, [1, 2]])),
              "epsilon": draw(st.sampled_from([0.0, 1e-8, 1e-5, 1e-3, 1.0])),
              "momentum": draw(st.sampled_from([0.0, 0.1, 0.99, 1.0])),
              "trainable": draw(st.booleans()), "center": True, "scale": True,
              "dtype": draw(st.sampled_from(["float32", "mixed_float16", None]))}
    return config, arrays


@settings(max_examples=150, deadline=None)
@given(bn_layers(), st.booleans())
def test_rules_never_crash_and_findings_are_well_formed(layer_spec, has_config):
    config, arrays = layer_spec
    bn = bn_layer("bn", "BatchNormalization", config if has_config else None,
                  {key: (value, "float32") for key, value in arrays.items()})
    layers = (Layer("conv", "conv", "Conv2D", {"data_format": "channels_first", "use_bias": True}),
              Layer("bn", "bn", "BatchNormalization", config, inbound=("conv",), input_shape=(None, 3, 4, 4)))
    description = ModelDescription(source="m.h5", format="h5-legacy" if has_config else "h5-weights",
                                   bn_layers=(bn,), has_config=has_config,
                                   layers=layers if has_config else (), outputs=("bn",) if has_config else ())
    findings = run_static_rules(description)
    codes = {finding.code for finding in findings}
    for finding in findings:
        rule = RULES_BY_CODE[finding.code]
        assert finding.name == rule.name and finding.source == "m.h5"
        assert finding.message and "\n" not in finding.message and finding.hint
    initial = (arrays["moving_mean"] == 0) & (arrays["moving_variance"] == 1)
    assert ("BN001" in codes) == bool(initial.all())
    assert ("BN014" in codes) == bool(initial.any() and not initial.all())
    assert ("BN003" in codes) == any(not np.isfinite(a).all() for a in arrays.values())
    assert ("BN004" in codes) == bool((arrays["moving_variance"] < 0).any())
    assert ("BN015" in codes) == (not has_config)
