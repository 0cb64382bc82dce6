"""Content-addressed template storage under the data directory.

Layout (``<data_dir>`` = ``$EMBERBOX_DATA_DIR`` or ``/var/lib/emberbox``)::

    layers/<key>/          one read-only directory tree per layer (overlayfs lower dir)
    templates/<name>.json  manifest: ordered layer keys + how to start a sandbox from it
    images/<id>.ext4       flattened ext4 image for Firecracker, made on demand
    tmp/                   work in progress; renamed into place when complete

A layer key is the sha256 of the layer's *inputs* (recipe, parent key, files), so a step that
did not change maps to a layer that already exists. Layers and manifests appear by rename(2),
so a failed build never leaves a half-written template behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..host.files import write_atomic
from ..vocabulary import DEFAULT_USER, DEFAULT_WORKDIR

DEFAULT_DATA_DIR = Path("/var/lib/emberbox")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
KEY_RE = re.compile(r"^[0-9a-f]{64}$")

# How a sandbox of a template boots: PID 1 inside every sandbox (see base.GUEST_SETUP).
GUEST_PYTHON = "/opt/emberbox/venv/bin/python"
INIT_ARGS = ("/opt/emberbox/init",)


class TemplateError(Exception):
    """Base of template failures (bad spec, failed step, missing template)."""


class TemplateNotFound(TemplateError):
    pass


def data_dir() -> Path:
    return Path(os.environ.get("EMBERBOX_DATA_DIR") or DEFAULT_DATA_DIR)


class LayerFileUnsafe(TemplateError):
    """A layer holds a path the node reads as something other than a regular file."""


@dataclass(frozen=True)
class LayerFile:
    """What one layer says about a path: absent (look below), whited out, or this text."""

    whiteout: bool = False
    text: str | None = None


def read_layer_file(root: Path, rel: str) -> LayerFile:
    """Read ``rel`` (like ``etc/passwd``) from the layer tree ``root`` on the host without
    following a symlink anywhere on the way: a layer is an image's content, and a link in it
    (``etc/shadow -> /etc/shadow``, or ``etc -> /etc``) named the host's own files when read
    with ``Path.read_text``. A link or anything but a directory on the way, or anything but a
    regular file at the end, is :class:`LayerFileUnsafe`; an overlay whiteout (a 0:0 character
    device) on the way or at the end means the layer removed it."""
    parts = [p for p in rel.split("/") if p]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return LayerFile()
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return LayerFile(whiteout=True)
            last = i == len(parts) - 1
            if last and stat.S_ISREG(st.st_mode):
                flags = os.O_RDONLY | os.O_NOFOLLOW
            elif not last and stat.S_ISDIR(st.st_mode):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            else:
                raise LayerFileUnsafe(
                    f"/{'/'.join(parts[: i + 1])} in the image is not a "
                    f"{'regular file' if last else 'directory'}; it is not read"
                )
            next_fd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return LayerFile(text=f.read().decode("utf-8", errors="replace"))
    finally:
        if fd >= 0:
            os.close(fd)


@dataclass(frozen=True)
class TemplateConfig:
    """How sandboxes of the template run: PID 1, default user/cwd, env, start and ready cmds."""

    init: Sequence[str] = INIT_ARGS
    user: str = DEFAULT_USER
    workdir: str = DEFAULT_WORKDIR
    env: Mapping[str, str] = field(default_factory=dict)
    start_cmd: str | None = None
    ready_cmd: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["init"], data["env"] = list(self.init), dict(self.env)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TemplateConfig:
        return cls(
            init=tuple(data.get("init", INIT_ARGS)),
            user=data.get("user", DEFAULT_USER),
            workdir=data.get("workdir", DEFAULT_WORKDIR),
            env=dict(data.get("env", {})),
            start_cmd=data.get("start_cmd"),
            ready_cmd=data.get("ready_cmd"),
        )


@dataclass(frozen=True)
class Template:
    name: str
    layers: Sequence[str]  # bottom to top
    config: TemplateConfig
    parent: str | None = None

    @property
    def id(self) -> str:
        """Content address of the whole template: same layers + same config = same id."""
        body = json.dumps({"layers": list(self.layers), "config": self.config.to_json()},
                          sort_keys=True)  # fmt: skip
        return hashlib.sha256(body.encode()).hexdigest()


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise TemplateError(f"invalid template name {name!r}: use [a-z0-9._-], max 63 chars")
    return name


class TemplateStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or data_dir()

    @property
    def layers_dir(self) -> Path:
        return self.root / "layers"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def layer_path(self, key: str) -> Path:
        if not KEY_RE.match(key):
            raise TemplateError(f"invalid layer key {key!r}")
        return self.layers_dir / key

    def has_layer(self, key: str) -> bool:
        return self.layer_path(key).is_dir()

    def scratch(self, prefix: str) -> Path:
        """A fresh directory for work in progress; callers publish or delete it."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp_dir))

    def publish_layer(self, key: str, tree: Path) -> Path:
        """Move a finished tree into place; if a concurrent build won, keep theirs."""
        target = self.layer_path(key)
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        # Root's only: a layer holds an image's setuid binaries and device nodes as the image
        # made them, which no other account on the host may reach.
        os.chmod(self.layers_dir, 0o700)
        os.chmod(tree, os.stat(tree).st_mode)  # fail early if the tree vanished
        try:
            os.rename(tree, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tree, ignore_errors=True)
        return target

    def save(self, template: Template) -> None:
        validate_name(template.name)
        for key in template.layers:
            if not self.has_layer(key):
                raise TemplateError(f"template {template.name}: layer {key} is missing")
        self.templates_dir.mkdir(parents=True, exist_ok=True)
        body = {
            "name": template.name,
            "id": template.id,
            "parent": template.parent,
            "layers": list(template.layers),
            "config": template.config.to_json(),
        }
        write_atomic(
            self.templates_dir / f"{template.name}.json", json.dumps(body, indent=1, sort_keys=True)
        )

    def get(self, name: str) -> Template:
        path = self.templates_dir / f"{validate_name(name)}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise TemplateNotFound(f"template {name!r} does not exist in {self.root}") from None
        return Template(
            name=data["name"],
            layers=tuple(data["layers"]),
            config=TemplateConfig.from_json(data["config"]),
            parent=data.get("parent"),
        )

    def names(self) -> list[str]:
        if not self.templates_dir.exists():
            return []
        return sorted(p.stem for p in self.templates_dir.glob("*.json"))

    def layer_paths(self, template: Template) -> list[Path]:
        """Directories for overlayfs, bottom to top; every one must exist."""
        paths = [self.layer_path(k) for k in template.layers]
        missing = [p for p in paths if not p.is_dir()]
        if missing:
            raise TemplateError(f"template {template.name}: missing layers {missing}")
        return paths

    def delete(self, name: str) -> None:
        """Forget the manifest; layers stay (other templates may share them) until ``gc``."""
        (self.templates_dir / f"{validate_name(name)}.json").unlink(missing_ok=True)

    def gc(self) -> list[str]:
        """Remove layers no template references (run it while no build is in progress)."""
        used = {k for n in self.names() for k in self.get(n).layers}
        removed = []
        if self.layers_dir.exists():
            for layer in self.layers_dir.iterdir():
                if layer.name not in used:
                    shutil.rmtree(layer, ignore_errors=True)
                    removed.append(layer.name)
        return removed
