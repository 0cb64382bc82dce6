"""Pure logic of the runtime layer: runtime choice, bundle contents, lease naming."""

from __future__ import annotations

import dataclasses
import ipaddress
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from emberbox.host.network import AddressPool, PoolExhausted
from emberbox.runtimes import hardware_kvm, resolve_name
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.runtimes.gvisor.bundle import BindMount, BundleSpec, oci_config
from emberbox.templates.store import Template, TemplateConfig, TemplateStore


def _host(tmp_path: Path, modules: list[str], flags: str, kvm: bool = True) -> dict[str, Path]:
    sys_module = tmp_path / "module"
    for m in modules:
        (sys_module / m).mkdir(parents=True)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu {flags} sse2\n")
    dev = tmp_path / "kvm"
    if kvm:
        dev.touch()
    return {"sys_module": sys_module, "cpuinfo": cpuinfo, "dev": dev}


def test_hardware_kvm_needs_a_real_hypervisor(tmp_path: Path):
    assert hardware_kvm(**_host(tmp_path / "a", ["kvm", "kvm_intel"], "vmx"))
    assert hardware_kvm(**_host(tmp_path / "b", ["kvm", "kvm_amd"], "svm"))
    # Our hosts: /dev/kvm served by kvm_pvm, no vmx/svm: gVisor.
    assert not hardware_kvm(**_host(tmp_path / "c", ["kvm", "kvm_pvm"], "hypervisor"))
    assert not hardware_kvm(**_host(tmp_path / "d", ["kvm", "kvm_intel"], "vmx", kvm=False))


def test_runtime_names(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("EMBERBOX_RUNTIME", raising=False)
    assert resolve_name("gvisor") == "gvisor"
    with pytest.raises(ValueError, match="unknown runtime 'qemu'"):
        resolve_name("qemu")
    assert resolve_name("GVISOR") == "gvisor" and resolve_name("process") == "process"
    assert resolve_name() in ("gvisor", "firecracker", "process")  # auto: what the host can run


def test_oci_config_carries_the_limits():
    spec = BundleSpec(
        rootfs=Path("/r"), args=["/init"], env={"A": "1"}, hostname="sb1",
        netns_path="/var/run/netns/x", cgroups_path="/emberbox/i/sb1", cpu_count=2,
        memory_mb=512, pids_limit=100, binds=[BindMount(Path("/h/hosts"), "/etc/hosts")],
    )  # fmt: skip
    config = oci_config(spec)
    resources = config["linux"]["resources"]
    assert resources["memory"]["limit"] == 512 * 2**20
    assert resources["cpu"] == {"quota": 40_000, "period": 20_000}
    capped = oci_config(dataclasses.replace(spec, cpu_limit=1.5))["linux"]["resources"]["cpu"]
    assert capped == {"quota": 30_000, "period": 20_000}

    assert {"type": "RLIMIT_NPROC", "hard": 100, "soft": 100} in config["process"]["rlimits"]
    assert "CAP_SYS_ADMIN" not in config["process"]["capabilities"]["bounding"]
    assert config["root"] == {"path": "/r", "readonly": False}
    assert config["hostname"] == "sb1"
    assert {"type": "network", "path": "/var/run/netns/x"} in config["linux"]["namespaces"]
    hosts = next(m for m in config["mounts"] if m["destination"] == "/etc/hosts")
    assert hosts["options"] == ["rbind", "ro"]
    with pytest.raises(ValueError):
        oci_config(BundleSpec(**{**spec.__dict__, "memory_mb": 8}))


def test_a_sandbox_never_gets_every_host_cpu():
    assert GVisorConfig(host_cpus=2).cpu_cap == 1.5
    assert GVisorConfig(host_cpus=8, cpu_reserve=1).cpu_cap == 7
    assert GVisorConfig(host_cpus=1).cpu_cap == 0.5


def test_address_pool_leases_are_exclusive_and_per_instance(tmp_path: Path):
    subnet = ipaddress.IPv4Network("10.50.0.0/29")  # room for two /30 links
    a, b = AddressPool(tmp_path, subnet, "aaaa"), AddressPool(tmp_path, subnet, "bbbb")
    first, second = a.claim("one"), b.claim("two")
    assert (first.host_ip, first.guest_ip) == ("10.50.0.1", "10.50.0.2")
    assert (second.host_ip, second.guest_ip) == ("10.50.0.5", "10.50.0.6")
    assert first.netns == "ebxaaaa-one" and second.host_veth == "ebhbbbb1"
    assert len(second.guest_veth) <= 15
    with pytest.raises(PoolExhausted):
        a.claim("three")
    assert [lease.sandbox_id for lease in a.leases()] == ["one"]  # b's lease is not a's
    a.release(second)  # not a's: ignored
    assert len(b.leases()) == 1
    a.release(first)
    assert a.claim("four").index == 0


_KILLED_CLAIMER = """
import ipaddress, os, signal, sys
from pathlib import Path
from emberbox.host.network import AddressPool

def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)

# Killed mid-claim: as it writes a file by descriptor, or links a lease file into place.
os.write = die
sys.addaudithook(lambda event, args: event == "os.link" and die())
AddressPool(Path(sys.argv[1]), ipaddress.IPv4Network("10.50.0.0/29"), "aaaa").claim("one")
"""


def test_a_claimer_killed_mid_claim_leaves_no_lease_naming_no_one(tmp_path: Path):
    """Every lease file names its owner, whenever its claimer dies: one naming no one would
    hold its address for good (no instance owns it, so none frees it)."""
    child = subprocess.run([sys.executable, "-c", _KILLED_CLAIMER, str(tmp_path)], check=False)
    assert child.returncode == -signal.SIGKILL
    leases = [p for p in tmp_path.iterdir() if p.name.isdigit()]
    assert all(p.read_text() for p in leases), "a lease file names no one"
    pool = AddressPool(tmp_path, ipaddress.IPv4Network("10.50.0.0/29"), "aaaa")
    assert [pool.claim("two").index, pool.claim("three").index] == [0, 1]
    pool.sweep_cut_claims()  # the dead claimer's owner file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1"]


def test_a_templates_version_is_its_content_and_none_once_it_is_gone(tmp_path: Path) -> None:
    """What tells a pooled sandbox of an older build (``Orchestrator._hand_over``)."""
    store = TemplateStore(tmp_path)
    runtime = GVisorRuntime(GVisorConfig(data_dir=tmp_path, leases_root=tmp_path), store=store)
    (tmp_path / "layers" / ("a" * 64)).mkdir(parents=True)
    first = Template("mine", ["a" * 64], TemplateConfig())
    store.save(first)
    assert runtime.template_version("mine") == first.id
    rebuilt = Template("mine", ["a" * 64], TemplateConfig(env={"BUILD": "2"}))
    store.save(rebuilt)
    assert runtime.template_version("mine") == rebuilt.id != first.id
    (tmp_path / "templates" / "mine.json").unlink()
    assert runtime.template_version("mine") is None
    assert runtime.template_version("../x") is None  # (not a name: no such template)
