"""``emberbox sandbox create|list|info|kill|network|exec|run-code|shell`` (and, from ``stateful``,
``snapshot|fork|rollback|pause|resume``)."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..sdk._async.sandbox import AsyncSandbox
from ..sdk.exceptions import CommandExitException
from ..sdk.models import NetworkOptions
from ..sdk.sandbox import Sandbox
from .cell_output import Printer, read_code
from .output import JsonFlag, console, emit_json, fail, friendly_errors, pairs, table
from .shell import run_shell
from .stateful import fork, pause, resume, rollback, snapshot

app = typer.Typer(help="Create, inspect, use and kill sandboxes.", no_args_is_help=True)


AllowOut = Annotated[
    list[str] | None,
    typer.Option("--allow-out", help="CIDR, IP or domain (*.example.com) it may reach; repeat"),
]
DenyOut = Annotated[
    list[str] | None, typer.Option("--deny-out", help="CIDR or IP it may not reach; repeat")
]
Headers = Annotated[
    list[str] | None,
    typer.Option(
        "--header",
        help="DOMAIN:NAME=VALUE set on its HTTP(S) requests to DOMAIN (a header rule); VALUE "
        "may hold '${e2b.secrets.SECRET}'; repeat",
    ),
]
NoInternet = Annotated[
    bool, typer.Option("--no-internet", help="no egress but what --allow-out names")
]


def _rules(
    allow_out: list[str] | None, deny_out: list[str] | None, headers: list[str] | None = None
) -> NetworkOptions:
    rules = NetworkOptions()
    if allow_out:
        rules["allow_out"] = allow_out
    if deny_out:
        rules["deny_out"] = deny_out
    by_domain: dict[str, dict[str, str]] = {}
    for item in headers or []:
        domain, _, header = item.partition(":")
        name, sep, value = header.partition("=")
        if not (domain and name and sep):
            raise fail(f"--header must look like DOMAIN:NAME=VALUE, got {item!r}")
        by_domain.setdefault(domain, {})[name] = value
    if by_domain:
        rules["rules"] = {d: [{"transform": {"headers": h}}] for d, h in by_domain.items()}
    return rules


@app.command()
@friendly_errors
def create(
    template: Annotated[str, typer.Option("--template", "-t")] = "base",
    timeout: Annotated[int, typer.Option(help="seconds to live")] = 300,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e")] = None,
    allow_out: AllowOut = None,
    deny_out: DenyOut = None,
    header: Headers = None,
    no_internet: NoInternet = False,
    private: Annotated[
        bool, typer.Option("--private", help="its ports answer only with its traffic token")
    ] = False,
    mask_host: Annotated[
        str | None,
        typer.Option("--mask-host", help="the Host its servers see, e.g. 'localhost:${PORT}'"),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create a sandbox and print its id (and, with --private, its traffic access token on
    stderr: requests to its ports need it in the e2b-traffic-access-token header)."""
    network = _rules(allow_out, deny_out, header)
    if private:
        network["allow_public_traffic"] = False
    if mask_host:
        network["mask_request_host"] = mask_host
    sandbox = Sandbox.create(
        template=template,
        timeout=timeout,
        metadata=pairs(metadata, "--metadata"),
        envs=pairs(env, "--env"),
        allow_internet_access=not no_internet,
        network=network or None,
    )
    if json_out:
        out = {"sandboxID": sandbox.sandbox_id, "templateID": sandbox.template_id}
        if sandbox.traffic_access_token:
            out["trafficAccessToken"] = sandbox.traffic_access_token
        emit_json(out)
        return
    console.print(sandbox.sandbox_id)
    if sandbox.traffic_access_token:
        print(f"traffic access token: {sandbox.traffic_access_token}", file=sys.stderr)


@app.command()
@friendly_errors
def network(
    sandbox_id: str,
    allow_out: AllowOut = None,
    deny_out: DenyOut = None,
    header: Headers = None,
    no_internet: NoInternet = False,
) -> None:
    """Replace a running or paused sandbox's egress rules (what is not given is cleared)."""
    rules = _rules(allow_out, deny_out, header)
    if no_internet:
        rules["allow_internet_access"] = False
    sandbox = Sandbox._handle(sandbox_id)
    try:
        sandbox.update_network(rules)
    finally:
        sandbox.close()
    console.print(f"updated {sandbox_id}")


