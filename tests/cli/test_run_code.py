"""``emberbox sandbox run-code`` as a real process against the real interpreter service on
loopback (debug mode: ``EMBERBOX_SANDBOX_URL`` is where the sandbox's port 49999 is)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.interpreter.conftest import Service, start_service

SANDBOX = "debug_sandbox_id"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("cli-interpreter"))
    yield svc
    svc.stop()


def _env(service: Service) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBERBOX_", "E2B_"))}
    return {**env, "EMBERBOX_DEBUG": "true", "EMBERBOX_SANDBOX_URL": service.url}


def _cli(
    service: Service, *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emberbox.cli", "sandbox", "run-code", SANDBOX, *args],
        capture_output=True,
        text=True,
        timeout=90,
        input=stdin,
        cwd=cwd,
        env=_env(service),
    )


def test_prints_output_and_the_value(service: Service) -> None:
    done = _cli(service, "--", "import sys; print('out'); print('err', file=sys.stderr); 6 * 7")
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("out\n42\n", "err\n")
    again = _cli(service, "-l", "python", "--", "x = 5")
    assert (again.returncode, again.stdout) == (0, "")  # no value, nothing printed
    assert _cli(service, "--", "x", "+", "1").stdout == "6\n"  # words joined; state kept


def test_code_from_stdin(service: Service) -> None:
    done = _cli(service, "--", "-", stdin="def f(n):\n    return n * 2\n\nf(21)\n")
    assert (done.returncode, done.stdout) == (0, "42\n"), done.stderr


def test_output_streams_while_the_cell_runs(service: Service) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "emberbox.cli", "sandbox", "run-code", SANDBOX, "--",
         "import time; print('first', flush=True); time.sleep(3); print('second')"],
        stdout=subprocess.PIPE, text=True, env=_env(service),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "first\n"
        assert process.poll() is None  # printed while the cell still sleeps
        assert process.stdout.read() == "second\n"
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.wait()


def test_an_exception_prints_its_traceback_and_exits_1(service: Service) -> None:
    done = _cli(service, "--", "def f():\n    return 1 / 0\nf()")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "\x1b[" not in done.stderr  # colours only for a terminal
    assert "return 1 / 0" in done.stderr
    assert done.stderr.rstrip().endswith("ZeroDivisionError: division by zero")


def test_images_and_pdfs_are_saved_and_their_paths_printed(
    service: Service, tmp_path: Path
) -> None:
    jpeg = base64.b64encode(b"\xff\xd8\xff\xe0jpeg").decode()
    pdf = base64.b64encode(b"%PDF-1.4 tiny").decode()
    code = (
        "import matplotlib.pyplot as plt\nfrom IPython.display import display\n"
        "plt.plot([1, 2, 3]); plt.show()\n"
        f"display({{'text/plain': 'raw', 'image/jpeg': '{jpeg}', 'application/pdf': '{pdf}',"
        " 'image/svg+xml': '<svg xmlns=\"http://www.w3.org/2000/svg\"/>'}, raw=True)\n"
        "'value'"
    )
    out = tmp_path / "out"
    first = _cli(service, "--out-dir", str(out), "--", code)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    png, jpg, svg, pdf_path = (Path(line) for line in lines[:4])
    assert lines[4:] == ["value"]  # the figure's "<Figure ...>" text is not printed
    assert (png.parent, png.name) == (out, "result-1.png")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert jpg.read_bytes() == b"\xff\xd8\xff\xe0jpeg" and jpg.suffix == ".jpg"
    assert svg.read_text() == '<svg xmlns="http://www.w3.org/2000/svg"/>'
    assert pdf_path.read_bytes() == b"%PDF-1.4 tiny"

    again = _cli(service, "--", "import matplotlib.pyplot as plt; plt.plot([1]); plt.show()",
                 cwd=out)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout == "result-1-2.png\n"  # default dir: cwd; never overwrites
    assert png.read_bytes() != (out / "result-1-2.png").read_bytes()


def test_contexts_env_and_bad_input(service: Service, tmp_path: Path) -> None:
    context = httpx.post(f"{service.url}/contexts", json={"cwd": str(tmp_path)}).json()
    here = _cli(service, "--context", context["id"], "--", "import os; os.getcwd()")
    assert (here.returncode, here.stdout) == (0, f"{tmp_path}\n"), here.stderr
    env = _cli(service, "-e", "GREETING=hej", "--", "import os; os.environ['GREETING']")
    assert env.stdout == "hej\n"

    for args, message in (
        (("--context", "no-such-context"), "error: NotFoundException"),
        (("-l", "cobol"), "error: InvalidArgumentException"),
        (("-e", "nonsense"), "error: --env must look like KEY=VALUE"),
    ):
        bad = _cli(service, *args, "--", "1")
        assert bad.returncode == 1, bad.stdout
        assert bad.stderr.startswith(message) and "Traceback" not in bad.stderr


def test_timeout_exits_non_zero_and_the_next_call_works(service: Service) -> None:
    started = time.monotonic()
    slow = _cli(service, "--timeout", "1", "--", "import time; time.sleep(30)")
    assert slow.returncode == 1 and "TimeoutException" in slow.stderr
    assert time.monotonic() - started < 15
    assert _cli(service, "--", "'awake'").stdout == "awake\n"
