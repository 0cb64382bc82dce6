"""What ``run_code`` returns and runs in: :class:`Execution`, :class:`Result`, :class:`Context`.

Names and fields are those of the ``e2b_code_interpreter`` models, so code written against
E2B's SDK reads the same; the wire shapes are in docs/code-interpreter.md. ``chart`` stays the
plain dict the service sent (type, title, axes, elements), so a new chart shape never fails to
parse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

RunCodeLanguage = Literal["python", "javascript", "typescript", "r", "java", "bash"] | str

# Result fields that carry a format, in the order ``Result.formats()`` lists them.
RESULT_FORMATS = (
    *("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json", "javascript"),
    *("data", "chart"),
)


@dataclass(frozen=True)
class OutputMessage:
    """One chunk a cell printed; ``timestamp`` is the kernel's ISO 8601 time for it."""

    line: str
    timestamp: str
    error: bool = False

    def __str__(self) -> str:
        return self.line


@dataclass(frozen=True)
class ExecutionError:
    """The exception a cell raised. ``traceback`` is IPython's, ANSI colours included."""

    name: str
    value: str
    traceback: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Result:
    """One displayed value: the cell's own (``is_main_result``) or a ``display()``/plot.

    Images and PDFs are base64 strings, SVG is text; MIME types without a field are in
    ``extra``.
    """

    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    svg: str | None = None
    png: str | None = None
    jpeg: str | None = None
    pdf: str | None = None
    latex: str | None = None
    json: Any = None
    javascript: str | None = None
    data: dict[str, Any] | None = None
    chart: dict[str, Any] | None = None
    is_main_result: bool = False
    extra: dict[str, Any] | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Result:
        """Known fields only: a field a newer service adds must not break an older SDK."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in event.items() if k in known})

    def formats(self) -> list[str]:
        """The formats present, then ``extra``'s MIME types."""
        present = [name for name in RESULT_FORMATS if getattr(self, name)]
        return present + list(self.extra or {})

    def __getitem__(self, item: str) -> Any:
        return getattr(self, item)

    def __str__(self) -> str:
        return self.text if self.text is not None else f"Result({', '.join(self.formats())})"

    # IPython's rich display protocol: a Result shown in a notebook renders as itself.
    def _repr_html_(self) -> str | None:
        return self.html

    def _repr_markdown_(self) -> str | None:
        return self.markdown

    def _repr_svg_(self) -> str | None:
        return self.svg

    def _repr_png_(self) -> str | None:
        return self.png

    def _repr_jpeg_(self) -> str | None:
        return self.jpeg

    def _repr_pdf_(self) -> str | None:
        return self.pdf

    def _repr_latex_(self) -> str | None:
        return self.latex

    def _repr_json_(self) -> Any:
        return self.json

    def _repr_javascript_(self) -> str | None:
        return self.javascript


@dataclass
class Logs:
    """Everything printed, chunk by chunk as the kernel flushed it."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass
class Execution:
    """One ``run_code`` call. A raised exception is ``error``, not a Python exception: the
    call itself succeeded."""

    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None

    @property
    def text(self) -> str | None:
        """The cell's own value as text (None when its last line is not an expression)."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Context:
    """A kernel of its own (variables, imports, working directory) to run cells in."""

    id: str
    language: str
    cwd: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Context:
        return cls(id=str(data["id"]), language=str(data["language"]), cwd=str(data["cwd"]))
