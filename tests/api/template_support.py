"""Build contexts for the template tests, made on the spot: files, a symlink, a wheel and a
Debian package, so no build step ever needs the internet."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from emberbox.server.build_testing import make_wheel


def make_apt_repo(where: Path, package: str = "ember-hello") -> Path:
    """A flat apt repository (``deb [trusted=yes] file:<dir> ./``) with one package that installs
    ``/usr/bin/<package>`` printing ``hello from <package>``."""
    root = where / "pkgroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    tool = root / "usr" / "bin" / package
    tool.write_text(f"#!/bin/sh\necho hello from {package}\n")
    tool.chmod(0o755)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.invalid>\n"
        f"Description: test package\n"
    )
    repo = where / "repo"
    repo.mkdir()
    deb = repo / f"{package}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)  # fmt: skip
    data = deb.read_bytes()
    (repo / "Packages").write_text(
        (root / "DEBIAN" / "control").read_text()
        + f"Filename: ./{deb.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
    )
    return repo


def make_context(where: Path) -> Path:
    """Files the COPY steps of the tests upload."""
    ctx = where / "context"
    (ctx / "app" / "lib").mkdir(parents=True)
    (ctx / "hello.txt").write_text("hello from the context\n")
    (ctx / "app" / "main.sh").write_text("#!/bin/sh\necho main\n")
    (ctx / "app" / "lib" / "util.txt").write_text("util\n")
    (ctx / "app" / "link").symlink_to("main.sh")
    (ctx / "notes-a.md").write_text("a\n")
    (ctx / "notes-b.md").write_text("b\n")
    (ctx / "wheels").mkdir()
    make_wheel(ctx / "wheels")
    make_apt_repo(ctx / "apt")
    return ctx
