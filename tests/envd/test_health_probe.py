"""``/health``: a GET wakes the idle standby shells (the node's first request after a
restore), a HEAD only answers (the control plane's probe right before a pause: shells woken
as the checkpoint is taken left a later command hanging after the resume)."""

from __future__ import annotations

from starlette.requests import Request

from emberbox.envd import system


def _request(method: str) -> Request:
    return Request({"type": "http", "method": method, "path": "/health", "headers": []})


async def test_a_get_wakes_the_standbys_and_a_head_does_not() -> None:
    woken: list[str] = []
    for method in ("HEAD", "GET", "HEAD"):

        def wake(method: str = method) -> None:
            woken.append(method)

        answer = await system.health(wake, _request(method))
        assert answer.status_code == 204 and answer.headers["x-envd-version"]
    assert woken == ["GET"]
