"""The ``base`` template: Debian bookworm from mmdebstrap, user ``user``, envd in a venv.

Two layers with their own cache keys, so an envd change rebuilds only the small top layer:
1. ``os``: mmdebstrap --variant=minbase + packages + user/sudo/E2B conventions (keyed by recipe);
2. ``envd``: a venv at /opt/emberbox/venv with this project installed from a host-built
   wheelhouse (keyed by the os layer and the project's source tree).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..vocabulary import DEFAULT_UID, ENVD_PORT
from . import _run, cache, code_interpreter_recipe, hashing
from .store import Template, TemplateConfig, TemplateStore

SUITE = "bookworm"
PACKAGES = (
    "bash", "python3", "python3-pip", "python3-venv", "python-is-python3", "git", "curl",
    "ca-certificates", "procps", "sudo", "iproute2",
)  # fmt: skip
RECIPE_VERSION = 1

# Runs in the new root via mmdebstrap's customize hook (the one step that runs on the host
# side of a chroot: there is no parent template to run it in yet).
OS_SETUP = rf"""set -e
useradd --create-home --shell /bin/bash --uid {DEFAULT_UID} --user-group user
printf 'user ALL=(ALL:ALL) NOPASSWD: ALL\n' > /etc/sudoers.d/user
chmod 0440 /etc/sudoers.d/user
printf 'ENV_ID=base\nTEMPLATE_ID=base\n' > /.e2b
printf 'base\n' > /etc/hostname
printf '127.0.0.1\tlocalhost\n' > /etc/hosts
mkdir -p /opt/emberbox
rm -rf /var/cache/apt/archives/*.deb /var/lib/apt/lists/*
"""


# Runs in the rootfs after envd is installed. gVisor never honours setuid bits (it always sets
# no_new_privs), so /usr/bin/sudo becomes a client of envd's root broker
# (envd/guest/sudo_broker.py).
GUEST_SETUP = r"""set -e
cat > /opt/emberbox/init <<'EOF'
#!/bin/sh
# PID 1: envd serves the sandbox and does its other duties (envd/guest/duties.py); this shell
# only reaps orphans (its wait takes every child that exits) and passes TERM and INT on. The
# sandbox stops when envd exits, since nothing can reach it then.
/opt/emberbox/venv/bin/python -m emberbox.envd --guest --port @ENVD_PORT@ \
    --default-user "${EMBERBOX_DEFAULT_USER:-user}" \
    --default-workdir "${EMBERBOX_DEFAULT_WORKDIR:-/home/user}" </dev/null &
envd=$!
trap 'kill -TERM $envd 2>/dev/null' TERM INT
code=1
while kill -0 $envd 2>/dev/null; do wait $envd; code=$?; done
exit $code
EOF
chmod 0755 /opt/emberbox/init
dpkg-divert --quiet --local --rename --divert /usr/bin/sudo.setuid --add /usr/bin/sudo
printf '#!/bin/sh\nexec /opt/emberbox/venv/bin/python -m emberbox.envd.guest.sudo "$@"\n' \
    > /usr/bin/sudo
chmod 0755 /usr/bin/sudo
usermod -aG sudo user
# Every command is a login shell: keep the profiles free of process starts (~10-20 ms each in
# gVisor). bash knows its EUID; other shells still ask id. mesg only matters on a terminal.
sed -i 's/\[ "$(id -u)" -eq 0 \]/[ "${EUID:-$(id -u)}" -eq 0 ]/' /etc/profile
sed -i 's/^mesg n 2> \/dev\/null || true$/if [ -t 0 ]; then mesg n 2> \/dev\/null || true; fi/' \
    /root/.profile
if grep -q '"$(id -u)"' /etc/profile || ! grep -q '^if \[ -t 0 \]; then mesg' /root/.profile; then
    echo "guest setup: the profile edits no longer match Debian's files" >&2; exit 1
fi
""".replace("@ENVD_PORT@", str(ENVD_PORT))


@dataclass(frozen=True)
class BaseKeys:
    os: str
    envd: str


def built_in_layers(keys: BaseKeys) -> tuple[str, ...]:
    """Every layer the built-in templates are made of (``base`` and ``code-interpreter``):
    what a layer cache keeps, whichever of them was built."""
    return (keys.os, keys.envd, code_interpreter_recipe.layer_key(keys.envd))


def project_root() -> Path:
    """The source checkout envd is installed from (where pyproject.toml sits)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    raise FileNotFoundError("cannot find the project's pyproject.toml to build envd from")


def compute_keys(project: Path) -> BaseKeys:
    os_key = hashing.hash_json(
        {"suite": SUITE, "packages": PACKAGES, "setup": OS_SETUP, "recipe": RECIPE_VERSION}
    )
    src = hashing.hash_paths([project / "pyproject.toml", project / "src" / "emberbox"])
    envd_key = hashing.hash_json(
        {"parent": os_key, "src": src, "setup": GUEST_SETUP, "recipe": RECIPE_VERSION}
    )
    return BaseKeys(os_key, envd_key)


async def build_os_layer(store: TemplateStore, key: str) -> None:
    scratch = store.scratch("os-")
    tree = scratch / "rootfs"
    script = scratch / "setup.sh"
    script.write_text(OS_SETUP)
    try:
        await _run.run(
            "mmdebstrap", "--variant=minbase", "--mode=root", f"--include={','.join(PACKAGES)}",
            f'--customize-hook=chroot "$1" /bin/sh -s < {script}',
            SUITE, str(tree),
            step="mmdebstrap (base os layer)",
        )  # fmt: skip
        store.publish_layer(key, tree)
    finally:
        await _run.run("rm", "-rf", "--one-file-system", str(scratch))


async def build_envd_layer(store: TemplateStore, os_key: str, key: str, project: Path) -> None:
    scratch = store.scratch("envd-")
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    wheels = merged / "tmp" / "emberbox-wheels"
    mounted: list[Path] = []
    try:
        lower = store.layer_path(os_key)
        await _run.run(
            "mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged),
        )  # fmt: skip
        mounted.append(merged)
        await _run.run("mount", "-t", "proc", "proc", str(merged / "proc"))
        mounted.append(merged / "proc")
        # Wheels come from the host's network; the install inside uses only them.
        await _run.run(
            sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels),
            f"{project}[envd]", step="pip wheel (envd and its dependencies)",
        )  # fmt: skip
        await _run.run("chroot", str(merged), "/usr/bin/python3", "-m", "venv",
                       "/opt/emberbox/venv", step="python3 -m venv")  # fmt: skip
        await _run.run(
            "chroot", str(merged), "/opt/emberbox/venv/bin/pip", "install", "--quiet",
            "--no-cache-dir", "--no-index", "--find-links", "/tmp/emberbox-wheels",
            "emberbox[envd]", step="pip install envd in the rootfs",
        )  # fmt: skip
        await _run.run("rm", "-rf", str(wheels))
        (merged / "tmp" / "guest-setup.sh").write_text(GUEST_SETUP)
        await _run.run("chroot", str(merged), "/bin/sh", "/tmp/guest-setup.sh", step="guest setup")
        (merged / "tmp" / "guest-setup.sh").unlink()
        for m in reversed(mounted):
            await _run.run("umount", str(m))
        mounted.clear()
        store.publish_layer(key, upper)
    finally:
        for m in reversed(mounted):
            await _run.run("umount", "-l", str(m))
        await _run.run("rm", "-rf", "--one-file-system", str(scratch))


async def build_base(
    store: TemplateStore, cache_dir: Path | None = None, project: Path | None = None
) -> Template:
    """Build (or reuse from store or cache) the ``base`` template and save its manifest."""
    project = project or project_root()
    keys = compute_keys(project)
    if not store.has_layer(keys.os) and not (
        cache_dir and await cache.import_layer(store, keys.os, cache_dir)
    ):
        await build_os_layer(store, keys.os)
    if not store.has_layer(keys.envd) and not (
        cache_dir and await cache.import_layer(store, keys.envd, cache_dir)
    ):
        await build_envd_layer(store, keys.os, keys.envd, project)
    if cache_dir is not None:
        for key in (keys.os, keys.envd):
            if not (cache_dir / f"{key}.tar").exists():
                await cache.export_layer(store, key, cache_dir)
        cache.prune(cache_dir, built_in_layers(keys))
    template = Template(name="base", layers=(keys.os, keys.envd), config=TemplateConfig())
    store.save(template)
    return template
