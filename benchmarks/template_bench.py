"""Template builds through the API vs the same steps by hand with skopeo/umoci/tar.

    sudo .venv/bin/python benchmarks/template_bench.py [--n 3] [--quick]

The template is representative of what users build: a Python image (this host's python3.11 and
pip on a tiny root filesystem, ~70 MB, served by a local ``docker-registry``), ``pip_install``
of a local wheel and a ``copy`` of 1,000 small files. Measured with the official e2b SDK against
a real server on gVisor:

* **from scratch**: the image's layers are deleted from the store first and the template
  starts with an ENV step of a fresh value, so every step's key is new: pull + unpack +
  conventions + pip + copy + boot check;
* **from cache**: the same template again (every layer reused, nothing booted);
* **create**: ``Sandbox.create(template)`` → first command's result, next to the same for
  ``base``;
* **from scratch on a remote node**: the same build through a server whose node is a separate
  ``emberbox node`` (its own data dir for the server, so the uploaded files travel to the node
  through ``PutBuildFile``), next to the embedded node's figure.

The baseline, in the same run, does the same by hand: ``skopeo copy`` the image to an OCI
layout, ``umoci unpack`` it to a root filesystem, ``chroot … python3 -m pip install`` the wheel
and ``tar`` the 1,000 files in. The envd bundle layer (made once per base version) is kept.
``--quick`` does one of each, to prove every step still works; its numbers mean little.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("EMBERBOX_BENCH_DATA_DIR", "/var/lib/emberbox-bench-templates")

from benchmarks._host import data_dir, gvisor_server, remote_node_server
from benchmarks._stats import check, summary
from emberbox.server.build_testing import (
    build_image,
    local_registry,
    make_wheel,
    push,
    tiny_rootfs,
)
from emberbox.templates import hashing
from emberbox.templates.oci import image_template_name
from emberbox.templates.store import TemplateStore

FILES = 1000
WHEEL = "benchpkg-0.1-py3-none-any.whl"


def python_rootfs(dest: Path) -> Path:
    """A small 'python image': host bash + tools, python3.11 with its stdlib, and pip (no
    EXTERNALLY-MANAGED marker, as in the python:3.x images)."""
    tiny_rootfs(dest)
    python = Path("/usr/bin/python3.11")  # Debian's: its prefix is /usr, as in the image
    shutil.copy2(python, dest / "usr/bin/python3.11")
    (dest / "usr/bin/python3").symlink_to("python3.11")
    (dest / "usr/lib").mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "/usr/lib/python3.11", str(dest / "usr/lib/")], check=True)
    (dest / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    out = subprocess.run(["ldd", str(python)], capture_output=True, text=True).stdout
    for lib in (w for w in out.split() if w.startswith("/")):
        target = dest / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(lib).resolve(), target)
    import pip

    site = dest / "usr/lib/python3/dist-packages"
    site.mkdir(parents=True)
    shutil.copytree(Path(pip.__file__).parent, site / "pip")
    launcher = dest / "usr/bin/pip"
    launcher.write_text("#!/usr/bin/python3\nimport sys\nfrom pip._internal.cli.main import main\n"
                        "sys.exit(main())\n")  # fmt: skip
    launcher.chmod(0o755)
    return dest


def make_context(ctx: Path) -> Path:
    (ctx / "files").mkdir(parents=True)
    for i in range(FILES):
        (ctx / "files" / f"f{i:04d}.txt").write_text(f"file {i}\n")
    (ctx / "wheels").mkdir()
    make_wheel(ctx / "wheels", "benchpkg", "0.1")
    return ctx


def forget_image(store: TemplateStore, ref: str) -> None:
    """Drop the image's layers and manifest, so the next build pulls and unpacks it again."""
    raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    info = json.loads(raw)
    for digest in info["Layers"]:
        shutil.rmtree(store.layer_path(hashing.hash_json(["oci-layer", digest])),
                      ignore_errors=True)  # fmt: skip
    store.delete(image_template_name(info["Digest"]))


