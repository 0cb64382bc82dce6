"""A full disk through the official SDK, on a real envd over a small tmpfs this test mounts: the
SDK must not take it for a rate limit (RESOURCE_EXHAUSTED is its ``RateLimitException``, which
tells the caller to retry: a full disk stays full), and an upload says it with 507."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2b import NotEnoughSpaceException, Sandbox
from e2b.exceptions import RateLimitException, SandboxException

from tests.conftest import EnvdProcess, is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A tmpfs of 1 MiB and 8 inodes (its root takes one)."""
    path = Path(tempfile.mkdtemp(prefix="emberbox-full-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=8,mode=1777", "tmpfs", str(path)],
        check=True,
    )
    yield path
    subprocess.run(["umount", str(path)], check=True)
    path.rmdir()


@pytest.fixture
def sandbox(envd_factory: Callable[..., EnvdProcess], monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", envd_factory().url)
    return Sandbox.create()


def test_make_dir_on_a_full_disk_is_no_rate_limit(sandbox: Sandbox, small_disk: Path) -> None:
    made = 0
    with pytest.raises(SandboxException) as full:
        for made in range(1, 20):
            sandbox.files.make_dir(str(small_disk / f"d{made}"))
    assert not isinstance(full.value, RateLimitException)
    assert "not enough disk space" in str(full.value)
    assert 1 < made < 20 and not (small_disk / f"d{made}").exists()


def test_an_upload_past_a_full_disk_is_not_enough_space(sandbox: Sandbox, small_disk: Path) -> None:
    with pytest.raises(NotEnoughSpaceException):
        sandbox.files.write(str(small_disk / "big.bin"), b"x" * (2 * 2**20))
    assert not (small_disk / "big.bin").exists()
