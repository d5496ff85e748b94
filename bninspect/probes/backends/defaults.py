"""What a backend adapter does where its backend needs nothing special (TensorFlow overrides it).

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from bninspect.probes.run_errors import tracing_errors


class AdapterDefaults:
    """What an adapter does where its backend needs nothing special (TensorFlow overrides them)."""

    def plain_python(self, function: Callable) -> Callable:
        """`function` as the step should call it (TensorFlow keeps autograph away from it)."""
        return function

    def concat_parts(self, x: Any, axes: tuple[int, ...]) -> list[Any] | None:
        """The parts of a channel-axis concatenation, to summarise them instead (TensorFlow's graph only)."""
        return None

    @contextmanager
    def tracing(self) -> Iterator[None]:
        with tracing_errors():
            yield

    def refuse_names(self, source: str, model: Any) -> None:
        """Refuse a model whose names the backend cannot run (TensorFlow's graph scopes only)."""

    def hint(self, reason: str) -> str | None:
        """What to do about a runtime error of the backend (None: the generic hint)."""
        return None
