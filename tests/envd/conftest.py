from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
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


@pytest.fixture
def user_dir(sandbox_user: str) -> Iterator[Path]:
    """A fresh directory in /tmp owned by the sandbox user, the one place a request made as that
    user may write (pytest's ``tmp_path`` sits under a root-only 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="emberbox-envd-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(sandbox_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
