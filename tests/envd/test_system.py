"""/init, /envs, /metrics and ranged downloads on a dedicated envd."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import EnvdProcess
from tests.envd.wire import run, unary_call


def _stdout(frames: list[tuple[int, dict[str, Any]]]) -> str:
    return b"".join(
        base64.b64decode(m["event"]["data"].get("stdout", ""))
        for f, m in frames
        if f == 0 and "data" in m.get("event", {})
    ).decode()


def test_init_sets_defaults_and_ignores_stale_requests(
    envd_factory: Callable[..., EnvdProcess], sandbox_user: str, tmp_path
) -> None:
    envd = envd_factory()
    fresh = {
        "envVars": {"E2B_SANDBOX": "true", "MODE": "new"},
        "defaultUser": "root",
        "defaultWorkdir": str(tmp_path),
        "timestamp": "2026-01-01T00:00:10Z",
    }
    assert httpx.post(f"{envd.url}/init", json=fresh).status_code == 204
    assert _stdout(run(envd.url, "id -un; pwd; echo $MODE $E2B_SANDBOX")).split() == [
        "root",
        str(tmp_path),
        "new",
        "true",
    ]
    stale = {"envVars": {"MODE": "old"}, "timestamp": "2026-01-01T00:00:05Z"}
    assert httpx.post(f"{envd.url}/init", json=stale).status_code == 204
    assert httpx.get(f"{envd.url}/envs").json()["MODE"] == "new"

    bad_user = httpx.post(f"{envd.url}/init", json={"defaultUser": "no-such-user"})
    assert bad_user.status_code == 400
    assert httpx.post(f"{envd.url}/init", content=b"[1,2").status_code == 400
    assert httpx.post(f"{envd.url}/init", json={"envVars": {"A": 1}}).status_code == 400
    for nul in ({"A": "x\0echo injected"}, {"A\0B": "x"}):  # a standby reads NUL-split fields
        assert httpx.post(f"{envd.url}/init", json={"envVars": nul}).status_code == 400
    assert httpx.get(f"{envd.url}/envs").json()["MODE"] == "new"  # unchanged


def test_metrics_report_real_usage(envd_debug: EnvdProcess) -> None:
    metrics = httpx.get(f"{envd_debug.url}/metrics").json()
    assert metrics["cpu_count"] >= 1
    assert 0 < metrics["mem_used"] < metrics["mem_total"]
    assert metrics["mem_total_mib"] == metrics["mem_total"] // (1024 * 1024)
    assert 0 < metrics["disk_used"] <= metrics["disk_total"]
    assert 0.0 <= metrics["cpu_used_pct"] <= 100.0


def test_ranged_download(envd_debug: EnvdProcess, user_dir: Path) -> None:
    target = user_dir / "range.txt"
    target.write_bytes(b"0123456789")
    response = httpx.get(
        f"{envd_debug.url}/files", params={"path": str(target)}, headers={"Range": "bytes=2-5"}
    )
    assert response.status_code == 206
    assert response.content == b"2345"
    assert 'filename="range.txt"' in response.headers["content-disposition"]


def test_sigterm_reaches_the_process(envd_debug: EnvdProcess) -> None:
    frames: list[tuple[int, dict[str, Any]]] = []
    thread = threading.Thread(
        target=lambda: frames.extend(
            run(
                envd_debug.url,
                "trap 'echo got-term; exit 9' TERM; echo ready; sleep 30 & wait",
            )
        )
    )
    thread.start()
    pid = None
    for _ in range(100):
        listed = unary_call(envd_debug.url, "process.Process/List", {}).json()
        mine = [
            p for p in listed.get("processes", []) if "got-term" in " ".join(p["config"]["args"])
        ]
        if mine:
            pid = mine[0]["pid"]
            break
        time.sleep(0.05)
    assert pid is not None
    time.sleep(0.3)  # let the trap be installed
    response = unary_call(
        envd_debug.url,
        "process.Process/SendSignal",
        {"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"},
    )
    assert response.status_code == 200
    thread.join(10)
    assert "got-term" in _stdout(frames)
    assert frames[-2][1]["event"]["end"]["exitCode"] == 9


def test_logs_journal_records_process_lifecycle(envd_factory: Callable[..., EnvdProcess]) -> None:
    envd = envd_factory("--access-token", "tok")
    headers = {"X-Access-Token": "tok"}
    run(envd.url, "echo journal-marker; exit 3", headers)
    assert httpx.get(f"{envd.url}/logs").status_code == 401
    entries = httpx.get(f"{envd.url}/logs", headers=headers).json()["entries"]
    started = [e for e in entries if "journal-marker" in e["message"]]
    assert started and started[0]["message"].startswith("process ")
    pid = started[0]["message"].split()[1]
    assert any(e["message"] == f"process {pid} ended: exit status 3" for e in entries)
    later = httpx.get(f"{envd.url}/logs", params={"after": entries[-1]["seq"]}, headers=headers)
    assert later.json()["entries"] == []
