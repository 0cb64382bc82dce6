"""Templates from OCI images: ``skopeo`` pulls (any registry, with credentials), each image
layer becomes one store layer keyed by its blob digest (images sharing layers share them), and
our conventions go on top, so every SDK call works in a sandbox of any image.

The conventions (two layers):

1. **bundle** — the ``base`` template's root (Debian's python and envd's venv) at
   ``/opt/emberbox/root``, one copy shared by every image template. envd and PID 1 run from it
   with the bundle's own dynamic loader and libraries, so they need nothing from the image.
2. **conventions** — per image: ``/opt/emberbox/venv/bin/python`` (runs the bundle's python),
   ``/opt/emberbox/init``, the ``sudo`` shim, user ``user`` (uid 1000 or the first free one above)
   in group ``sudo``, ``/home/user``, ``/.e2b``; written on the host from the image's own
   ``/etc/passwd`` and ``/etc/group``.

The image's ``Env`` becomes the template's environment; its ``Cmd``/``Entrypoint``/``User``/
``WorkingDir`` do not apply (E2B's rule: the start command, user and workdir are the
template's). Commands need ``/bin/sh`` and ``bash`` in the image, as with E2B.
Layers are unpacked with GNU tar, which never follows a symlink the same archive created;
OCI whiteouts (``.wh.*``) become overlayfs whiteouts.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..vocabulary import whole_number
from . import _run, hashing
from .base import GUEST_SETUP
from .store import (
    INIT_ARGS,
    LayerFileUnsafe,
    Template,
    TemplateConfig,
    TemplateError,
    TemplateStore,
    read_layer_file,
)

BUNDLE = "/opt/emberbox/root"
RECIPE_VERSION = 2  # of the bundle and conventions layers: a change here makes them anew
Say = Callable[[str], None]


class ImageError(TemplateError):
    """The image could not be pulled or unpacked (the message says why: auth, not found...)."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def _registry_host(ref: str) -> str:
    """The registry a reference names (Docker's rule: a first part with '.' or ':', or
    ``localhost``), else Docker Hub."""
    first, slash, _ = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _skopeo_flags(ref: str, authfile: Path | None, insecure: Sequence[str]) -> list[str]:
    flags = [f"--authfile={authfile}"] if authfile is not None else []
    if _registry_host(ref) in insecure:
        flags.append("--tls-verify=false")
    return flags


def _write_authfile(where: Path, ref: str, creds: Credentials) -> Path:
    """Credentials in a 0600 file (never on a command line, where ``ps`` shows them)."""
    host = _registry_host(ref)
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    path = where / "auth.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": {host: {"auth": token}}}, f)
    return path


async def _skopeo(*args: str, what: str) -> str:
    try:
        return await _run.run("skopeo", *args, step=what, timeout=1800)
    except _run.StepFailed as exc:
        lines = [line for line in exc.output.strip().splitlines() if line.strip()]
        raise ImageError(f"{what}: {lines[-1] if lines else f'exit code {exc.code}'}") from None


def image_template_name(digest: str) -> str:
    return "img-" + digest.removeprefix("sha256:")[:56]