def by_hand(work: Path, ref: str, ctx: Path) -> float:
    """The same build with the tools directly: no sandbox, no layers, no cache."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    for argv in (
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
         f"oci:{work}/layout:img"],
        ["umoci", "unpack", "--image", f"{work}/layout:img", str(work / "bundle")],
    ):  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True)
    root = work / "bundle" / "rootfs"
    shutil.copytree(ctx / "wheels", root / "opt/wheels")
    pip = ["python3", "-m", "pip", "install", "--quiet", "--no-index", f"/opt/wheels/{WHEEL}"]
    subprocess.run(["chroot", str(root), *pip], check=True, capture_output=True)
    (root / "home/user").mkdir(parents=True, exist_ok=True)
    tar = subprocess.Popen(["tar", "-C", str(ctx), "-cf", "-", "files"], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-C", str(root / "home/user"), "-xf", "-"], stdin=tar.stdout,
                   check=True)  # fmt: skip
    check(tar.wait() == 0, "tar -c failed")
    took = time.monotonic() - started
    check((root / "home/user/files/f0999.txt").is_file(), "by hand: the files are missing")
    shutil.rmtree(work, ignore_errors=True)
    return took


def tti(template: str, command: str) -> tuple[float, str]:
    from e2b import Sandbox

    started = time.monotonic()
    with Sandbox.create(template, timeout=60) as sandbox:
        out = sandbox.commands.run(command).stdout
        return time.monotonic() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one of each: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.n = 1

    keys = ("scratch", "cached", "create", "base", "hand", "remote")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory(prefix="emberbox-template-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        ctx = make_context(tmp / "context")
        image = build_image(tmp / "image", python_rootfs(tmp / "rootfs"), {})
        with local_registry(tmp / "registry") as registry:
            ref = f"{registry}/python:3.11"
            push(image, ref)
            env = {"EMBERBOX_INSECURE_REGISTRIES": registry}
            with gvisor_server(tmp / "server", env) as server:
                assert server.first_key
                os.environ.update(server.sdk_env(server.first_key))
                from e2b import Template

                store = TemplateStore(data_dir())
                name = f"bench-{uuid.uuid4().hex[:6]}"

                def template(run_id: str) -> Any:
                    """``run_id`` (an ENV step first) changes every layer key below it."""
                    return (
                        Template(file_context_path=str(ctx))
                        .from_image(ref)
                        .set_envs({"BENCH_RUN": run_id})
                        .copy("wheels", "/opt/wheels")
                        .pip_install(f"/opt/wheels/{WHEEL}")
                        .copy("files", "/home/user/files")
                        .set_start_cmd("sleep infinity", "test -d /home/user/files")
                    )

                for _ in range(args.n):
                    forget_image(store, ref)
                    fresh = template(uuid.uuid4().hex)
                    t = time.monotonic()
                    Template.build(fresh, name)
                    rows["scratch"].append(time.monotonic() - t)
                    t = time.monotonic()
                    Template.build(fresh, name)
                    rows["cached"].append(time.monotonic() - t)
                check_cmd = "python3 -c 'import os, benchpkg; print(len(os.listdir(\"files\")))'"
                for i in range(args.n + 1):  # the first create of a template also snapshots it
                    took, out = tti(name, check_cmd)
                    check(out == f"{FILES}\n", f"the template is wrong: {out!r}")
                    base_took, _ = tti("base", "true")
                    if i:
                        rows["create"].append(took)
                        rows["base"].append(base_took)
            with remote_node_server(tmp, env) as server:
                assert server.first_key
                os.environ.update(server.sdk_env(server.first_key))
                for _ in range(args.n):
                    forget_image(store, ref)
                    t = time.monotonic()
                    Template.build(template(uuid.uuid4().hex), f"{name}-remote")
                    rows["remote"].append(time.monotonic() - t)
            for _ in range(args.n):
                rows["hand"].append(by_hand(tmp / "hand", ref, ctx))

    print(f"template: python image + pip install of a wheel + copy of {FILES} files")
    scratch = summary("build from scratch (API, e2b SDK)", rows["scratch"], "s")
    cached = summary("build from cache (API, e2b SDK)", rows["cached"], "s")
    hand = summary("baseline: skopeo + umoci + pip + tar by hand", rows["hand"], "s")
    remote = summary("build from scratch, remote node", rows["remote"], "s")
    create = summary("create from it -> first command (e2b SDK)", rows["create"], "s")
    base = summary("baseline: create from base -> first command", rows["base"], "s")
    for what, row, against in (("scratch / by hand", scratch, hand),
                               ("cached / scratch", cached, scratch),
                               ("remote node / embedded", remote, scratch),
                               ("create / create from base", create, base)):  # fmt: skip
        print(f"{'':44} {what}: median {row['median'] / against['median']:.3f}x,"
              f" p99 {row['p99'] / against['p99']:.3f}x")  # fmt: skip


if __name__ == "__main__":
    main()
