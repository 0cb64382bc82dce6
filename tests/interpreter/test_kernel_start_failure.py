"""A kernel that does not start (a broken kernelspec here: one naming a program that does not
exist) is refused with a JSON ``{code, message}`` that says so, and leaves no runtime directory
behind, however often it is tried. In-process, over the service's ASGI app."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from emberbox.interpreter.app import create_app
from emberbox.interpreter.contexts import Contexts
from emberbox.interpreter.kernels import kernel_env


@pytest.fixture
def broken_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    spec = tmp_path / "kernels" / "broken"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(tmp_path / "no-such-program"), "-f", "{connection_file}"],
                "display_name": "broken",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    yield "broken"


def _runtime_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("emberbox-kernel-*")}


async def test_a_kernel_that_does_not_start_is_a_json_500_and_leaves_nothing(
    broken_kernel: str, tmp_path: Path
) -> None:
    contexts = Contexts(str(tmp_path), kernel_env(), kernels={"python": broken_kernel})
    app = create_app(contexts)
    before = _runtime_dirs()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        for _ in range(3):
            answer = await c.post("/contexts", json={"language": "python"})
            assert answer.status_code == 500
            body = answer.json()
            assert body["code"] == 500 and "kernel did not start" in body["message"]
    assert _runtime_dirs() == before
    assert contexts.list() == []
