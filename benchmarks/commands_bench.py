"""``commands.run("true")`` through the whole path, next to process starts inside the sandbox.

A real ``emberbox server`` on gVisor (the benchmarks' data dir, see ``_host.py``), one sandbox
from ``base``, the official ``e2b`` SDK: each sample is one ``commands.run("true")`` (SDK →
server proxy → envd → a login shell) to its result. The baseline comes from the same sandbox in
the same run: a loop inside the guest timing ``/bin/true`` (and, for reference, a fresh
``bash -c true`` and ``bash -l -c true``, what every command cost before standby shells).

Also ``pty.create`` until the SDK has its start event (a terminal's login shell started),
baseline a background command started afresh (``envs={"TZ": ...}``: no standby shell fits) in
the same sandbox: the same RPC without a terminal.

    .venv/bin/python benchmarks/commands_bench.py [--runs 300] [--quick]

Needs root and runsc. ``--quick`` takes 20 samples of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2b import Sandbox
from e2b.sandbox.commands.command_handle import PtySize

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._host import gvisor_server
from benchmarks._stats import check, summary

WARMUP = 20

# Runs inside the sandbox as the default user: process starts timed where they happen.
GUEST_LOOP = r"""
import json, subprocess, sys, time
runs = int(sys.argv[1])
out = {}
for name, argv in (("true", ["/bin/true"]), ("bash", ["/bin/bash", "-c", "true"]),
                   ("login", ["/bin/bash", "-l", "-c", "true"])):
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t)
    out[name] = samples
print(json.dumps(out))
"""


def timed_runs(
    sbx: Sandbox,
    runs: int,
    gap_s: float = 0.0,
    user: str | None = None,
    envs: dict[str, str] | None = None,
) -> list[float]:
    """Back to back (gap 0: every command's replacement shell starts while the next one runs)
    or paced like an agent that thinks between commands."""
    for _ in range(WARMUP):
        result = sbx.commands.run("true", user=user, envs=envs)
        check(result.exit_code == 0, "commands.run('true') failed")
    samples = []
    for _ in range(runs):
        time.sleep(gap_s)
        t = time.perf_counter()
        result = sbx.commands.run("true", user=user, envs=envs)
        samples.append(time.perf_counter() - t)
        check(result.exit_code == 0, f"commands.run('true') exited {result.exit_code}")
    return samples


def concurrent_runs(sbx: Sandbox, n: int) -> list[float]:
    def one(_: int) -> float:
        t = time.perf_counter()
        check(sbx.commands.run("echo $$").exit_code == 0, "concurrent command failed")
        return time.perf_counter() - t

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def process_starts(sbx: Sandbox, runs: int) -> tuple[list[float], list[float]]:
    """``pty.create`` to its start event, and a fresh background command's start; each
    killed (untimed) before the next. One untimed PTY first: envd's one-time check of its
    ``setsid`` may still run in a sandbox's first seconds."""
    check(sbx.pty.kill(sbx.pty.create(PtySize(rows=24, cols=80), timeout=0).pid), "no PTY")
    ptys, commands = [], []
    for _ in range(runs):
        t = time.perf_counter()
        pty = sbx.pty.create(PtySize(rows=24, cols=80), timeout=0)
        ptys.append(time.perf_counter() - t)
        check(sbx.pty.kill(pty.pid), "could not kill the PTY")
        t = time.perf_counter()
        command = sbx.commands.run("sleep 600", background=True, envs={"TZ": "UTC"}, timeout=0)
        commands.append(time.perf_counter() - t)
        check(command.kill(), "could not kill the background command")
        time.sleep(0.05)  # (the killed shells' exits, before the next start)
    return ptys, commands


def guest_baseline(sbx: Sandbox, runs: int) -> dict[str, list[float]]:
    sbx.files.write("/tmp/emberbox-guest-loop.py", GUEST_LOOP)
    result = sbx.commands.run(f"python3 /tmp/emberbox-guest-loop.py {runs}", timeout=600)
    check(result.exit_code == 0, f"guest loop failed: {result.stderr[-2000:]}")
    samples: dict[str, list[float]] = json.loads(result.stdout)
    return samples


def main() -> None:
    global WARMUP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="20 samples of each: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.runs, WARMUP = 20, 5
    print(f"host: {os.cpu_count()} cpus, python {sys.version.split()[0]}")
    with (
        tempfile.TemporaryDirectory(prefix="emberbox-bench-") as tmp,
        gvisor_server(Path(tmp)) as server,
    ):
        assert server.first_key
        env = server.sdk_env(server.first_key)
        sbx = Sandbox.create(
            timeout=600,
            api_key=env["E2B_API_KEY"],
            api_url=env["E2B_API_URL"],
            sandbox_url=env["E2B_SANDBOX_URL"],
        )
        try:
            user = timed_runs(sbx, args.runs)
            paced = timed_runs(sbx, args.runs, gap_s=0.1)
            root = timed_runs(sbx, args.runs, user="root")
            # TZ is read by the login: no standby shell fits, envd starts a fresh one.
            fresh = timed_runs(sbx, args.runs, envs={"TZ": "UTC"})
            burst = concurrent_runs(sbx, 20)
            ptys, backgrounds = process_starts(sbx, max(1, args.runs // 5))
            guest = guest_baseline(sbx, args.runs)
        finally:
            check(sbx.kill() is True, f"kill of {sbx.sandbox_id} failed")
    ours = summary('commands.run("true") as user (e2b SDK)', user)
    summary("  the same, 100 ms apart", paced)
    summary('commands.run("true") as root (e2b SDK)', root)
    summary('commands.run("true", envs={"TZ": ...}): a fresh shell', fresh)
    summary("20 concurrent commands.run, each", burst)
    pty = summary("pty.create → start event (e2b SDK)", ptys)
    background = summary("  baseline: a fresh background command's start", backgrounds)
    print(f"{'':44} pty / background command: median {pty['median'] / background['median']:.2f}x")
    base = summary("baseline: /bin/true started in the guest", guest["true"])
    summary("reference: bash -c true in the guest", guest["bash"])
    summary("reference: bash -l -c true in the guest", guest["login"])
    print(
        f"{'':44} commands.run / guest /bin/true: median {ours['median'] / base['median']:.2f}x,"
        f" p99 {ours['p99'] / base['p99']:.2f}x"
    )


if __name__ == "__main__":
    main()
