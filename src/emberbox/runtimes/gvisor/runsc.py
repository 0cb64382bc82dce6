"""The runsc command line: one place that knows its flags and its quirks on our hosts.

Quirks handled here (see docs/runtimes.md):
* runsc decides "am I in the root netns?" by probing ``/proc/sys/net``, which on recent kernels
  exists in every netns, so ``--network=sandbox`` refuses to start. We run runsc in a private
  mount namespace where ``/proc/sys`` is a tmpfs carrying only ``kernel``, ``vm`` and ``fs``.
* A detached ``run`` keeps its stdio for the sandbox's life: stdio always goes to a log file.
* runsc tells the guest the cgroup's memory limit at boot and never changes it; the host limit
  is raised afterwards by the headroom the bundle asks for (see bundle.py, "Memory").
* ``runsc state`` exits non-zero both for "no such container" and for failures to read its
  state: only the first means gone (:meth:`Runsc.state`).
* A checkpoint refuses a TCP connection that is not listening or closed ("endpoint cannot be
  saved in connected state"); ``--net-disconnect-ok`` lets it save them as disconnected.
  A restore into another netns (a fork) must still not carry connections: their local
  address does not exist there, and the restored socket leaves its owner spinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ...host import cgroups
from ...host import commands as _proc
from ..base import RuntimeError_
from .bundle import HOST_LIMIT_ANNOTATION
from .config import GVisorConfig

# ``runsc state`` asks the sandbox's sentry, which does not answer while it is frozen (a warm
# pool's) or wedged: past this, the caller gets a RunscError rather than waiting.
STATE_TIMEOUT_S = 10.0
# runsc 20240729 fails a checkpoint that meets a TCP endpoint in some passing states (an
# ``encoding error``, a nil pointer in ``resetConnectionLocked``, fixed upstream since) and
# leaves the sandbox running as it was; such an endpoint moves on within moments, so the
# checkpoint is tried again after each of these pauses.
CHECKPOINT_RETRY_AFTER_S = (0.1, 0.3, 1.0)
_TRANSIENT_CHECKPOINT_ERROR = "encoding error"
# What a restore reports when the sandbox's sentry died under it (its urpc connection closed):
# seen once in CI, a fork of a sandbox that had just used TCP through its egress proxy; the
# same flow passed in every rerun.
_SENTRY_DIED = '"containerManager.Restore" failed: EOF'


def sentry_died(exc: RunscError) -> bool:
    """Whether ``exc`` is a restore whose sentry died mid-way (``_SENTRY_DIED``)."""
    return _SENTRY_DIED in str(exc)


# What runsc prints when it has no record of the container (vs. failing to read the record);
# the second when the record went away while runsc was loading it.
_NOT_FOUND = ("does not exist", "no such file or directory")
STUB_OOM_SCORE_ADJ = 1000


class RunscError(RuntimeError_):
    """runsc failed in a way that says nothing about the sandbox (e.g. unreadable state)."""


# Mounted by one ``mount -a`` in runsc's private mount namespace (a process start is 1-2 ms
# here, and runsc runs for every create, pause, resume and fork): the real /proc/sys is kept
# at a staging dir, a tmpfs covers /proc/sys, and only ``kernel``, ``vm`` and ``fs`` come back.
_SYSCTL_TABLE = """/proc/sys {stage} none bind 0 0
none /proc/sys tmpfs size=64k,mode=555 0 0
{stage}/kernel /proc/sys/kernel none bind,X-mount.mkdir 0 0
{stage}/vm /proc/sys/vm none bind,X-mount.mkdir 0 0
{stage}/fs /proc/sys/fs none bind,X-mount.mkdir 0 0
"""
# $1 = that table, $2 = the staging dir, the rest is the runsc argv.
_NETFIX = 'mount -a -T "$1" && umount -l "$2" && shift 2 && exec "$@"'


def _fstab_field(path: Path) -> str:
    """A path as fstab spells it: whitespace and backslashes octal-escaped."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in str(path))


def with_hidden_net_sysctls(staging: Path, argv: list[str]) -> list[str]:
    """``argv`` run in a private mount namespace whose /proc/sys has no ``net`` (see above)."""
    staging.mkdir(parents=True, exist_ok=True)
    table = staging.with_name(staging.name + ".fstab")
    text = _SYSCTL_TABLE.format(stage=_fstab_field(staging))
    if not table.exists() or table.read_text() != text:
        partial = table.with_name(f".{table.name}.{os.getpid()}")
        partial.write_text(text)
        os.replace(partial, table)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", _NETFIX, "sh",
            str(table), str(staging), *argv]  # fmt: skip


