"""host/instance_claim.py: two data dirs whose instance ids collide are never served on one
host at once, nor one while the other's sandboxes run on without a node, and the runtime
refuses the second before it touches anything."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emberbox.host.instance_claim import InstanceClaim, InstanceTaken
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime


def _colliding(root: Path) -> tuple[Path, Path]:
    """Two data dirs under ``root`` with the same instance id (~300 tries usually)."""
    seen: dict[str, Path] = {}
    for n in range(1_000_000):
        path = root / f"data-{n}"
        instance = GVisorConfig(data_dir=path).instance
        if instance in seen:
            return seen[instance], path
        seen[instance] = path
    raise AssertionError("no two paths collided")


def _has_sandboxes(data_dir: Path) -> bool:
    return (data_dir / "sandboxes").is_dir() and any((data_dir / "sandboxes").iterdir())


def _claim(claims: Path, data_dir: Path) -> InstanceClaim:
    instance = GVisorConfig(data_dir=data_dir).instance
    return InstanceClaim(claims, instance, data_dir, _has_sandboxes)


def test_another_data_dir_is_refused_while_a_runtime_of_the_owner_runs(tmp_path: Path) -> None:
    first, second = _colliding(tmp_path)
    claims = tmp_path / "instances"
    held = _claim(claims, first).acquire()
    with pytest.raises(InstanceTaken) as refused:
        _claim(claims, second).acquire()
    assert str(first) in str(refused.value) and str(second) in str(refused.value)
    shared = _claim(claims, first).acquire()  # (a template build beside the node)
    held.release()  # the first runtime goes, the one beside it still runs
    with pytest.raises(InstanceTaken):
        _claim(claims, second).acquire()
    del shared
    gc.collect()  # (an unclosed claim lets go as it is collected)
    _claim(claims, second).acquire().release()  # now no runtime of the first runs


def test_the_owner_keeps_its_id_while_its_sandboxes_run_without_a_node(tmp_path: Path) -> None:
    first, second = _colliding(tmp_path)
    claims = tmp_path / "instances"
    (first / "sandboxes" / "abc").mkdir(parents=True)  # (what a stopped node left running)
    _claim(claims, first).acquire().release()
    with pytest.raises(InstanceTaken):
        _claim(claims, second).acquire()
    (first / "sandboxes" / "abc").rmdir()  # its last sandbox is gone
    _claim(claims, second).acquire().release()
    (second / "sandboxes" / "x").mkdir(parents=True)
    with pytest.raises(InstanceTaken):  # (the id is the second's now, while it has sandboxes)
        _claim(claims, first).acquire()


def test_a_claim_ends_with_its_process_even_killed(tmp_path: Path) -> None:
    first, second = _colliding(tmp_path)
    claims = tmp_path / "instances"
    instance = GVisorConfig(data_dir=first).instance
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from emberbox.host.instance_claim import InstanceClaim
            held = InstanceClaim(Path({str(claims)!r}), {instance!r}, Path({str(first)!r}),
                                 lambda _: False)
            held.acquire()
            print("held", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(InstanceTaken):
            _claim(claims, second).acquire()
    finally:
        holder.kill()
        holder.wait()
    _claim(claims, second).acquire().release()


async def test_the_runtime_of_a_colliding_data_dir_is_refused(tmp_path: Path) -> None:
    first, second = _colliding(tmp_path)
    claims = tmp_path / "instances"

    def config(data_dir: Path) -> GVisorConfig:
        return GVisorConfig(data_dir=data_dir, leases_root=tmp_path / "leases",
                            instances_root=claims)  # fmt: skip

    runtime = GVisorRuntime(config(first))
    try:
        with pytest.raises(InstanceTaken):
            GVisorRuntime(config(second))
        GVisorRuntime(config(first)).claim.release()  # (a template build beside the node)
    finally:
        await runtime.close()
    GVisorRuntime(config(second)).claim.release()


@pytest.mark.skipif(os.geteuid() != 0, reason="claims in /run/emberbox, as a server does")
def test_a_server_on_a_colliding_data_dir_refuses_to_start_naming_both(tmp_path: Path) -> None:
    first, second = _colliding(tmp_path)
    config = GVisorConfig(data_dir=first)
    held = InstanceClaim(config.instances_root, config.instance, first, _has_sandboxes).acquire()
    try:
        env = {**os.environ, "EMBERBOX_DATA_DIR": str(second), "EMBERBOX_BACKEND": "gvisor"}
        done = subprocess.run([sys.executable, "-m", "emberbox.cli", "server"], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        held.release()
    assert done.returncode == 1
    assert f"the data dir {second} and the data dir {first}" in done.stderr
    assert sorted(p.name for p in second.iterdir()) == ["node.lock", "server.lock"]
