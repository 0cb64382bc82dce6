"""What ``emberbox sandbox run-code`` shows of one notebook cell, as its events arrive.

Output streams live; the cell's value is printed; images and PDFs go to files (their paths
printed) because a terminal cannot show them; the traceback of a cell that raises goes to
stderr, ANSI colours kept only for a terminal.
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

from ..sdk.code_models import ExecutionError, OutputMessage, Result

# Formats written to files: (field, extension, base64-encoded on the wire).
FILE_FORMATS = (
    ("png", "png", True),
    ("jpeg", "jpg", True),
    ("svg", "svg", False),
    ("pdf", "pdf", True),
)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _write(stream: str, text: str) -> None:
    out = sys.stdout if stream == "stdout" else sys.stderr
    out.write(text)
    out.flush()


def _free_path(directory: Path, stem: str, ext: str) -> Path:
    """Never overwrite: an earlier run's ``result-1.png`` stays, this one is ``result-1-2.png``."""
    path = directory / f"{stem}.{ext}"
    n = 2
    while path.exists():
        path = directory / f"{stem}-{n}.{ext}"
        n += 1
    return path


class Printer:
    """Turns one execution's events into terminal output and files as they arrive; files are
    named after the result's position in the cell (``result-1.png``, ``result-2.svg``)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.count = 0

    def output(self, message: OutputMessage) -> None:
        _write("stderr" if message.error else "stdout", message.line)

    def result(self, result: Result) -> None:
        self.count += 1
        saved = self.save(result)
        for path in saved:
            _write("stdout", f"{path}\n")
        if result.text is not None and (result.is_main_result or not saved):
            _write("stdout", result.text.rstrip("\n") + "\n")

    def save(self, result: Result) -> list[Path]:
        paths = []
        for name, ext, encoded in FILE_FORMATS:
            value = getattr(result, name)
            if not value:
                continue
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = _free_path(self.out_dir, f"result-{self.count}", ext)
            path.write_bytes(base64.b64decode(value) if encoded else value.encode())
            paths.append(path)
        return paths

    def error(self, error: ExecutionError) -> None:
        traceback = error.traceback if sys.stderr.isatty() else ANSI.sub("", error.traceback)
        _write("stderr", (traceback or f"{error.name}: {error.value}").rstrip("\n") + "\n")


def read_code(code: list[str]) -> str:
    """The words after ``--`` as one line of code, or standard input for ``-``."""
    if code == ["-"]:
        return sys.stdin.read()
    return " ".join(code)