class Runsc:
    def __init__(self, config: GVisorConfig) -> None:
        self.config = config
        self._platform = config.platform

    async def platform(self) -> str:
        """The fastest platform this runsc offers: systrap when present, else ptrace."""
        if self._platform is None:
            out = await _proc.run(self.config.runsc, "help", "platforms", check=False)
            self._platform = "systrap" if "systrap" in out.stdout.split() else "ptrace"
        return self._platform

    async def _base(self, network: str = "sandbox", overlay: str = "none") -> list[str]:
        return [
            self.config.runsc,
            "--root", str(self.config.runsc_root),
            f"--platform={await self.platform()}",
            f"--network={network}",
            f"--overlay2={overlay}",
            "--net-disconnect-ok",
        ]  # fmt: skip

    def _wrapped(self, argv: list[str]) -> list[str]:
        return with_hidden_net_sysctls(self.config.root / "psys", argv)

    async def run_detached(
        self,
        sandbox_id: str,
        bundle: Path,
        log: Path,
        filestore: Path | None = None,
        overlay_binds: bool = True,
        stdin: Path | None = None,
    ) -> None:
        """Start the sandbox and return once runsc has created it (its init keeps running;
        its stdin is ``stdin`` when given).

        With ``filestore``, writes to the root and (with ``overlay_binds``) to every writable
        bind (/tmp) go to gVisor's own overlays, whose backing files live in that directory
        (our size-limited disk); otherwise through the gofer to the host directories. Volumes
        need ``overlay_binds=False``: an overlaid bind keeps its writes inside the sandbox.
        """
        overlay = _overlay(filestore, overlay_binds) if filestore else "none"
        argv = self._wrapped([*await self._base(overlay=overlay), "run", "--detach",
                              "--bundle", str(bundle), sandbox_id])  # fmt: skip
        code = await _proc.run_to_file(*argv, log_path=str(log), timeout=self.config.boot_timeout,
                                       stdin_path=str(stdin) if stdin else None)  # fmt: skip
        if code != 0:
            raise _proc.CommandFailed(tuple(argv), code, _tail(log))
        _apply_memory_policy(bundle)

    async def exec_to_file(
        self, sandbox_id: str, argv: list[str], stdout: Path, log: Path, timeout: float
    ) -> int:
        """Run ``argv`` inside the running sandbox as its root, beside envd (which may not
        answer), its stdout written straight to the host file ``stdout``; its exit code."""
        cmd = [*await self._base(), "exec", "--user", "0:0", "--cwd", "/", sandbox_id, *argv]
        return await _proc.run_to_file(*cmd, log_path=str(log), timeout=timeout,
                                       stdout_path=str(stdout))  # fmt: skip

    async def run_foreground(
        self, sandbox_id: str, bundle: Path, log: Path, timeout: float | None
    ) -> int:
        """Run the sandbox's process to completion and return its exit code."""
        argv = self._wrapped([*await self._base(), "run", "--bundle", str(bundle), sandbox_id])
        return await _proc.run_to_file(*argv, log_path=str(log), timeout=timeout)

    async def checkpoint(
        self, sandbox_id: str, image: Path, filestore: Path, overlay_binds: bool = True
    ) -> None:
        """Save the sandbox's memory, and the writes its overlays hold, into ``image``; the
        sandbox keeps running (a failed checkpoint must not cost the sandbox). The overlay
        flags must be those it runs with."""
        overlay = _overlay(filestore, overlay_binds)
        argv = [*await self._base(overlay=overlay), "checkpoint", "--leave-running",
                "--compression=none", "--image-path", str(image), sandbox_id]  # fmt: skip
        for retry_after in (*CHECKPOINT_RETRY_AFTER_S, None):
            out = await _proc.run(*self._wrapped(argv), check=False)
            if out.code == 0:
                return
            if retry_after is None or _TRANSIENT_CHECKPOINT_ERROR not in out.stderr:
                raise RunscError(f"checkpoint of {sandbox_id} failed: {_reason(out.stderr)}")
            for written in image.iterdir():  # what the failed attempt left
                shutil.rmtree(written) if written.is_dir() else written.unlink()
            await asyncio.sleep(retry_after)

    async def pause(self, sandbox_id: str) -> None:
        """Stop every task of the sandbox's kernel (its sentry and gofer stay, idle): what a
        checkpoint then saves is all that ran, until :meth:`resume`."""
        out = await _proc.run(*await self._base(), "pause", sandbox_id, check=False)
        if out.code != 0:
            raise RunscError(f"pause of {sandbox_id} failed: {_reason(out.stderr)}")

    async def resume(self, sandbox_id: str) -> None:
        """Let the tasks :meth:`pause` stopped run again."""
        out = await _proc.run(*await self._base(), "resume", sandbox_id, check=False)
        if out.code != 0:
            raise RunscError(f"resume of {sandbox_id} failed: {_reason(out.stderr)}")

    async def restore(
        self,
        sandbox_id: str,
        bundle: Path,
        image: Path,
        log: Path,
        filestore: Path,
        overlay_binds: bool = True,
    ) -> None:
        """Start ``sandbox_id`` from the checkpoint in ``image`` with this bundle's mounts,
        network namespace and cgroup; returns once it runs."""
        overlay = _overlay(filestore, overlay_binds)
        argv = self._wrapped([*await self._base(overlay=overlay), "restore",
                              "--detach", "--image-path", str(image), "--bundle", str(bundle),
                              sandbox_id])  # fmt: skip
        code = await _proc.run_to_file(*argv, log_path=str(log), timeout=self.config.boot_timeout)
        if code != 0:
            raise RunscError(f"restore of {sandbox_id} failed: {_reason(_tail(log))}")
        _apply_memory_policy(bundle)

    async def state(self, sandbox_id: str) -> dict[str, Any] | None:
        """runsc's record of the container, or None if runsc has none.

        Raises :class:`RunscError` when runsc fails otherwise: a caller that took that for
        "gone" would kill a live sandbox over a transient error.
        """
        try:
            out = await _proc.run(
                *await self._base(), "state", sandbox_id, check=False, timeout=STATE_TIMEOUT_S
            )
        except TimeoutError:  # its sentry does not answer (frozen, or wedged)
            raise RunscError(
                f"runsc state {sandbox_id}: no answer in {STATE_TIMEOUT_S:.0f}s"
            ) from None
        if out.code != 0:
            if any(words in out.stderr for words in _NOT_FOUND):
                return None
            raise RunscError(f"runsc state {sandbox_id} exited {out.code}: {out.stderr.strip()}")
        try:
            state: dict[str, Any] = json.loads(out.stdout)
        except ValueError as exc:
            raise RunscError(f"runsc state {sandbox_id}: unreadable output: {exc}") from None
        return state

    async def kill(self, sandbox_id: str) -> None:
        """SIGKILL the sandbox: it stops at once. ``delete`` then takes over a second more
        (runsc waits for the cgroup to empty), so callers that only need it stopped do this."""
        await _proc.run(*await self._base(), "kill", sandbox_id, "KILL", check=False)

    async def delete(self, sandbox_id: str) -> bool:
        """Kill and forget the sandbox; fine if runsc never heard of it. True when runsc said
        it deleted it."""
        out = await _proc.run(*await self._base(), "delete", "--force", sandbox_id, check=False)
        return out.code == 0

    async def list_ids(self) -> list[str]:
        """Ids of the containers runsc has state for. ``--quiet`` reads only its root
        directory: the full listing asks every sandbox's sentry and waits for a frozen one."""
        out = await _proc.run(*await self._base(), "list", "--quiet", check=False)
        if out.code != 0:
            return []
        return out.stdout.split()


