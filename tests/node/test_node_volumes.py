"""Volumes with a *remote* node: the server keeps names, teams and tokens, the node (in a data
dir of its own) keeps the disks and serves the content calls through its messages. The
official SDK's ``Volume`` writes and reads through the server; a gVisor sandbox on the node
mounts the volume and sees those writes, and the SDK reads the sandbox's; a file larger than
one node call travels in pieces both ways; deleting frees the node's disk."""

from __future__ import annotations

import asyncio
import hashlib
import os

import httpx
import pytest
from e2b import Sandbox, Volume
from e2b.exceptions import NotFoundException

from emberbox.host import rootfs
from emberbox.runtimes.gvisor import GVisorConfig
from emberbox.server.testing import NodeProcess, ServerProcess
from tests.runtimes.gvisor_support import inventory

pytestmark = pytest.mark.timeout(600)


def test_a_remote_node_keeps_volumes(remote: tuple[NodeProcess, ServerProcess]) -> None:
    node, server = remote
    config = GVisorConfig(data_dir=node.data_dir)
    before = asyncio.run(inventory(config))
    vol = Volume.create("remote-data")
    home = node.data_dir / "volumes" / vol.volume_id
    assert (home / "disk.img").exists(), "the disk is the node's"
    assert not (server.data_dir / "volumes").exists(), "the server keeps none"

    blob = os.urandom((1 << 20) + 12345)  # more than one node call each way
    vol.write_file("/in/blob.bin", blob, force=True)
    vol.write_file("/in/note.txt", "from the SDK")
    assert vol.read_file("/in/blob.bin", format="bytes") == blob

    sandbox = Sandbox.create(volume_mounts={"/data": "remote-data"}, timeout=120)
    try:
        got = sandbox.commands.run("cat /data/in/note.txt; sha256sum /data/in/blob.bin").stdout
        assert got.startswith("from the SDK") and hashlib.sha256(blob).hexdigest() in got
        sandbox.commands.run("echo -n from-the-sandbox > /data/out.txt")
        assert vol.read_file("/out.txt") == "from-the-sandbox"
        assert sorted(e.name for e in vol.list("/")) == ["in", "out.txt"]

        api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": server.first_key or ""})
        busy = api.delete(f"/volumes/{vol.volume_id}")
        assert busy.status_code == 409 and sandbox.sandbox_id in busy.json()["message"]
    finally:
        sandbox.kill()
    Volume.destroy(vol.volume_id)
    assert not home.exists() and not rootfs.mounted(home / "data")
    with pytest.raises(NotFoundException):
        Volume.get_info(vol.volume_id)
    assert asyncio.run(inventory(config)).leaked_since(before) == {}