async def import_image(
    store: TemplateStore,
    ref: str,
    base: Template,
    *,
    creds: Credentials | None = None,
    insecure: Sequence[str] = (),
    say: Say = lambda _m: None,
) -> Template:
    """The template for image ``ref`` with our conventions on top of it (``base`` supplies the
    bundle); pulled only when its layers are not in the store yet."""
    docker_ref = f"docker://{ref}"
    scratch = store.scratch("image-")
    try:
        authfile = _write_authfile(scratch, ref, creds) if creds is not None else None
        flags = _skopeo_flags(ref, authfile, insecure)
        raw = await _skopeo("inspect", *flags, docker_ref, what=f"inspect image {ref}")
        digest = json.loads(raw)["Digest"]
        name = image_template_name(digest)
        with contextlib.suppress(TemplateError):
            cached = store.get(name)
            if all(store.has_layer(k) for k in cached.layers):
                say(f"image {ref} ({digest[:19]}): layers cached")
                return cached
        say(f"pulling image {ref} ({digest[:19]})")
        layout = scratch / "layout"
        await _skopeo("copy", "--quiet", *[f.replace("--", "--src-", 1) for f in flags],
                      docker_ref, f"oci:{layout}:image", what=f"pull image {ref}")  # fmt: skip
        manifest, config = _read_layout(layout)
        keys = []
        for layer in manifest["layers"]:
            key = hashing.hash_json(["oci-layer", layer["digest"]])
            if not store.has_layer(key):
                say(f"unpacking layer {layer['digest'][:19]} ({layer.get('size', 0)} bytes)")
                await _unpack_layer(store, key, _blob(layout, layer["digest"]), layer["mediaType"])
            keys.append(key)
    finally:
        await _run.run("rm", "-rf", "--one-file-system", str(scratch))
    bundle = await ensure_bundle(store, base, say)
    conventions = hashing.hash_json(["conventions", keys, bundle, RECIPE_VERSION, GUEST_SETUP])
    if not store.has_layer(conventions):
        say("adding Emberbox conventions (user `user`, envd, sudo)")
        _write_conventions(store, conventions, keys)
    env = dict(e.split("=", 1) for e in (config.get("config") or {}).get("Env") or [] if "=" in e)
    template = Template(
        name=name,
        layers=(*keys, bundle, conventions),
        config=TemplateConfig(init=INIT_ARGS, env=env),
        parent=None,
    )
    store.save(template)
    return template


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    path = layout / "blobs" / algo / hexd
    if not path.is_file():
        raise ImageError(f"blob {digest} missing from the pulled image")
    return path


def _read_layout(layout: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_text())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
    arch = config.get("architecture", "amd64")
    if arch not in ("amd64", "x86_64"):
        raise ImageError(f"the image is for {arch}; this node runs amd64")
    return manifest, config


async def _unpack_layer(store: TemplateStore, key: str, blob: Path, media_type: str) -> None:
    scratch = store.scratch("layer-")
    tree = scratch / "tree"
    tree.mkdir()
    compress = ["--zstd"] if "zstd" in media_type else []
    try:
        await _run.run("tar", "-x", *compress, "-p", "--numeric-owner", "--same-owner",
                       "--xattrs", "--xattrs-include=*", "-f", str(blob), "-C", str(tree),
                       step=f"unpack image layer {blob.name[:12]}")  # fmt: skip
        _whiteouts_to_overlay(tree)
        store.publish_layer(key, tree)
    finally:
        await _run.run("rm", "-rf", "--one-file-system", str(scratch))


def _whiteouts_to_overlay(tree: Path) -> None:
    """OCI marks deletions with ``.wh.<name>`` files and opaque dirs with ``.wh..wh..opq``;
    overlayfs with a 0/0 character device and the ``trusted.overlay.opaque`` xattr."""
    for dirpath, _dirs, files in os.walk(tree):
        for f in files:
            if not f.startswith(".wh."):
                continue
            marker = Path(dirpath) / f
            marker.unlink()
            if f == ".wh..wh..opq":
                os.setxattr(dirpath, "trusted.overlay.opaque", b"y")
            else:
                os.mknod(
                    Path(dirpath) / f.removeprefix(".wh."), stat.S_IFCHR | 0o600, os.makedev(0, 0)
                )


async def ensure_bundle(store: TemplateStore, base: Template, say: Say) -> str:
    """The ``base`` root at /opt/emberbox/root, one layer for every image template."""
    key = hashing.hash_json(["bundle", list(base.layers), RECIPE_VERSION])
    if store.has_layer(key):
        return key
    say("preparing the envd bundle (once per base version)")
    scratch = store.scratch("bundle-")
    merged, tree = scratch / "merged", scratch / "tree"
    merged.mkdir()
    target = tree / BUNDLE.lstrip("/")
    target.mkdir(parents=True)
    lower = ":".join(str(p) for p in reversed(store.layer_paths(base)))
    try:
        await _run.run("mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}",
                       str(merged))  # fmt: skip
        try:
            await _run.run("cp", "-a", f"{merged}/.", str(target), step="copy the base root")
        finally:
            await _run.run("umount", str(merged))
        venvs = sorted(target.glob("opt/emberbox/venv/lib/python3*/site-packages"))
        dist = sorted(target.glob("usr/lib/python3/dist-packages"))
        if not venvs or not dist:
            raise ImageError("the base template has no envd venv to bundle")
        inside = "/" + str(venvs[0].relative_to(tree))
        (dist[0] / "emberbox-venv.pth").write_text(inside + "\n")
        store.publish_layer(key, tree)
    finally:
        await _run.run("rm", "-rf", "--one-file-system", str(scratch))
    return key


