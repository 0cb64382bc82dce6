"""What the egress gateway costs: HTTPS from a sandbox judged by name vs routed directly.

    sudo .venv/bin/python benchmarks/egress_bench.py [--requests 50] [--downloads 3]
                                                     [--mib 32] [--quick]

Two gVisor sandboxes talk to the same HTTPS server of a fake internet (``tests/fake_internet``,
a namespace of this host; nothing leaves the machine): the baseline may reach it directly
(default policy: public addresses), the other only by name (``denyOut: 0.0.0.0/0`` +
``allowOut: <name>``), so each of its connections is redirected to the node's egress gateway,
which reads the TLS server name and splices the bytes (TLS end to end). A third has a header
rule for the name (E2B's ``rules``): the gateway terminates its TLS with the node's egress CA,
sets the header on each request and re-encrypts to the server. A fourth has an egressProxy:
the gateway tunnels its connections through a SOCKS5 proxy (``pproxy``) in the fake internet.
All run the same Python client
in the sandbox, connecting to the server's address with the name as SNI:

* latency: ``--requests`` sequential ``GET /`` on new connections (TCP + TLS handshake +
  response), p50/p95/p99 in ms;
* throughput: ``--downloads`` downloads of ``--mib`` MiB each, MiB/s.

"ratio" is gateway / direct (latency: lower is better; throughput: higher). Every response is
checked (status line and length), so a refused or short connection cannot look fast.
``--quick`` does 5 requests and one 4 MiB download each.

Every connection is in the egress audit log (all three pay for it: the kernel's conntrack
events through ulogd for the baseline, the gateway's records for the others); the run checks
each sandbox's log holds its connections and prints how long reading a page of it takes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._host import boot, data_dir, ensure_base, require_root
from benchmarks._stats import check, percentile
from emberbox.egress import EgressProxy, HeaderRule
from emberbox.envd_client import EnvdClient
from emberbox.runtimes.base import NetworkPolicy, RuntimeSandbox, SandboxSpec
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from tests.fake_internet import fake_internet
from tests.socks_proxy import socks_proxy

NAME = "bench.egress.test"

CLIENT = """
import json, socket, ssl, sys, time
addr, name, kind = sys.argv[1:4]
count, size = int(sys.argv[4]), int(sys.argv[5])
ctx = ssl.create_default_context(cafile="/tmp/ca.pem")
path = "/" if kind == "latency" else f"/bytes/{size}"
out = []
for _ in range(count):
    start = time.perf_counter()
    with ctx.wrap_socket(socket.create_connection((addr, 443), 10), server_hostname=name) as s:
        request = f"GET {path} HTTP/1.1\\r\\nHost: {name}\\r\\nConnection: close\\r\\n\\r\\n"
        s.sendall(request.encode())
        got, head = 0, b""
        while data := s.recv(1 << 20):
            if len(head) < 64:
                head += data[:64]
            got += len(data)
    out.append([time.perf_counter() - start, got, head[:15].decode("latin-1")])
