"""The ``code-interpreter`` template: ``base`` plus the code-interpreter service and its kernels.

One layer on top of base's two, keyed by base's envd layer (which already hashes this project's
source) and the recipe below, so it is rebuilt only when either changes and otherwise comes
from the store or the layer cache. Like base's envd layer it is installed offline from a
wheelhouse the host downloads (sandboxes cannot reach PyPI): the ``interpreter`` extra
(jupyter_client, ipykernel) into base's venv at /opt/emberbox/venv, the data stack the SDKs'
examples use, and ``bash_kernel`` registered as the ``bash`` kernelspec. Node.js is Debian's
``nodejs`` package: the host's apt resolves it against the rootfs's own package status and
sources (private lists and cache, nothing of the host's apt state touched) and downloads only
the missing ``.deb`` files, which ``dpkg -i`` installs in the chroot; our JavaScript kernel
(``emberbox.interpreter.js_kernel``) is registered as ``javascript`` and, with Debian's
``node-typescript`` compiler, as ``typescript``. Test suites and two
optional dependencies (debugpy, jedi) are removed, and matplotlib's font cache is built for
``user``, so a first plot does not pay for it.

Every sandbox runs the service on port 49999 (its start command), checking callers' tokens with
the sandbox's own envd, and with the default Python kernel already started; the ready command
waits until it answers. The SDKs ask for ``code-interpreter-v1``, which the control plane
resolves to this template (``server/lifecycle/templates.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..vocabulary import ENVD_PORT
from . import _run, base, cache
from .code_interpreter_recipe import (
    DEBIAN_PACKAGES,
    DEBS,
    PACKAGES,
    SETUP,
    USER_SETUP,
    VENV,
    layer_key,
)
from .store import Template, TemplateConfig, TemplateStore

NAME = "code-interpreter"
ALIASES = ("code-interpreter-v1",)  # what e2b-code-interpreter and @e2b/code-interpreter ask for
INTERPRETER_PORT = 49999  # emberbox.interpreter.INTERPRETER_PORT (templates cannot import it)
# Its sandboxes' default size, E2B's for its code-interpreter template (2 vCPUs, 2 GiB): a
# Python, a JavaScript, a TypeScript and an R kernel at once do not fit in 512 MiB (the R
# kernel's start was killed for memory). Memory is reserved, not touched: gVisor takes pages
# as the kernels use them.
CPU_COUNT = 2
MEMORY_MB = 2048
START_CMD = (
    f"{VENV}/bin/python -m emberbox.interpreter --port {INTERPRETER_PORT} "
    f"--envd-url http://127.0.0.1:{ENVD_PORT} --prestart python"
)
READY_CMD = f"curl -sf -o /dev/null --max-time 2 http://127.0.0.1:{INTERPRETER_PORT}/health"


def config() -> TemplateConfig:
    return TemplateConfig(start_cmd=START_CMD, ready_cmd=READY_CMD)


async def build_layer(
    store: TemplateStore, lowers: tuple[str, ...], key: str, project: Path
) -> None:
    scratch = store.scratch("code-interpreter-")
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    wheels = merged / "tmp" / "emberbox-wheels"
    mounted: list[Path] = []
    lowerdir = ":".join(str(store.layer_path(k)) for k in reversed(lowers))
    chroot = ("chroot", str(merged))
    try:
        await _run.run(
            "mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={lowerdir},upperdir={upper},workdir={work}", str(merged),
        )  # fmt: skip
        mounted.append(merged)
        await _run.run("mount", "-t", "proc", "proc", str(merged / "proc"))
        mounted.append(merged / "proc")
        await _run.run(
            sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels),
            f"{project}[interpreter]", *PACKAGES,
            step="pip wheel (interpreter, kernels and the data stack)",
        )  # fmt: skip
        await _run.run(
            *chroot, f"{VENV}/bin/pip", "install", "--quiet", "--no-cache-dir", "--no-index",
            "--find-links", "/tmp/emberbox-wheels", "emberbox[interpreter]", *PACKAGES,
            step="pip install the interpreter in the rootfs",
        )  # fmt: skip
        await _run.run("rm", "-rf", str(wheels))
        await download_debs(merged, store.scratch("apt-"))
        await _run.run(*chroot, "/bin/sh", "-c", SETUP, step="code-interpreter setup")
        await _run.run(
            *chroot, "/usr/sbin/runuser", "-u", "user", "--", "/usr/bin/env", "HOME=/home/user",
            f"{VENV}/bin/python", "-c", USER_SETUP, step="matplotlib font cache for user",
        )  # fmt: skip
        for m in reversed(mounted):
            await _run.run("umount", str(m))
        mounted.clear()
        store.publish_layer(key, upper)
    finally:
        for m in reversed(mounted):
            await _run.run("umount", "-l", str(m))
        await _run.run("rm", "-rf", "--one-file-system", str(scratch))


async def download_debs(root: Path, state: Path) -> None:
    """Download :data:`DEBIAN_PACKAGES` and the dependencies ``root`` lacks into its DEBS.

    The host's apt, told to read the rootfs's sources, keys and dpkg status but keep its lists
    and cache in ``state``: the rootfs has no apt lists (base drops them) and may have no DNS.
    """
    archives = root / DEBS.lstrip("/")
    (archives / "partial").mkdir(parents=True)
    (state / "lists" / "partial").mkdir(parents=True)
    etc = root / "etc" / "apt"
    options = [
        f"-oDir::Etc::SourceList={etc / 'sources.list'}",
        f"-oDir::Etc::SourceParts={etc / 'sources.list.d'}",
        f"-oDir::Etc::TrustedParts={etc / 'trusted.gpg.d'}",
        f"-oDir::Etc::Preferences={state / 'preferences'}",
        f"-oDir::Etc::PreferencesParts={state / 'preferences.d'}",
        f"-oDir::State={state}",
        f"-oDir::State::Lists={state / 'lists'}",
        f"-oDir::State::status={root / 'var' / 'lib' / 'dpkg' / 'status'}",
        f"-oDir::Cache={state / 'cache'}",
        f"-oDir::Cache::Archives={archives}",
        "-oAPT::Sandbox::User=root",
        "-oDebug::NoLocking=1",
    ]
    try:
        await _run.run("apt-get", *options, "update", "-qq", step="apt-get update (nodejs)")
        await _run.run(
            "apt-get", *options, "install", "-y", "-qq", "--download-only",
            "--no-install-recommends", *DEBIAN_PACKAGES, step="apt-get download nodejs",
        )  # fmt: skip
    finally:
        await _run.run("rm", "-rf", "--one-file-system", str(state))
    await _run.run("rm", "-rf", str(archives / "partial"), str(archives / "lock"))


async def build_code_interpreter(
    store: TemplateStore, cache_dir: Path | None = None, project: Path | None = None
) -> Template:
    """Build (or reuse from store or cache) ``base`` and then this template; save its manifest."""
    project = project or base.project_root()
    parent = await base.build_base(store, cache_dir, project)
    os_key, envd_key = parent.layers
    key = layer_key(envd_key)
    if not store.has_layer(key) and not (
        cache_dir and await cache.import_layer(store, key, cache_dir)
    ):
        await build_layer(store, tuple(parent.layers), key, project)
    if cache_dir is not None:
        if not (cache_dir / f"{key}.tar").exists():
            await cache.export_layer(store, key, cache_dir)
        cache.prune(cache_dir, base.built_in_layers(base.BaseKeys(os_key, envd_key)))
    template = Template(name=NAME, layers=(*parent.layers, key), config=config(), parent="base")
    store.save(template)
    return template
