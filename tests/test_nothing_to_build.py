"""`ModelDescription.nothing_to_build`: which files `--build` leaves as read, and BN015's hint for
them. tests/test_build.py runs `--build` on real files of each kind."""

from __future__ import annotations

import numpy as np
import pytest

from bninspect.checking import run_static_rules
from bninspect.model import CODE, GRAPH, NO_ARCHITECTURE, Architecture, BNLayer, ModelDescription


def _description(kind: str, graph: bool, bn_config: bool, functional: bool | None = None,
                 built: bool = False) -> ModelDescription:
    layer = BNLayer(path="bn", class_name="BatchNormalization", moving_mean=np.full(2, 0.5),
                    moving_variance=np.full(2, 2.0), momentum=0.99 if bn_config else None, has_config=bn_config)
    architecture = Architecture(kind, class_name="Net" if kind == CODE else None, functional=functional)
    return ModelDescription(source="model", format="savedmodel", bn_layers=(layer,), has_config=graph,
                            architecture=architecture, built=built)


@pytest.mark.parametrize("kind, graph, bn_config, functional, built, expected", [
    (NO_ARCHITECTURE, False, False, None, False, True),  # weights only: no class to build
    (GRAPH, True, True, None, False, True),  # a graph holding every config
    (GRAPH, True, False, None, False, False),  # a BN inside a custom layer: its config comes from building
    (CODE, False, True, False, False, True),  # a tf-keras subclassed SavedModel: call() is Python
    (CODE, False, True, None, False, False),  # not said whether Functional: the graph may come
    (CODE, False, True, True, False, False),  # a Functional subclass: building gives the graph
    (CODE, False, False, False, False, False),  # BN configs missing: building gives them
    (CODE, True, True, True, True, True),  # already built
], ids=["weights-only", "graph", "graph-custom-layer", "subclassed-savedmodel", "code-unknown", "code-functional",
        "code-without-configs", "built"])
def test_nothing_to_build(kind, graph, bn_config, functional, built, expected):
    assert _description(kind, graph, bn_config, functional, built).nothing_to_build is expected


@pytest.mark.parametrize("functional, suggests_build", [(False, False), (None, True)])
def test_bn015_suggests_build_only_when_building_adds_something(functional, suggests_build):
    (bn015,) = [finding for finding in run_static_rules(_description(CODE, False, True, functional))
                if finding.code == "BN015"]
    assert ("--build builds Net" in bn015.hint) is suggests_build
    assert ("not a Functional model" in bn015.hint) is not suggests_build