print(json.dumps(out))
"""


async def measure(
    sandbox: RuntimeSandbox, address: str, kind: str, count: int, size: int
) -> list[float]:
    async with EnvdClient(sandbox.envd_url) as envd:
        await envd.write_file("/tmp/client.py", CLIENT.encode())
        argv = f"python3 /tmp/client.py {address} {NAME} {kind} {count} {size}"
        done = await envd.run(argv, timeout=600)
    check(done.exit_code == 0, f"the client failed: {done.stderr.decode()[-2000:]}")
    rows = json.loads(done.stdout)
    for _seconds, got, head in rows:
        check(head == "HTTP/1.1 200 OK", f"unexpected answer {head!r}")
        check(kind == "latency" or got > size, f"short download: {got} of {size} bytes")
    return [seconds for seconds, _got, _head in rows]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--downloads", type=int, default=3)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="5 requests, one 4 MiB download")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.downloads, args.mib = 5, 1, 4
    require_root()
    directory = data_dir()
    ensure_base(directory)
    size = args.mib << 20
    with fake_internet(names={NAME: 0}) as inet, socks_proxy(inet, "bench", "b3nch") as socks:
        assert inet.workdir is not None
        proxy_host, proxy_port = socks.address.split(":")
        proxy = EgressProxy(proxy_host, int(proxy_port), socks.username, socks.password)
        config = GVisorConfig(
            data_dir=directory, egress_dns=(inet.dns,), egress_ca=str(inet.workdir / "ca.pem")
        )
        runtime = GVisorRuntime(config)
        rule = HeaderRule(NAME, (("X-Bench", "1"),))
        policies = {
            "direct (baseline)": NetworkPolicy(),
            "gateway (by name)": NetworkPolicy(allow_internet=False, allow_out=(NAME,)),
            "gateway (rewrite)": NetworkPolicy(
                allow_internet=False, allow_out=(NAME,), rewrites=(rule,)
            ),
            "gateway (SOCKS5)": NetworkPolicy(proxy=proxy),
        }
        latency: dict[str, list[float]] = {}
        throughput: dict[str, list[float]] = {}
        ids: list[str] = []
        try:
            sandboxes = {}
            for kind, policy in policies.items():
                sandbox_id = f"egb{secrets.token_hex(4)}"
                ids.append(sandbox_id)
                sandboxes[kind] = await boot(runtime, SandboxSpec(sandbox_id, "base",
                                                                  network=policy))  # fmt: skip
                trusted = inet.ca_pem.encode()
                if policy.rewrites:  # its server certificate comes from the node's egress CA
                    trusted += runtime.egress_ca()
                async with EnvdClient(sandboxes[kind].envd_url) as envd:
                    await envd.write_file("/tmp/ca.pem", trusted)
            address = inet.names[NAME]
            for sandbox in sandboxes.values():  # one warm-up each
                await measure(sandbox, address, "latency", 1, 0)
            for kind, sandbox in sandboxes.items():
                latency[kind] = await measure(sandbox, address, "latency", args.requests, 0)
                seconds = await measure(sandbox, address, "bulk", args.downloads, size)
                throughput[kind] = [args.mib / s for s in seconds]
            reads: list[float] = []
            await asyncio.sleep(1)  # the kernel's events reach the log asynchronously
            for kind, sandbox in sandboxes.items():
                start = time.perf_counter()
                records, _more = await runtime.egress_log(sandbox.sandbox_id, 0, 1000)
                reads.append(time.perf_counter() - start)
                ours = [r for r in records if r.port == 443 and r.verdict == "allowed"]
                wanted = args.requests + args.downloads + 1
                check(len(ours) >= wanted, f"{kind}: {len(ours)} of {wanted} in the egress log")
        finally:
            await asyncio.gather(*(runtime.kill(i) for i in ids))
            await runtime.close()
    base_latency = percentile(latency["direct (baseline)"], 50)
    base_rate = percentile(throughput["direct (baseline)"], 50)
    print(f"HTTPS from a sandbox, {args.requests} requests (ms) and "
          f"{args.downloads} x {args.mib} MiB (MiB/s)")  # fmt: skip
    print(f"{'':20}{'p50':>9}{'p95':>9}{'p99':>9}{'ratio':>8}{'MiB/s':>9}{'ratio':>8}")
    for kind in policies:
        p50, p95, p99 = (percentile(latency[kind], q) * 1000 for q in (50, 95, 99))
        rate = percentile(throughput[kind], 50)
        print(
            f"{kind:20}{p50:9.1f}{p95:9.1f}{p99:9.1f}{p50 / 1000 / base_latency:8.2f}"
            f"{rate:9.1f}{rate / base_rate:8.2f}"
        )
    print(f"egress log: a page read in {percentile(reads, 50) * 1000:.1f} ms (p50 of "
          f"{len(reads)}), every connection recorded")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
