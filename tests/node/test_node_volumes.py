"""Volumes with a *remote* node: the server keeps names, teams and tokens, the node (in a data
dir of its own) keeps the disks and serves the content calls through its messages. The
official SDK's ``Volume`` writes and reads through the server; a gVisor sandbox on the node
mounts the volume and sees those writes, and the SDK reads the sandbox's; a file larger than
one node call travels in pieces both ways; deleting frees the node's disk."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox, Volume
from e2b.exceptions import NotFoundException

from emberbox.host import rootfs
from emberbox.node.client import PIECE_BYTES
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


def test_a_node_killed_mid_upload_leaves_nothing_in_the_volume(
    remote: tuple[NodeProcess, ServerProcess],
) -> None:
    """The bytes of an upload the node did not finish never had a name in the user's volume,
    so its crash leaves no hidden temporary there for the user to find or pay for."""
    node, server = remote
    vol = Volume.create("crash-data")
    vol.write_file("/keep.txt", "kept")
    data = node.data_dir / "volumes" / vol.volume_id / "data"
    go_on = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"x" * (PIECE_BYTES + 1)  # a piece the server sends the node at once
        go_on.wait(60)
        yield b"y"

    def upload() -> None:
        api = httpx.Client(base_url=server.api_url, timeout=60,
                           headers={"Authorization": f"Bearer {vol.token}"})  # fmt: skip
        with api, contextlib.suppress(httpx.HTTPError):
            api.put(f"/volumecontent/{vol.volume_id}/file", params={"path": "/big.bin"},
                    content=body())  # fmt: skip

    uploading = threading.Thread(target=upload, daemon=True)
    uploading.start()
    try:
        assert node.proc is not None
        deadline = time.monotonic() + 30
        while not _open_below(node.proc.pid, data):  # the node's writer has the upload's file
            assert time.monotonic() < deadline, "the upload never reached the node"
            time.sleep(0.05)
        node.sigkill()
    finally:
        go_on.set()
        uploading.join(60)
    node.start()
    assert sorted(os.listdir(data)) == ["keep.txt"]
    vol.write_file("/big.bin", b"whole")  # and the volume takes the upload again
    assert vol.read_file("/big.bin") == "whole"
    assert sorted(os.listdir(data)) == ["big.bin", "keep.txt"]
    Volume.destroy(vol.volume_id)


def _open_below(pid: int, directory: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(f"{directory}/"):
                return True
    return False
