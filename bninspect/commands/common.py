"""What every command shares: options, output, one-line errors and exit codes.

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping, NoReturn, Optional, Union

import typer

from bninspect.errors import ModelReadError, UsageProblem
from bninspect.untrusted import printable

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_FAILURE = 2

DebugOption = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")


def show_version(value: bool) -> None:
    if value:
        from bninspect._version import __version__

        typer.echo(f"bninspect {__version__}")
        raise typer.Exit(EXIT_OK)


VersionOption = typer.Option(False, "--version", "-V", callback=show_version, is_eager=True,
                             help="Show the version and exit.")
OutputOption = typer.Option(None, "--output", "-o", help="Write the report to FILE instead of stdout.",
                            dir_okay=False)


def fail(message: str) -> NoReturn:
    """`message` as one line on stderr, exit 2. The message names files and layers, so a newline or
    a terminal escape in a name is shown as an escape: the error stays one line, and inert."""
    typer.echo(f"bninspect: error: {printable(message)}", err=True)
    raise typer.Exit(EXIT_FAILURE)


def refuse_writing_inputs(outputs: Mapping[str, Union[str, Path, None]], models: Iterable[str],
                          other_inputs: Optional[Mapping[str, Optional[Path]]] = None) -> None:
    """Exit 2 with one line when an option that writes a file (`outputs`: option -> path) names an
    input: a model or a part of one (a file of a model directory or of a TF checkpoint, a new model
    file in a searched directory; see loaders.footprint), another input (`other_inputs`: --data,
    --config, ...), or the file of another output. Called before any work, so nothing is written
    and no input is touched."""
    models = list(models)
    written = [(option, str(output)) for option, output in outputs.items() if output is not None]
    for position, (option, output) in enumerate(written):
        reasons = _overwrites(output, models, other_inputs or {}, written[:position])
        reason = next((reason for reason in reasons if reason), None)
        if reason is not None:
            fail(f"{option} {output}: {reason}; nothing was written")


def _overwrites(output: str, models: list[str], other_inputs: Mapping[str, Optional[Path]],
                earlier_outputs: list[tuple[str, str]]) -> Iterator[Optional[str]]:
    """Why writing `output` would overwrite something it must not, one candidate after another."""
    from bninspect.loaders.footprint import overwritten_file, overwritten_input, same_file
    from bninspect.loaders.remote import is_url

    for model in models:
        yield overwritten_input(output, model)
    for option, path in other_inputs.items():
        yield overwritten_file(output, path, option) if path is not None else None
    for option, path in earlier_outputs:
        if not is_url(output) and not is_url(path) and same_file(Path(output), Path(path)):
            yield f"{option} writes that file too"


@contextmanager
def one_line_errors(debug: bool) -> Iterator[None]:
    """Turn the errors bninspect expects into one line on stderr and exit code 2.

    Only our own error types are caught: anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except (ModelReadError, UsageProblem) as error:
        if debug:
            # The traceback, with URL secrets redacted as everywhere else (the text of a backend's
            # exception may hold a presigned URL).
            import traceback

            from bninspect.untrusted import redact

            sys.stderr.write(redact("".join(traceback.format_exception(error))))
            raise typer.Exit(EXIT_FAILURE) from None
        fail(str(error))


def choose_backend(backend: Optional[str]) -> None:
    """`--backend`: run Keras on it in this process (None: as Keras chooses). One line, exit 2, for
    an unknown name."""
    from bninspect.keras_runtime import select_backend

    try:
        select_backend(backend)
    except UsageProblem as error:
        fail(str(error))


def quiet_backend(command: str) -> None:
    """Import Keras on the chosen backend without the backend's start-up chatter on stderr; on
    TensorFlow with oneDNN on unless the user set TF_ENABLE_ONEDNN_OPTS (see
    `bninspect.tf_runtime.import_tensorflow`). `--debug` skips this: the probes then import the
    backend themselves, with the same defaults.

    Called before the command reads or runs anything, so an install without the backend's extra
    stops at once with one line naming `command` (e.g. "probe", "check --data"), the backend and
    the pip command, exit 2.
    """
    from bninspect.keras_runtime import import_keras

    try:
        import_keras(needed_for=f"`bninspect {command}`", quiet=True)
    except UsageProblem as error:
        fail(str(error))


def use_color(output: Optional[Path]) -> bool:
    if output is not None or "NO_COLOR" in os.environ:
        return False
    return sys.stdout.isatty()


def terminal_width() -> int | None:
    if sys.stdout.isatty():
        return None if os.environ.get("COLUMNS") is None else int(os.environ["COLUMNS"])
    return 200


def emit(text: str, output: Optional[Path]) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        fail(f"{output}: cannot write the report ({error.strerror or error})")