def _top_file(store: TemplateStore, layers: Sequence[str], rel: str) -> str | None:
    for key in reversed(layers):
        try:
            found = read_layer_file(store.layer_path(key), rel)
        except LayerFileUnsafe as exc:
            raise ImageError(str(exc)) from exc
        if found.whiteout:
            return None
        if found.text is not None:
            return found.text
    return None


PYTHON_WRAPPER = f"""#!/bin/sh
# envd's python from the bundle, with the bundle's own loader and libraries (nothing from the
# image), so it runs in any image.
B={BUNDLE}
exec $B/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 \\
  --library-path $B/usr/lib/x86_64-linux-gnu:$B/lib/x86_64-linux-gnu \\
  $B/usr/bin/python3 "$@"
"""


def _write_conventions(store: TemplateStore, key: str, image_layers: Sequence[str]) -> None:
    scratch = store.scratch("conventions-")
    tree = scratch / "tree"
    try:
        passwd = _top_file(store, image_layers, "etc/passwd") or "root:x:0:0:root:/root:/bin/sh\n"
        group = _top_file(store, image_layers, "etc/group") or "root:x:0:\n"
        shadow = _top_file(store, image_layers, "etc/shadow")
        users = [line.split(":") for line in passwd.splitlines() if line.count(":") >= 6]
        groups = [line.split(":") for line in group.splitlines() if line.count(":") >= 3]
        uid = next((int(u[2]) for u in users if u[0] == "user"), None)
        if uid is None:
            taken = {whole_number(u[2], 10) for u in users} | {
                whole_number(g[2], 10) for g in groups
            }
            uid = next(n for n in range(1000, 60000) if n not in taken)
            passwd = passwd.rstrip("\n") + f"\nuser:x:{uid}:{uid}::/home/user:/bin/bash\n"
            group = group.rstrip("\n") + f"\nuser:x:{uid}:\n"
            if shadow is not None:
                shadow = shadow.rstrip("\n") + "\nuser:!:19000:0:99999:7:::\n"
        group = _with_sudo_member(group, "user")
        files = {
            "etc/passwd": (passwd, 0o644),
            "etc/group": (group, 0o644),
            "etc/hostname": ("sandbox\n", 0o644),
            "etc/hosts": ("127.0.0.1\tlocalhost\n", 0o644),
            ".e2b": ("ENV_ID=image\nTEMPLATE_ID=image\n", 0o644),
            "opt/emberbox/venv/bin/python": (PYTHON_WRAPPER, 0o755),
            "opt/emberbox/init": (_init_script(), 0o755),
            "usr/bin/sudo": (
                '#!/bin/sh\nexec /opt/emberbox/venv/bin/python -m emberbox.envd.guest.sudo "$@"\n',
                0o755,
            ),
        }
        if shadow is not None:
            files["etc/shadow"] = (shadow, 0o640)
        for rel, (text, mode) in files.items():
            path = tree / rel
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            path.write_text(text)
            os.chmod(path, mode)
        for d, mode, owner in (("home/user", 0o750, uid), ("tmp", 0o1777, 0), ("root", 0o700, 0),
                               ("var/log", 0o755, 0)):  # fmt: skip
            path = tree / d
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mode)
            os.chown(path, owner, owner)
        store.publish_layer(key, tree)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _with_sudo_member(group: str, user: str) -> str:
    """/etc/group with ``user`` in group ``sudo`` (made if missing): the sudo shim's check."""
    lines = group.rstrip("\n").splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "sudo" and len(fields) >= 4:
            members = [m for m in fields[3].split(",") if m]
            if user not in members:
                fields[3] = ",".join([*members, user])
            lines[i] = ":".join(fields)
            return "\n".join(lines) + "\n"
    gids = {whole_number(f[2], 10) for f in (x.split(":") for x in lines) if len(f) > 2}
    gid = next(n for n in (27, *range(900, 1000)) if n not in gids)
    return "\n".join([*lines, f"sudo:x:{gid}:{user}"]) + "\n"


def _init_script() -> str:
    """The same PID 1 launcher as the base template's (``base.GUEST_SETUP``)."""
    start = GUEST_SETUP.index("#!/bin/sh")
    end = GUEST_SETUP.index("\nEOF", start)
    return GUEST_SETUP[start:end] + "\n"
