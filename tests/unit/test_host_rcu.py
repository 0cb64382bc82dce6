"""The hint that a host's RCU grace periods slow every sandbox start (scripts/host-rcu.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emberbox.host import cgroups
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.templates.store import TemplateStore


@pytest.mark.parametrize(("knob", "slow"), [("0\n", True), ("1\n", False), (None, False)])
def test_moves_wait_only_where_grace_periods_are_normal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, knob: str | None, slow: bool
) -> None:
    path = tmp_path / "rcu_expedited"
    if knob is not None:
        path.write_text(knob)
    monkeypatch.setattr(cgroups, "RCU_EXPEDITED", path)
    assert cgroups.moves_wait_for_grace_periods() is slow
    runtime = GVisorRuntime(GVisorConfig(data_dir=tmp_path), TemplateStore(tmp_path))
    hints = runtime.host_hints()
    assert bool(hints) is slow
    assert all("scripts/host-rcu.sh" in hint and str(path) in hint for hint in hints)
