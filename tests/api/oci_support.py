"""OCI images for the template tests (``emberbox.server.build_testing``), skipped with a reason
when the tools are missing."""

from __future__ import annotations

import shutil

import pytest

from emberbox.server.build_testing import build_image, local_registry, push, tiny_rootfs

__all__ = ["build_image", "local_registry", "push", "require_oci_tools", "tiny_rootfs"]


def require_oci_tools() -> None:
    missing = [t for t in ("skopeo", "umoci", "docker-registry") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/setup installs them)")
