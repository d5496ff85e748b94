"""bninspect: find BatchNormalization problems in saved Keras models.

In a notebook::

    import bninspect
    report = bninspect.inspect("model.keras")          # or an in-memory keras.Model
    report                                              # renders as the `bninspect MODEL` table
    report.findings, report.to_dict()
    bninspect.inspect(model, data=x_val)                # + the dynamic analysis (BN101-BN104)
    bninspect.check(["a.h5", "models/"])                # a flat tuple of findings
    model.fit(x, y, callbacks=[bninspect.BNMonitor()])  # watch BN while training; monitor.report

Importing bninspect is cheap: Keras/TensorFlow are imported only when a model has to run
(`data=...`) or is passed in memory (then they are already imported).

Layer: api (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from bninspect._version import __version__

__all__ = ["__version__", "inspect", "check", "recalibrate", "BNMonitor", "BNMonitorError", "ModelReport", "Finding",
           "Severity", "Settings", "ModelReadError"]

# Names re-exported lazily (PEP 562), so that `import bninspect` and `bninspect --version` stay fast.
_LAZY = {
    "ModelReport": "bninspect.report",
    "Finding": "bninspect.findings",
    "Severity": "bninspect.findings",
    "Settings": "bninspect.config",
    "ModelReadError": "bninspect.errors",
    # A Keras callback; Keras itself is imported when the first monitor is made.
    "BNMonitor": "bninspect.monitor",
    "BNMonitorError": "bninspect.monitor",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bninspect' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def inspect(model, data=None, *, batch_size=32, limit=None, rescale=None, unsafe=False, custom_objects=None,
            select=None, ignore=None, config=None, settings=None, progress=False):
    """Inspect one model; returns a ModelReport.

    model: a model file (.h5, .hdf5, .keras, .weights.h5) or SavedModel directory, read statically
    (no TensorFlow, no code from the file runs); or an in-memory Keras 3 `keras.Model` or tf-keras
    model, described from its layers. The same static rules run either way.

    data: optional input samples, to also run the model on them in inference mode and report
    BN101-BN104 (stats drift, train/inference gap, non-finite activations, dead channels): a path
    (.npy, .npz, a directory of images) or arrays (one array, a list in input order, or a dict by
    input name). `batch_size`, `limit` (first N samples), `rescale` (a number or "1/255", applied
    to the inputs), `unsafe` (allow Lambda layers, whose code is stored in the file) and
    `custom_objects` (a dict, or a Python file that is executed) are those of `bninspect probe`.
    The dynamic findings follow the static ones in `report.findings`; the measurements are in
    `report.to_dict()["probe"]`.

    Settings: `settings` (a bninspect.Settings), else `config` (a TOML file), else the nearest
    pyproject.toml's [tool.bninspect], like the CLI. `select` / `ignore` (codes, names or prefixes)
    go on top with the CLI's meaning.

    The report has `.bn_layers`, `.findings` (each with .code, .name, .severity, .layer, .message,
    .hint) and `.to_dict()` (the model entry of the JSON document), and renders as the
    `bninspect MODEL` table in Jupyter or with rich.

    Raises ModelReadError for a file that cannot be read, TypeError for something that is not a
    model, SettingsError (a ValueError) for a bad configuration, and with `data` the one-line
    errors of `bninspect probe` (model refused, data that does not fit the model).
    """
    from bninspect import api

    return api.inspect(model, data, batch_size=batch_size, limit=limit, rescale=rescale, unsafe=unsafe,
                       custom_objects=custom_objects, select=select, ignore=ignore, config=config,
                       settings=settings, progress=progress)


def check(models, data=None, *, batch_size=32, limit=None, rescale=None, unsafe=False, custom_objects=None,
          select=None, ignore=None, config=None, settings=None, unreadable="raise", progress=False):
    """Check models; returns a flat tuple of findings over all of them (empty: nothing found).

    models: one model file, SavedModel directory, directory (searched recursively for model
    files, like `bninspect check DIR`) or in-memory Keras model, or a list of any of these. Each
    finding's `.source` names its file. Pass the findings' severities to your own gate, e.g.
    `assert not [f for f in findings if f.severity == "error"]`.

    data and the options after it: as for `bninspect.inspect`; with `data`, every model is also
    run on the same samples and the dynamic findings are included.

    Files that cannot be checked (unreadable, a directory without model files, and with `data` a
    model that cannot be loaded or run on the data): with `unreadable="raise"` (the default) the
    first one raises its error (ModelReadError for an unreadable file), so a broken file never
    passes silently; with `unreadable="skip"` each is skipped with a warning (warnings.warn) and
    the findings of the others are returned.
    """
    from bninspect import api

    return api.check(models, data, batch_size=batch_size, limit=limit, rescale=rescale, unsafe=unsafe,
                     custom_objects=custom_objects, select=select, ignore=ignore, config=config,
                     settings=settings, unreadable=unreadable, progress=progress)


def recalibrate(model, data, *, layers=None, batch_size=32, limit=None, rescale=None, progress=False):
    """Recompute the moving statistics of an in-memory Keras model's BN layers from data, in place.

    The same computation as `bninspect recalibrate` (cumulative mean and variance of each layer's
    input over all of `data`, BN layers on batch statistics, everything else in inference mode),
    written into the model's `moving_mean` / `moving_variance` variables; save the model yourself
    afterwards. `layers` is a glob on the layer path or name; the others keep their statistics.
    data and the other options: as for `bninspect.inspect`. For model files use the command line,
    which writes a new file of the same format.

    Returns the recalibrated layers (.path, .before_mean, .before_variance, .after_mean,
    .after_variance as float64 arrays).
    """
    from bninspect import api

    return api.recalibrate(model, data, layers=layers, batch_size=batch_size, limit=limit, rescale=rescale,
                           progress=progress)
