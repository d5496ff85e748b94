"""The exceptions every layer raises and the commands turn into one line and exit code 2.

Bottom layer: imports only `untrusted` (its own layer), so loaders, data readers, rules, probes
and the Python API can all raise these without reaching up into the command line.

Their text is shown and stored as it is (stderr, the `error` of a report entry), so a URL enters it
redacted (`untrusted.redact`): the password or signature of a model's URL never reaches an output
through an error, whichever layer raised it. The real URL stays with the caller that fetches.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from bninspect.untrusted import redact


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, at most `limit` characters (its class name when empty):
    what a one-line error shows of the library error behind it."""
    return (" ".join(str(error).split()) or type(error).__name__)[:limit]


class ModelReadError(Exception):
    """A model file could not be read. `str()` is the one-line reason shown to the user."""

    def __init__(self, source: str, reason: str):
        source, reason = redact(str(source)), redact(str(reason))
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class UsageProblem(Exception):
    """Bad usage or bad input that is not a model file: one line, exit 2."""

    def __init__(self, message: str = "", *args: object):
        super().__init__(redact(str(message)), *args)


class MissingExtra(UsageProblem):
    """An optional dependency is not installed: one line naming what needs it and the pip command.

    The light install (`pip install bninspect`) has only what the static commands use; TensorFlow
    (`bninspect[tensorflow]`) and matplotlib (`bninspect[report]`) come with extras. Each place that
    imports one of them raises this, so every path to a missing extra says the same thing.
    """

    def __init__(self, needed_for: str, package: str, extra: str):
        self.install_command = f"pip install 'bninspect[{extra}]'"
        super().__init__(f"{needed_for} needs {package}, which is not installed: {self.install_command}")
        self.needed_for = needed_for
        self.package = package
        self.extra = extra


class SettingsError(ValueError):
    """A configuration or rule selection bninspect cannot use. `str()` is the one-line reason."""


class ModelRefused(UsageProblem):
    """The model needs code execution the user did not allow, cannot be loaded by Keras, or holds
    names TensorFlow cannot run."""


class ModelRunError(UsageProblem):
    """TensorFlow could not run the model (e.g. a channels_first convolution without oneDNN).

    `str()` is one line: the model, the layer (or op), TensorFlow's reason and what to do.
    """

    def __init__(self, source: str, where: str, reason: str, hint: str):
        super().__init__(f"{source}: {where}: {reason}" + (f"; {hint}" if hint else ""))
        self.source = redact(str(source))
        self.where = where
        self.reason = reason
        self.hint = hint
