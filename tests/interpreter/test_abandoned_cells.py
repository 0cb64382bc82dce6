"""Calls the client gave up on (a timeout, a dropped connection): the official SDK against the
real service, whose Python kernels are real ``ipykernel`` processes.

What a caller expects of a call it abandoned: its code does not run later behind its back, the
cell stops without costing the context its state when the cell can be stopped at all, and a
cell that will not stop is replaced rather than holding the context forever.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from e2b import TimeoutException


def test_a_call_abandoned_while_queued_never_runs(sandbox: Any, tmp_path: Path) -> None:
    """A call waits behind the context's running cell; its caller times out meanwhile. Before,
    its code still ran once the cell ahead ended, long after the caller had been told it
    failed."""
    context = sandbox.create_code_context()
    marker = tmp_path / "ran"
    ahead = threading.Thread(
        target=lambda: sandbox.run_code("import time; time.sleep(3)", context=context)
    )
    ahead.start()
    time.sleep(0.5)  # the cell ahead holds the context now
    with pytest.raises(TimeoutException):
        sandbox.run_code(f"open({str(marker)!r}, 'w').write('ran')", context=context, timeout=1)
    ahead.join()
    assert sandbox.run_code("'next'", context=context).text == "next"
    assert not marker.exists(), "the abandoned call's code ran after its caller gave up"


def test_a_cell_that_swallows_the_first_interrupt_is_interrupted_again(sandbox: Any) -> None:
    """One KeyboardInterrupt caught (or one that lands before the cell starts and is lost):
    the interrupt is sent again, so the cell stops and the context keeps its state. Before,
    the kernel was restarted and every variable was gone."""
    context = sandbox.create_code_context()
    sandbox.run_code("kept = 'still here'", context=context)
    swallow = "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    time.sleep(60)"
    with pytest.raises(TimeoutException):
        sandbox.run_code(swallow, context=context, timeout=1.5)
    assert sandbox.run_code("kept", context=context, timeout=20).text == "still here"


def test_a_chatty_cell_deaf_to_interrupts_is_replaced(sandbox: Any) -> None:
    """A cell that prints without pause and ignores every interrupt. Before, the grace period
    was checked only when the kernel fell silent, which this one never does: the context stayed
    busy for good and every later call on it hung."""
    context = sandbox.create_code_context()
    deaf = (
        "import time\nwhile True:\n    try:\n        print('x', flush=True)\n"
        "        time.sleep(0.01)\n    except KeyboardInterrupt:\n        pass"
    )
    with pytest.raises(TimeoutException):
        sandbox.run_code(deaf, context=context, timeout=1.5)
    started = time.monotonic()
    assert sandbox.run_code("'fresh'", context=context, timeout=30).text == "fresh"
    assert time.monotonic() - started < 15
