"""How the control plane drives envd (``/health``, ``/init``, ``/detach``, ``/envs``,
``/metrics``)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._connect.errors import ConnectError
from ..vocabulary import ENVD_TOKEN_HEADER
from .http_errors import UNAUTHORIZED_MESSAGE, HTTPProblem
from .journal import Journal
from .metrics import MetricsSampler
from .state import ENVD_VERSION, EnvdState
from .users import User

log = logging.getLogger("emberbox.envd")

# The guest clock is set when it drifts more than this from the orchestrator's (protocol §2.6).
CLOCK_AHEAD_S = 5.0
CLOCK_BEHIND_S = 0.05


async def health(wake: Callable[[], None], request: Request) -> Response:
    """204 with envd's version. ``wake``: see :func:`init`; after a resume or a rollback,
    the node's health check (a GET) is envd's first request (no ``/init`` follows those).
    A HEAD only answers: the control plane asks so right before a pause, where waking the
    shells would only be work inside the checkpoint. (A GET there once made a later command
    hang after the resume; the cause was this runsc's epoll across a checkpoint, which envd
    no longer uses: ``envd/loop.py``.)"""
    if request.method == "GET":
        wake()
    return Response(status_code=204, headers={"X-Envd-Version": ENVD_VERSION})


def _parse_timestamp(raw: object) -> datetime | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPProblem(400, f"timestamp '{raw}' is not RFC 3339") from None


def _sync_clock(target: datetime) -> None:
    drift = time.time() - target.timestamp()
    if drift > CLOCK_AHEAD_S or drift < -CLOCK_BEHIND_S:
        try:
            time.clock_settime(time.CLOCK_REALTIME, target.timestamp())
        except OSError as exc:
            log.warning("cannot set the clock (drift %.3fs): %s", drift, exc)


async def init(state: EnvdState, wake: Callable[[], None], request: Request) -> Response:
    """Configure envd. Once a token is set, only its holder may change anything.

    ``wake`` lets the standby shells run at once: an ``/init`` follows every restore, whose
    processes pay their first run's cost (``StandbyPool.wake``) while this answer travels."""
    if state.access_token and not state.token_ok(request.headers.get(ENVD_TOKEN_HEADER)):
        raise HTTPProblem(401, UNAUTHORIZED_MESSAGE)
    wake()
    body = await request.body()
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError as exc:
        raise HTTPProblem(400, f"invalid JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPProblem(400, "the body must be a JSON object")
    stamp = _parse_timestamp(data.get("timestamp"))
    if stamp is not None and state.last_init is not None and stamp < state.last_init:
        return Response(status_code=204, headers={"X-Envd-Version": ENVD_VERSION})
    env_vars = data.get("envVars")
    if env_vars is not None and (
        not isinstance(env_vars, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())
    ):
        raise HTTPProblem(400, "envVars must map strings to strings")
    if env_vars is not None and any("\0" in text for item in env_vars.items() for text in item):
        raise HTTPProblem(400, "envVars hold a NUL, which no process can carry")
    default_user = data.get("defaultUser")
    if default_user:
        try:
            User.lookup(str(default_user))
        except ConnectError as err:
            raise HTTPProblem(400, err.message) from None
    if env_vars is not None:
        state.env_vars = dict(env_vars)
    if "accessToken" in data:
        state.access_token = str(data["accessToken"] or "") or None
    if default_user:
        state.default_user = str(default_user)
    if data.get("defaultWorkdir"):
        state.default_workdir = str(data["defaultWorkdir"])
    if stamp is not None:
        state.last_init = stamp
        if state.sync_clock:
            _sync_clock(stamp)
    return Response(status_code=204, headers={"X-Envd-Version": ENVD_VERSION})


async def detach(detach_streams: Callable[[], int], request: Request) -> Response:
    """``POST /detach`` (ours, not E2B's): the control plane asks it before a checkpoint, so
    process output streams end whole instead of being cut with output in flight. 200 with how
    many ended; their clients read on with Connect (``ProcessManager.detach_streams``)."""
    return JSONResponse({"streams": detach_streams()})


async def envs(state: EnvdState, request: Request) -> Response:
    return JSONResponse(state.env_vars)


async def logs(journal: Journal, request: Request) -> Response:
    """Recent envd events; ``?after=<seq>`` continues from the last entry a caller saw."""
    try:
        after = int(request.query_params.get("after", "0"))
        limit = min(int(request.query_params.get("limit", "1000")), 1000)
    except ValueError:
        raise HTTPProblem(400, "'after' and 'limit' must be integers") from None
    return JSONResponse({"entries": journal.since(after, limit)})


async def metrics(sampler: MetricsSampler, request: Request) -> Response:
    with contextlib.suppress(Exception):
        return JSONResponse(sampler.sample())
    raise HTTPProblem(500, "cannot read sandbox metrics")
