"""Static rules: pure functions over a ModelDescription, one catalogue (`catalogue.RULES`).

Layer: rules. Static rules over the model description (`bninspect.model`), the thresholds and the
findings; nothing here reads settings or files. `bninspect.checking.run_static_rules` runs the
catalogue with the user's settings.
"""
