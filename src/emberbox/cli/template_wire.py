"""A Dockerfile-style spec (``templates.spec``) as the template API's build: the wire steps and
the COPY archives, each named by the hash of its contents, so unchanged files are neither
uploaded again nor rebuilt.

Docker's rules are kept: steps run as root until a ``USER`` step; copied files are root's
unless ``--chown`` names a user (its group is that user's own).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Any

from ..templates.spec import BuildSpec


def archive(context: Path, src: str) -> bytes:
    """A reproducible tar of ``src`` (a file or a tree) under ``context``: sorted, no times, no
    owners, so the same files give the same bytes."""
    buf = io.BytesIO()
    root = context / src
    paths = [root]
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            paths += [Path(dirpath) / name for name in sorted(dirs + files)]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(context)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def build_body(spec: BuildSpec) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The v2 build body and the archives to upload (by hash)."""
    steps: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    as_root = True  # until a USER step
    for step in spec.steps:
        if step.kind == "RUN":
            steps.append({"type": "RUN", "args": [step.run, "root"] if as_root else [step.run]})
        elif step.kind == "COPY":
            assert spec.context is not None
            owner = (step.chown or "root").split(":", 1)[0]
            for src in step.sources:
                dest = step.dest if len(step.sources) == 1 else step.dest.rstrip("/") + "/"
                data = archive(spec.context, src)
                digest = hashlib.sha256(f"COPY {src} {dest}\0".encode() + data).hexdigest()
                files[digest] = data
                steps.append({"type": "COPY", "args": [src, dest, owner, ""],
                              "filesHash": digest})  # fmt: skip
        elif step.kind == "ENV":
            steps.append({"type": "ENV", "args": [x for pair in step.env for x in pair]})
        else:
            if step.kind == "USER":
                as_root = False
            steps.append({"type": step.kind, "args": [step.dest]})
    body: dict[str, Any] = {"fromTemplate": spec.parent, "steps": steps}
    if spec.start_cmd:
        body["startCmd"] = spec.start_cmd
    if spec.ready_cmd:
        body["readyCmd"] = spec.ready_cmd
    return body, files