@app.command("list")
@friendly_errors
def list_(
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m")] = None,
    state: Annotated[list[str] | None, typer.Option("--state")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List sandboxes (running and paused), filtered by metadata or state."""
    found = Sandbox.list(metadata=pairs(metadata, "--metadata") or None, state=state)
    if json_out:
        emit_json(found)
        return
    table(
        f"{len(found)} sandbox(es)",
        ["id", "template", "state", "saved", "started", "ends", "metadata"],
        [
            (
                s.sandbox_id,
                s.template_id,
                s.state,
                _size(s.paused_bytes),
                s.started_at,
                s.end_at,
                s.metadata or "",
            )
            for s in found
        ],
    )


def _size(n: int | None) -> str:
    """A paused sandbox's saved memory, in MiB (blank while running)."""
    return "" if n is None else f"{n / 2**20:.1f} MiB"


@app.command()
@friendly_errors
def info(sandbox_id: str, json_out: JsonFlag = False) -> None:
    """Show one sandbox (without connecting, which would resume a paused one)."""
    sandbox = Sandbox._handle(sandbox_id)
    try:
        details = sandbox.get_info()
    finally:
        sandbox.close()
    if json_out:
        emit_json(details)
        return
    for field, value in vars(details).items():
        console.print(f"[bold]{field}[/]: {value}")


@app.command()
@friendly_errors
def kill(sandbox_id: str) -> None:
    """Kill a sandbox."""
    if not Sandbox.kill(sandbox_id):
        raise fail(f"sandbox {sandbox_id} not found")
    console.print(f"killed {sandbox_id}")


def command_line(argv: list[str]) -> str:
    """The shell line envd runs. Quoted, because joining with spaces re-splits arguments:
    ``sh -c 'exit 7'`` would become ``sh -c exit 7``, which exits 0."""
    return argv[0] if len(argv) == 1 else shlex.join(argv)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly_errors
def exec(
    sandbox_id: str,
    command: Annotated[list[str], typer.Argument(help="the command, after --")],
    user: Annotated[str | None, typer.Option("--user", "-u")] = None,
    cwd: Annotated[str | None, typer.Option("--cwd")] = None,
    timeout: Annotated[float, typer.Option(help="seconds; 0 = no limit")] = 0,
) -> None:
    """Run a command, stream its output, and exit with its exit code.

    Several arguments run as that exact argv (``-- sh -c 'exit 7'``); a single argument is a
    shell line (``-- 'make && make test'``)."""
    sandbox = Sandbox.connect(sandbox_id)
    try:
        sandbox.commands.run(
            command_line(command),
            user=user,
            cwd=cwd,
            timeout=timeout,
            on_stdout=lambda text: (sys.stdout.write(text), sys.stdout.flush()),
            on_stderr=lambda text: (sys.stderr.write(text), sys.stderr.flush()),
        )
    except CommandExitException as exc:
        raise typer.Exit(exc.exit_code if exc.exit_code > 0 else 128) from None


@app.command("run-code")
@friendly_errors
def run_code(
    sandbox_id: str,
    code: Annotated[list[str], typer.Argument(help="the code, after --; '-' reads stdin")],
    language: Annotated[str | None, typer.Option("--language", "-l")] = None,
    context: Annotated[str | None, typer.Option("--context", help="a context id")] = None,
    out_dir: Annotated[Path, typer.Option(help="where images and PDFs are saved")] = Path("."),
    env: Annotated[list[str] | None, typer.Option("--env", "-e")] = None,
    timeout: Annotated[float, typer.Option(help="seconds; 0 = no limit")] = 300,
) -> None:
    """Run a notebook cell in the sandbox's code interpreter (state persists between calls).

    Streams its output, prints its value, saves images and PDFs under --out-dir (printing
    their paths), and exits 1 with the traceback when the cell raises."""
    printer = Printer(out_dir)
    sandbox = Sandbox.connect(sandbox_id)
    try:
        execution = sandbox.run_code(
            read_code(code),
            language=language,
            context=context,
            on_stdout=printer.output,
            on_stderr=printer.output,
            on_result=printer.result,
            on_error=printer.error,
            envs=pairs(env, "--env") or None,
            timeout=timeout,
        )
    finally:
        sandbox.close()
    if execution.error is not None:
        raise typer.Exit(1)


@app.command()
@friendly_errors
def shell(
    sandbox_id: str,
    user: Annotated[str | None, typer.Option("--user", "-u")] = None,
) -> None:
    """Open an interactive terminal in the sandbox (exit the shell to leave)."""

    async def session() -> int:
        sandbox = await AsyncSandbox.connect(sandbox_id)
        try:
            return await run_shell(sandbox, user=user)
        finally:
            await sandbox.close()

    raise typer.Exit(asyncio.run(session()))


for command in (snapshot, fork, rollback, pause, resume):
    app.command()(command)
