"""End to end, once per face: our SDK creates a gVisor sandbox of the ``code-interpreter``
template through a real ``emberbox server`` and runs cells through its proxy (port 49999,
the envd access token, the template's own kernels and data stack)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from emberbox import (
    AsyncSandbox,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    TimeoutException,
)
from emberbox.server.testing import ServerProcess
from tests.interpreter.sandbox_support import code_interpreter_server
from tests.sdk.conftest import maybe

TEMPLATE = "code-interpreter"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with code_interpreter_server(tmp_path_factory.mktemp("run-code-server")) as srv:
        yield srv


@pytest.fixture(params=["sync", "async"])
async def sandbox(request: pytest.FixtureRequest, connection: dict[str, Any]) -> AsyncIterator[Any]:
    face: Any = Sandbox if request.param == "sync" else AsyncSandbox
    sbx = await maybe(face.create(template=TEMPLATE, timeout=300, **connection))
    try:
        yield sbx
    finally:
        await maybe(sbx.kill())
        await maybe(sbx.close())


async def test_cells_results_errors_and_contexts(sandbox: Any) -> None:
    await maybe(sandbox.run_code("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})"))
    total = await maybe(sandbox.run_code("int(df['a'].sum())"))
    assert total.text == "6" and total.error is None
    table = await maybe(sandbox.run_code("df"))
    assert table.results[0].html is not None and "<table" in table.results[0].html

    arrived: list[float] = []
    execution = await maybe(
        sandbox.run_code(
            "import time\nimport matplotlib.pyplot as plt\nprint('plotting', flush=True)\n"
            "time.sleep(1.5)\nplt.plot([1, 2, 3], [2, 4, 1]); plt.title('line'); plt.show()",
            on_stdout=lambda _: arrived.append(time.monotonic()),
        )
    )
    assert arrived and time.monotonic() - arrived[0] > 1.0  # streamed through the proxy
    (figure,) = execution.results
    assert base64.b64decode(figure.png).startswith(b"\x89PNG\r\n\x1a\n")
    assert figure.chart is not None and (figure.chart["type"], figure.chart["title"]) == (
        "line",
        "line",
    )

    failed = await maybe(sandbox.run_code("{}['missing']"))
    assert failed.error is not None and failed.error.name == "KeyError"
    assert "missing" in failed.error.traceback

    context = await maybe(sandbox.create_code_context(cwd="/tmp"))
    assert context in await maybe(sandbox.list_code_contexts())
    here = await maybe(
        sandbox.run_code("import os; os.getcwd(), 'df' in globals()", context=context)
    )
    assert here.text == "('/tmp', False)"
    await maybe(sandbox.restart_code_context(context))
    await maybe(sandbox.remove_code_context(context))
    with pytest.raises(NotFoundException):
        await maybe(sandbox.run_code("1", context=context))
    with pytest.raises(InvalidArgumentException):
        await maybe(sandbox.run_code("1", language="cobol"))
    shell = await maybe(sandbox.run_code("echo $((6 * 7))", language="bash"))
    assert "".join(shell.logs.stdout) == "42\n" and shell.error is None


async def test_timeout_env_vars_and_the_next_call(sandbox: Any) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        await maybe(sandbox.run_code("import time; time.sleep(60)", timeout=2))
    assert time.monotonic() - started < 10
    code = "import os; os.environ.get('WHO', 'nobody')"
    assert (await maybe(sandbox.run_code(code, envs={"WHO": "me"}))).text == "me"
    assert (await maybe(sandbox.run_code(code))).text == "nobody"
