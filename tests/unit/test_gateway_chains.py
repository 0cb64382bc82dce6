"""A stopped node's egress gateway chains: removed when no sandbox jumps to them any more,
kept dropping while one does. Every test server used to leave its two behind for good (1404
chains on this host after a few hundred runs)."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from emberbox.host import network

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="nftables needs root")


def _nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True)


def _chain(name: str) -> str | None:
    out = subprocess.run(["nft", "list", "chain", "inet", "emberbox", name],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout if out.returncode == 0 else None


async def test_a_stopped_node_s_gateway_chains_go_unless_a_sandbox_uses_them() -> None:
    await network.ensure_firewall()
    instance = secrets.token_hex(2)
    tcp, dns = f"egw{instance}_tcp", f"egw{instance}_dns"
    await network.point_gateway(instance, 40001, 40002, 40003)
    assert _chain(tcp) is not None and "redirect" in (_chain(dns) or "")
    await network.unpoint_gateway(instance)
    assert _chain(tcp) is None and _chain(dns) is None

    await network.point_gateway(instance, 40001, 40002, 40003)
    user = f"ebtest{instance}_nat"  # a sandbox's NAT chain, jumping to the gateway
    script = f"add chain inet emberbox {user}\nadd rule inet emberbox {user} goto {tcp}\n"
    _nft(script)
    try:
        await network.unpoint_gateway(instance)
        assert "drop" in (_chain(tcp) or "") and "drop" in (_chain(dns) or "")
    finally:
        _nft(f"delete chain inet emberbox {user}\n")
        await network.unpoint_gateway(instance)
    assert _chain(tcp) is None and _chain(dns) is None