def _apply_memory_policy(bundle: Path) -> None:
    """What runsc cannot express (see bundle.py, "Memory"), applied once the guest has booted
    with its own limit as MemTotal: the host cgroup's headroom, and the stubs as the host OOM
    killer's first choice.

    Only raising is possible: lowering the sentry's oom_score_adj needs CAP_SYS_RESOURCE, which
    hosts may withhold (runsc's own ``oomScoreAdj`` support then fails the start). Stubs forked
    later are cloned from the first one and inherit its score.
    """
    config = json.loads((bundle / "config.json").read_text())
    limit = config.get("annotations", {}).get(HOST_LIMIT_ANNOTATION)
    path = str(config.get("linux", {}).get("cgroupsPath", "")).strip("/")
    if not limit or not path:
        return
    try:
        cgroups.set_memory_limit(path, int(limit))
    except OSError as exc:
        raise RunscError(f"raising the memory limit of cgroup {path}: {exc}") from None
    for pid in cgroups.procs(path):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"runsc-"):
                continue  # the sentry and the gofer
            Path(f"/proc/{pid}/oom_score_adj").write_text(str(STUB_OOM_SCORE_ADJ))


def _overlay(filestore: Path, binds: bool = True) -> str:
    return f"{'all' if binds else 'root'}:dir={filestore}"


def _reason(output: str) -> str:
    """The line that says why runsc failed (it follows it with a Go stack dump)."""
    for line in reversed(output.splitlines()):
        if "failed" in line or "rejected" in line:
            return line.strip()[:500]
    return output.strip()[-500:]


def _tail(log: Path, limit: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return ""
