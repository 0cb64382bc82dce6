"""What egress rules cost: create -> envd ready with and without rules, and update_network.

    sudo .venv/bin/python benchmarks/network_bench.py [--count 20] [--rules 200] [--quick]

Three kinds of sandbox are created in turn (so load drifts hit them alike) through
``GVisorRuntime.create`` plus the node's envd handshake: the default policy (public internet
only: the baseline), deny-all, and ``--rules`` entries split between allowOut and denyOut
(distinct /32s and /24s, so the kernel sets hold that many intervals). Then
``update_network`` replaces a live sandbox's rules ``--count`` times, alternating two rule
sets of that size. Every rule set is checked to be in the kernel, so a silent no-op cannot
look fast. Percentiles in ms; "ratio" is each p50 against the baseline's.

Sandboxes live in the benchmarks' own data dir (see ``_host.py``). ``--quick`` does 2 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._host import boot, data_dir, ensure_base, require_root
from benchmarks._stats import check, percentile
from emberbox.egress import rules_for
from emberbox.host import network
from emberbox.runtimes.base import NetworkPolicy, SandboxSpec
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime


def rule_set(n: int, salt: int) -> NetworkPolicy:
    """``n`` entries: half allowed /32s, half denied /24s, none adjacent (no merging)."""
    allow = tuple(f"198.{18 + i // 125}.{salt}.{2 * (i % 125)}" for i in range(n // 2))
    deny = tuple(f"203.{salt}.{2 * (i % 125)}.0/24" for i in range(n - n // 2))
    return NetworkPolicy(allow_out=allow, deny_out=deny)


def kernel_elements(runtime: GVisorRuntime, sandbox_id: str) -> int:
    """Allow + deny intervals the kernel holds for the sandbox (its sets, by veth name)."""
    lease = next(lease for lease in runtime.pool.leases() if lease.sandbox_id == sandbox_id)
    total = 0
    for suffix in ("allow", "deny"):
        out = subprocess.run(
            ["nft", "list", "set", "inet", network.NFT_TABLE, f"{lease.host_veth}_{suffix}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        body = out.split("elements = {", 1)[1].split("}", 1)[0] if "elements" in out else ""
        total += len([e for e in body.split(",") if e.strip()])
    return total


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="2 of each: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.count = 2
    require_root()
    directory = data_dir()
    ensure_base(directory)
    runtime = GVisorRuntime(GVisorConfig(data_dir=directory))
    kinds = {
        "default (baseline)": NetworkPolicy(),
        "deny-all": NetworkPolicy(allow_internet=False),
        f"{args.rules} rules": rule_set(args.rules, 1),
    }
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    ids: list[str] = []
    try:
        for _ in range(args.count):
            for kind, policy in kinds.items():
                sandbox_id = f"netb{secrets.token_hex(4)}"
                ids.append(sandbox_id)
                start = time.monotonic()
                await boot(runtime, SandboxSpec(sandbox_id, "base", network=policy))
                samples[kind].append(time.monotonic() - start)
                await runtime.kill(sandbox_id)
        sandbox_id = f"netb{secrets.token_hex(4)}"
        ids.append(sandbox_id)
        await boot(runtime, SandboxSpec(sandbox_id, "base"))
        updates: list[float] = []
        for i in range(args.count):
            policy = rule_set(args.rules, 2 + i % 2)
            start = time.monotonic()
            await runtime.update_network(sandbox_id, policy)
            updates.append(time.monotonic() - start)
            rules = rules_for(policy.allow_out, policy.deny_out)
            check(
                kernel_elements(runtime, sandbox_id) == len(rules.allow) + len(rules.deny),
                "update_network left the kernel sets without the rules",
            )
    finally:
        await asyncio.gather(*(runtime.kill(i) for i in ids))
    base = percentile(samples["default (baseline)"], 50)
    print(f"create -> envd ready, {args.count} each; update_network of {args.rules} rules (ms)")
    print(f"{'':24}{'p50':>9}{'p95':>9}{'p99':>9}{'ratio':>8}")
    for kind, s in [*samples.items(), (f"update_network ({args.rules})", updates)]:
        p50, p95, p99 = (percentile(s, q) * 1000 for q in (50, 95, 99))
        ratio = f"{p50 / 1000 / base:8.2f}" if kind in samples else f"{'':>8}"
        print(f"{kind:24}{p50:9.1f}{p95:9.1f}{p99:9.1f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
