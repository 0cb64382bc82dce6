"""Inputs for template builds made on the spot, for tests and benchmarks, so no build needs the
internet: wheels, and OCI images (a tiny root filesystem from this host's own binaries, layered
with ``umoci``, pushed with ``skopeo`` to Debian's ``docker-registry`` on loopback, optionally
behind htpasswd)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

from ..host.ports import free_loopback_port

TOOLS = (
    "bash", "cat", "ls", "id", "env", "sleep", "mkdir", "rm", "stat", "whoami", "cp", "chown",
    "chmod", "mv", "ln", "touch", "dirname", "basename", "tar", "find", "grep", "head", "uname",
    "readlink", "mktemp",
)  # fmt: skip


def tiny_rootfs(dest: Path, tools: Sequence[str] = TOOLS) -> Path:
    """A root filesystem of this host's bash and core tools with the libraries they link."""
    libs: set[str] = set()
    for tool in tools:
        path = shutil.which(tool)
        if path is None:
            raise RuntimeError(f"{tool} is not on this host")
        target = dest / "usr" / "bin" / tool
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(path).resolve(), target)
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        libs |= {w for w in out.split() if w.startswith("/")}
    for lib in libs:
        target = dest / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(lib).resolve(), target)
    for link, to in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"),
                     ("usr/bin/sh", "bash")):  # fmt: skip
        if not (dest / link).exists():
            (dest / link).symlink_to(to)
    (dest / "etc").mkdir(exist_ok=True)
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    for d in ("tmp", "root", "opt", "proc", "dev", "sys"):
        (dest / d).mkdir(exist_ok=True)
    return dest


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr or done.stdout}")


def build_image(
    work: Path,
    rootfs: Path,
    files: Mapping[str, str],
    *,
    env: Sequence[str] = (),
    whiteouts: Sequence[str] = (),
) -> str:
    """An OCI layout with the rootfs as one layer, ``files`` as a second and the deletion of
    ``whiteouts`` as a third; returns ``oci:<layout>:latest`` for skopeo."""
    layout = work / "layout"
    _run("umoci", "init", "--layout", str(layout))
    image = f"{layout}:latest"
    _run("umoci", "new", "--image", image)
    # Debian's umoci 0.4.7 writes truncated layers with `insert`; unpack + repack is sound.
    bundle = work / "bundle"
    _run("umoci", "unpack", "--image", image, str(bundle))
    _run("cp", "-a", f"{rootfs}/.", str(bundle / "rootfs"))
    _run("umoci", "repack", "--image", image, str(bundle))
    if files:
        for rel, text in files.items():
            (bundle / "rootfs" / rel).parent.mkdir(parents=True, exist_ok=True)
            (bundle / "rootfs" / rel).write_text(text)
        _run("umoci", "repack", "--image", image, str(bundle))
    if whiteouts:
        for path in whiteouts:
            (bundle / "rootfs" / path.lstrip("/")).unlink()
        _run("umoci", "repack", "--image", image, str(bundle))
    config = ["--config.env=PATH=/usr/local/bin:/usr/bin:/bin"]
    config += [f"--config.env={e}" for e in env]
    _run("umoci", "config", "--image", image, *config)
    return f"oci:{image}"


def push(image: str, dest: str, creds: tuple[str, str] | None = None) -> None:
    auth = [f"--dest-creds={creds[0]}:{creds[1]}"] if creds else []
    _run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", *auth, image, f"docker://{dest}")


@contextlib.contextmanager
def local_registry(work: Path, login: tuple[str, str] | None = None) -> Iterator[str]:
    """``docker-registry`` on loopback; yields ``127.0.0.1:<port>``."""
    port = free_loopback_port()
    work.mkdir(parents=True, exist_ok=True)
    auth = ""
    if login:
        # The registry wants bcrypt; the system python's crypt (libxcrypt) makes it.
        bcrypt = "import crypt as c,sys; print(c.crypt(sys.argv[1], c.mksalt(c.METHOD_BLOWFISH)))"
        digest = subprocess.run(
            ["/usr/bin/python3", "-W", "ignore", "-c", bcrypt, login[1]],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        (work / "htpasswd").write_text(f"{login[0]}:{digest}\n")
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {work / 'htpasswd'}\n"
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    log = (work / "registry.log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/").status_code in (200, 401):
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError((work / "registry.log").read_text())
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def make_wheel(where: Path, name: str = "emberdemo", version: str = "0.1") -> Path:
    """A pure-Python wheel with one module ``<name>`` whose ``VALUE`` is ``"<name>-<version>"``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'VALUE = "{name}-{version}"\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = where / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel
