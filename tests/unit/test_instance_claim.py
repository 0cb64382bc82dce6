"""host/instance_claim.py: two data dirs whose instance ids collide are never served on one
host at once, and the runtime refuses the second before it touches anything."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emberbox.host.instance_claim import InstanceClaim, InstanceTaken
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime


def _colliding(root: Path) -> tuple[Path, Path]:
    """Two data dirs under ``root`` with the same instance id (~65,536 tries at most)."""
    seen: dict[str, Path] = {}
    for n in range(1_000_000):
        path = root / f"data-{n}"
        instance = GVisorConfig(data_dir=path).instance
        if instance in seen:
            return seen[instance], path
        seen[instance] = path
    raise AssertionError("no two paths collided")


def test_a_second_data_dir_with_the_same_id_is_refused_until_the_first_lets_go(
    tmp_path: Path,
) -> None:
    first, second = _colliding(tmp_path)
    instance = GVisorConfig(data_dir=first).instance
    claims = tmp_path / "instances"
    held = InstanceClaim(claims, instance, first).acquire()
    with pytest.raises(InstanceTaken) as refused:
        InstanceClaim(claims, instance, second).acquire()
    assert str(first) in str(refused.value) and str(second) in str(refused.value)
    InstanceClaim(claims, instance, first).acquire()  # (the same data dir shares it)
    held.release()
    InstanceClaim(claims, instance, second).acquire().release()


def test_a_claim_ends_with_its_process_even_killed(tmp_path: Path) -> None:
    first, second = _colliding(tmp_path)
    instance = GVisorConfig(data_dir=first).instance
    claims = tmp_path / "instances"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from emberbox.host.instance_claim import InstanceClaim
            held = InstanceClaim(Path({str(claims)!r}), {instance!r}, Path({str(first)!r}))
            held.acquire()
            print("held", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(InstanceTaken):
            InstanceClaim(claims, instance, second).acquire()
    finally:
        holder.kill()
        holder.wait()
    InstanceClaim(claims, instance, second).acquire().release()


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
    held = InstanceClaim(config.instances_root, config.instance, first).acquire()
    try:
        env = {**os.environ, "EMBERBOX_DATA_DIR": str(second), "EMBERBOX_BACKEND": "gvisor"}
        done = subprocess.run([sys.executable, "-m", "emberbox.cli", "server"], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        held.release()
        (config.instances_root / f"{config.instance}.lock").unlink(missing_ok=True)
    assert done.returncode == 1
    assert f"the data dir {second} and the data dir {first}" in done.stderr
    assert sorted(p.name for p in second.iterdir()) == ["node.lock", "server.lock"]
