"""``GET /sandboxes/{id}/logs``: ``start`` and ``limit`` as E2B defines them (a time in ms, and
at most that many entries), through the official SDK's own client for the call."""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from e2b import Sandbox

from tests.api.conftest import Running


def _ms(timestamp: str) -> int:
    return int(dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def test_start_is_a_time_in_ms_and_limit_bounds_every_entry(
    sdk_env: Running, api: httpx.Client
) -> None:
    sbx = Sandbox.create(timeout=120)
    try:
        for word in ("first", "second", "third"):
            sbx.commands.run(f"echo {word}")
        every = api.get(f"/sandboxes/{sbx.sandbox_id}/logs").json()["logEntries"]
        assert every[0]["message"].startswith("sandbox created from template")
        assert len(every) >= 4, every

        # From the last entry's millisecond on: that entry (and any of the same ms), nothing
        # older. Before, start was envd's sequence number: a time in ms gave only the
        # "created" entry, which came back whatever start was.
        last = every[-1]
        since = api.get(
            f"/sandboxes/{sbx.sandbox_id}/logs", params={"start": _ms(last["timestamp"])}
        )
        tail = since.json()["logEntries"]
        assert last in tail and all(_ms(e["timestamp"]) >= _ms(last["timestamp"]) for e in tail)
        assert every[0] not in tail
        later = _ms(last["timestamp"]) + 3_600_000
        future = api.get(f"/sandboxes/{sbx.sandbox_id}/logs", params={"start": later})
        assert future.json() == {"logs": [], "logEntries": []}

        # limit counts every entry (the "created" one was added on top of it).
        one = api.get(f"/sandboxes/{sbx.sandbox_id}/logs", params={"limit": 1}).json()
        assert one["logEntries"] == every[:1] and len(one["logs"]) == 1

        far = api.get(f"/sandboxes/{sbx.sandbox_id}/logs", params={"start": 10**20})
        assert far.status_code == 400 and "start" in far.json()["message"]
    finally:
        sbx.kill()


def test_the_newest_entries_show_past_a_page_of_envd_s_journal(
    sdk_env: Running, api: httpx.Client
) -> None:
    """envd answers its journal a page (1000 entries) at a time, oldest first: read in one
    page, everything after the first thousand could never be shown, whatever start was."""
    sbx = Sandbox.create(timeout=300)
    try:
        with ThreadPoolExecutor(8) as pool:  # two entries each: started and ended
            list(pool.map(lambda i: sbx.commands.run(f"echo {i}"), range(520)))
        before_last = int(time.time() * 1000) - 1
        sbx.commands.run("echo the-very-last")
        every = api.get(f"/sandboxes/{sbx.sandbox_id}/logs").json()["logEntries"]
        assert len(every) == 1000  # limit's default
        tail = api.get(f"/sandboxes/{sbx.sandbox_id}/logs", params={"start": before_last}).json()[
            "logEntries"
        ]
        assert any("the-very-last" in e["message"] for e in tail), tail
    finally:
        sbx.kill()


def test_v2_logs_read_from_a_cursor_either_way_by_level_and_text(
    sdk_env: Running, api: httpx.Client
) -> None:
    """``GET /v2/sandboxes/{id}/logs`` as E2B defines it (every answer is parsed by the
    official SDK's own client): backward (the default) is newest first up to ``cursor``,
    forward oldest first from it; ``level`` is a minimum; ``search`` a substring."""
    sbx = Sandbox.create(timeout=120)
    url = f"/v2/sandboxes/{sbx.sandbox_id}/logs"
    try:
        for word in ("alpha", "beta", "gamma"):
            sbx.commands.run(f"echo {word}-word")
        oldest_first = api.get(f"/sandboxes/{sbx.sandbox_id}/logs").json()["logEntries"]
        newest_first = api.get(url).json()["logs"]
        assert newest_first == oldest_first[::-1], (newest_first, oldest_first)
        assert api.get(url, params={"direction": "forward"}).json()["logs"] == oldest_first

        started = [e for e in oldest_first if "-word" in e["message"] and "started" in e["message"]]
        words = [e["message"].split()[-1] for e in started]
        assert words == ["alpha-word", "beta-word", "gamma-word"], oldest_first
        beta = _ms(started[1]["timestamp"])
        forward = api.get(url, params={"cursor": beta, "direction": "forward"}).json()["logs"]
        assert forward[0]["timestamp"] >= started[1]["timestamp"] and started[1] in forward
        assert started[0] not in forward and started[2] in forward
        backward = api.get(url, params={"cursor": beta}).json()["logs"]
        assert started[1] in backward and started[0] in backward and started[2] not in backward
        assert backward[-1]["message"].startswith("sandbox created from template")

        found = api.get(url, params={"search": "beta-word"}).json()["logs"]
        assert found and all("beta-word" in e["message"] for e in found), found
        assert api.get(url, params={"search": "Beta-word"}).json()["logs"] == []
        assert api.get(url, params={"level": "info"}).json()["logs"] == newest_first
        assert all(e["level"] == "info" for e in newest_first)
        assert api.get(url, params={"level": "error"}).json()["logs"] == []
        assert api.get(url, params={"limit": 2}).json()["logs"] == newest_first[:2]
        assert api.get(url, params={"limit": 0}).json()["logs"] == []

        for bad in ({"level": "fatal"}, {"direction": "sideways"}, {"cursor": 10**20},
                    {"cursor": -1}, {"limit": 1001}, {"search": "x" * 257},
                    {"start": 0}):  # fmt: skip
            r = api.get(url, params=bad)
            assert r.status_code == 400, (bad, r.text)
        r = api.get(f"/v2/sandboxes/{'a' * 20}/logs")
        assert r.status_code == 404 and r.json()["code"] == 404, r.text
    finally:
        sbx.kill()
