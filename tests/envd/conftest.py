from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from e2b import Sandbox

from tests.conftest import EnvdProcess


@pytest.fixture
def sandbox(e2b_debug_env: EnvdProcess) -> Iterator[Any]:
    """The official, unmodified ``e2b`` SDK in debug mode, talking to our envd on :49983."""
    sbx = Sandbox.create()
    yield sbx


@pytest.fixture
def workdir(sandbox: Any) -> Iterator[str]:
    """A fresh directory owned by the sandbox user, removed afterwards."""
    path = f"/tmp/emberbox-test-{uuid.uuid4().hex[:10]}"
    sandbox.files.make_dir(path)
    yield path
    sandbox.commands.run(f"rm -rf {path}", user="root")
