"""A cell whose client reads slowly still ends, with every result: the service keeps reading
the kernel while the client lags (it stopped at 256 queued events, and ZeroMQ then dropped the
kernel's messages past its high-water mark, the cell's idle among them: the call never ended
and its results were lost). In-process, with a real IPython kernel."""

from __future__ import annotations

import asyncio
from pathlib import Path

from emberbox.interpreter import events
from emberbox.interpreter.kernels import Context, kernel_env

DISPLAYS = 3000  # past ZeroMQ's 1000 a socket on each side, and the old queue's 256


async def test_a_client_that_reads_after_the_cell_ended_gets_all_of_it(tmp_path: Path) -> None:
    context = Context("python", str(tmp_path), kernel_env())
    await context.start()
    try:
        # Paced a little (0.02 s every 50): a reader on a loaded host keeps up with that; an
        # unpaced burst can outrun any reader and ZeroMQ drops past its marks anyway.
        code = (
            "import time\nfrom IPython.display import display\n"
            f"for i in range({DISPLAYS}):\n    display(i)\n"
            "    if i % 50 == 49: time.sleep(0.02)"
        )
        run = context.execute(code, None)
        await asyncio.sleep(8)  # the client reads nothing while the kernel prints it all
        taken: list[events.Event] = []
        while (event := await asyncio.wait_for(run.events.get(), 30)) is not None:
            taken.append(event)
        results = [e for e in taken if e.get("type") == "result"]
        assert len(results) == DISPLAYS
        assert [r["text"] for r in results[:3]] == ["0", "1", "2"]
        assert any(e.get("type") == "number_of_executions" for e in taken)
        assert taken[-1] == events.END_OF_EXECUTION
    finally:
        await context.close()
