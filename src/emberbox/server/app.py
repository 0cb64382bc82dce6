"""``emberbox server``: the API and the sandbox proxy, two listeners in one process.

Sandboxes outlive the server process: stopping it stops only the listeners and the reaper; the
next start reconciles the database with the node and enforces any end time that passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from ..long_lived import freeze_started
from ..vocabulary import SERVER_KEEPALIVE_S
from .api.app import create_api_app
from .api_host import ApiHostDispatch
from .auth.store import count_keys, create_key
from .config import Settings
from .context import ServerContext
from .draining import Drain
from .proxy.app import SandboxProxy
from .tls import ServerTls, prepare
from .tls import check as check_tls


class _Server(uvicorn.Server):
    """Two servers share one loop, so signals are handled once, by :func:`serve`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _has_base_template(settings: Settings) -> bool:
    from ..templates.store import TemplateError, TemplateStore

    try:
        TemplateStore(settings.data_dir).get("base")
    except TemplateError:
        return False
    return True


def banner(
    settings: Settings,
    key: str | None,
    runtime: str,
    isolated: bool,
    tls: ServerTls | None = None,
) -> str:
    api = f"{settings.scheme}://{settings.host}:{settings.api_port}"
    proxy = f"{settings.scheme}://{settings.host}:{settings.proxy_port}"
    where = f"node {settings.node_url}" if settings.node_url else "embedded node"
    lines = [f"Emberbox API on {api}, sandbox proxy on {proxy} ({where}, runtime: {runtime})"]
    if isolated and not settings.node_url and not _has_base_template(settings):
        lines.append(
            "NOTE: no 'base' template yet; build it once with: "
            "python -m emberbox.templates build-base"
        )
    if not isolated:
        lines.append(
            "WARNING: the process runtime runs sandboxes as plain processes on this host with NO "
            "isolation; use it for development only (EMBERBOX_RUNTIME=gvisor needs root + runsc)."
        )
    if key:
        lines += ["", "First start: created an API key (shown only this once):", f"  {key}"]
    lines += ["", "Point the E2B SDKs here:", f"  export E2B_API_URL={api}"]
    if tls is None:
        lines.append(f"  export E2B_SANDBOX_URL={proxy}")
    else:  # https://<port>-<id>.<domain>: routed by name, so signed URLs work anywhere
        lines.append(f"  export E2B_DOMAIN={settings.sandbox_domain}")
    lines += [
        f"  export E2B_VOLUME_API_URL={api}  # volume contents (Volume.read_file, ...)",
        f"  export E2B_API_KEY={key or '<your key; create one with: emberbox keys create>'}",
    ]
    if tls is not None and tls.ca is not None:
        lines += [
            f"  export SSL_CERT_FILE={tls.bundle}  # Python: system roots + the local CA",
            f"  export NODE_EXTRA_CA_CERTS={tls.ca}  # JavaScript; curl --cacert {tls.ca}",
        ]
    if tls is not None:
        name = settings.sandbox_host
        lines.append(
            f"Names under {name} must resolve to this proxy "
            f"(e.g. dnsmasq: address=/{name}/{settings.host})."
        )
    return "\n".join(lines)


def _config(app: Callable[..., Any], host: str, port: int, tls: ServerTls | None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=SERVER_KEEPALIVE_S,
        timeout_graceful_shutdown=3,  # open process streams would hold shutdown forever
    )


async def serve(settings: Settings) -> None:
    check_tls(settings)  # before anything starts: bad TLS settings change nothing
    ctx = await ServerContext.open(settings)
    try:
        tls = prepare(settings)  # under the data dir's lock: one server writes the files
    except BaseException:
        await ctx.close()
        raise
    first_key = None
    if await count_keys(ctx.sessions) == 0:
        first_key = (await create_key(ctx.sessions, "default", "first start")).key
    api = create_api_app(
        settings, ctx.service, ctx.authenticate, ctx.templates, ctx.volumes, ctx.secrets
    )
    proxy = SandboxProxy(ctx.resolver, wake=ctx.service.wake)
    ctx.service.traffic = proxy
    drain = Drain()
    proxy_side = ApiHostDispatch(api, proxy, settings.sandbox_host) if settings.domain else proxy
    servers = [
        _Server(_config(drain.wrap(api), settings.host, settings.api_port, tls)),
        _Server(_config(drain.wrap(proxy_side), settings.host, settings.proxy_port, tls)),
    ]
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        for s in servers:
            s.should_exit = True

    async def drain_then_stop() -> None:
        await drain.drain(settings.shutdown_grace_s)
        stop()

    def on_signal() -> None:
        if stopping:  # a second signal: stop now
            stop()
            return
        stopping.append(loop.create_task(drain_then_stop()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    ctx.reaper.start()
    try:
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        while not all(s.started for s in servers):
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.02)
        if all(s.started for s in servers):
            freeze_started()  # (before it says it is ready: the one collection's pause)
            facts = ctx.service.facts
            print(
                banner(settings, first_key, facts.runtime, facts.capabilities.isolation, tls),
                flush=True,
            )
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()
    finally:
        await proxy.aclose()
        await ctx.close()
