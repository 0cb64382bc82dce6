"""Egress rules enforced by the node's nftables, against real gVisor sandboxes.

Every address a sandbox sends to lives in a namespace the test made (``tests/fake_internet``):
"public" ones in 198.18.0.0/15, and stand-ins for the metadata service and a private network
routed to that namespace. Every "refused" check is paired with an "allowed" one on the same
server, so a broken setup cannot pass by accident.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from emberbox.egress import rules_for
from emberbox.runtimes.base import NetworkPolicy, RuntimeSandbox
from emberbox.runtimes.gvisor import GVisorRuntime
from tests.fake_internet import FakeInternet, fake_internet

from .conftest import SandboxFactory
from .gvisor_support import inventory, run

METADATA = "169.254.169.254"
PRIVATE = "10.213.7.10"


@pytest.fixture(scope="module")
def inet() -> Iterator[FakeInternet]:
    with fake_internet(internal=(METADATA, PRIVATE)) as net:
        yield net


async def fetch(sandbox: RuntimeSandbox, inet: FakeInternet, address: str) -> str:
    """The body the server sent back, or "refused"."""
    probe = f"curl -s -m 3 {inet.url_of(address)} || echo refused"
    return (await run(sandbox, probe)).text.strip()


async def test_internet_access_means_public_addresses_only(
    make_sandbox: SandboxFactory, inet: FakeInternet
):
    sandbox = await make_sandbox(allow_internet=True)
    assert await fetch(sandbox, inet, inet.public[0]) == inet.body_of(inet.public[0])
    assert await fetch(sandbox, inet, METADATA) == "refused"
    assert await fetch(sandbox, inet, PRIVATE) == "refused"
    # refused at once (a TCP reset), not after a timeout
    start = time.monotonic()
    assert await fetch(sandbox, inet, METADATA) == "refused"
    assert time.monotonic() - start < 2.5


async def test_allow_out_names_internal_addresses(make_sandbox: SandboxFactory, inet: FakeInternet):
    sandbox = await make_sandbox(network=NetworkPolicy(allow_out=(f"{METADATA}/32", PRIVATE)))
    assert await fetch(sandbox, inet, METADATA) == inet.body_of(METADATA)
    assert await fetch(sandbox, inet, PRIVATE) == inet.body_of(PRIVATE)


async def test_allowed_entries_win_over_denied_ones(
    make_sandbox: SandboxFactory, inet: FakeInternet
):
    one, other = inet.public
    sandbox = await make_sandbox(
        network=NetworkPolicy(allow_out=(one,), deny_out=("198.18.0.0/15",))
    )
    assert await fetch(sandbox, inet, one) == inet.body_of(one)
    assert await fetch(sandbox, inet, other) == "refused"


async def test_no_internet_with_one_allowed_address(
    make_sandbox: SandboxFactory, inet: FakeInternet
):
    one, other = inet.public
    sandbox = await make_sandbox(network=NetworkPolicy(allow_internet=False, allow_out=(one,)))
    assert await fetch(sandbox, inet, one) == inet.body_of(one)
    assert await fetch(sandbox, inet, other) == "refused"
    closed = await make_sandbox(network=NetworkPolicy(allow_internet=False))
    assert await fetch(closed, inet, one) == "refused"


async def test_other_sandboxes_stay_unreachable_whatever_allow_out_says(
    make_sandbox: SandboxFactory, inet: FakeInternet
):
    target = await make_sandbox()
    prober = await make_sandbox(network=NetworkPolicy(allow_out=("10.0.0.0/8",)))
    probe = f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' {target.envd_url}/health || echo x"
    assert (await run(prober, probe)).text.strip().endswith("x")
    assert await fetch(prober, inet, PRIVATE) == inet.body_of(PRIVATE)  # the rule itself works


async def test_update_network_replaces_rules_of_a_running_sandbox(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory, inet: FakeInternet
):
    one, other = inet.public
    sandbox = await make_sandbox(allow_internet=True)
    assert await fetch(sandbox, inet, one) == inet.body_of(one)
    start = time.monotonic()
    await runtime.update_network(
        sandbox.sandbox_id, NetworkPolicy(allow_internet=False, allow_out=(other,))
    )
    assert time.monotonic() - start < 1.0
    assert await fetch(sandbox, inet, one) == "refused"
    assert await fetch(sandbox, inet, other) == inet.body_of(other)
    await runtime.update_network(sandbox.sandbox_id, NetworkPolicy())
    assert await fetch(sandbox, inet, one) == inet.body_of(one)


async def test_update_network_resets_established_connections_to_refused_addresses(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory, inet: FakeInternet
):
    """The documented fate of old connections: every packet meets the current rules, so a
    connection to a now-refused address is reset on its next packet."""
    sandbox = await make_sandbox(allow_internet=True)
    script = (
        "python3 - <<'EOF'\n"
        "import socket, sys, time\n"
        f"s = socket.create_connection(({inet.address!r}, {inet.port}), 3)\n"
        "open('/tmp/connected', 'w').close()\n"
        "while not __import__('os').path.exists('/tmp/go'): time.sleep(0.05)\n"
        "s.settimeout(5)\n"
        "try:\n"
        "    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print('reply', len(s.recv(100)))\n"
        "except OSError as e:\n"
        "    print('error', type(e).__name__)\n"
        "EOF"
    )
    held = asyncio.create_task(run(sandbox, script, timeout=30))
    for _ in range(100):
        if (await run(sandbox, "test -e /tmp/connected && echo y || echo n")).text.strip() == "y":
            break
        await asyncio.sleep(0.1)
    await runtime.update_network(sandbox.sandbox_id, NetworkPolicy(deny_out=(inet.address,)))
    await run(sandbox, "touch /tmp/go")
    assert (await held).text.strip().startswith("error")


async def test_rules_survive_pause_and_resume(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory, inet: FakeInternet
):
    one, other = inet.public
    sandbox = await make_sandbox(network=NetworkPolicy(deny_out=(other,)))
    await runtime.pause(sandbox.sandbox_id)
    resumed = await runtime.resume(sandbox.sandbox_id)
    assert await fetch(resumed, inet, other) == "refused"
    assert await fetch(resumed, inet, one) == inet.body_of(one)


async def test_rule_objects_go_with_the_sandbox(runtime: GVisorRuntime, inet: FakeInternet):
    """Several sandboxes with rules, created and killed at once: nothing is left behind."""
    from emberbox.runtimes.base import SandboxSpec

    before = await inventory(runtime.config)
    ids = [f"tegress{i}x" for i in range(3)]
    policy = NetworkPolicy(allow_out=(inet.address,), deny_out=("198.18.0.0/15",))
    await asyncio.gather(
        *(runtime.create(SandboxSpec(sandbox_id=i, template_id="base", network=policy))
          for i in ids)
    )  # fmt: skip
    during = await inventory(runtime.config)
    assert len(during.nft) - len(before.nft) == 5 * len(ids)  # 2 chains, 2 sets, map elements
    await asyncio.gather(*(runtime.kill(i) for i in ids))
    assert (await inventory(runtime.config)).leaked_since(before) == {}


async def test_node_start_removes_rules_a_killed_node_left(runtime: GVisorRuntime):
    """A node killed between deleting a sandbox's netns and its firewall objects leaves
    chains, sets and map elements behind; the next start's clean-up removes them."""
    from emberbox.host import network

    taken = {lease.index for lease in runtime.pool.leases()}
    index = max(set(range(runtime.pool.size)) - taken)
    lease = network.Lease(index, "tstray0x", runtime.config.network, runtime.config.instance)
    before = await inventory(runtime.config)
    await network.setup(lease, rules_for(("198.18.0.1",), ("0.0.0.0/0",)))
    await network.teardown(lease, owns_index=False)  # the netns (and veth) only
    # The kernel tears a deleted netns's devices down in a work queue: the host end of the
    # pair can outlive `ip netns delete` by a moment (seen once in CI). Rules are the point here.
    for _ in range(200):
        if not await network.link_exists(lease.host_veth):
            break
        await asyncio.sleep(0.05)
    left = (await inventory(runtime.config)).leaked_since(before)
    assert left == {"nft": {f"chain:{lease.host_veth}", f"chain:{lease.host_veth}_nat",
                            f"set:{lease.host_veth}_allow", f"set:{lease.host_veth}_deny",
                            f"map:{lease.host_veth}"}}  # fmt: skip
    await runtime.cleanup_orphans([s.sandbox_id for s in await runtime.list()])
    assert (await inventory(runtime.config)).leaked_since(before) == {}
