"""``emberbox sandbox run-code`` end to end: a real server, a gVisor sandbox of the
``code-interpreter`` template, the CLI configured only by what ``emberbox server`` prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emberbox import Sandbox
from tests.interpreter.sandbox_support import code_interpreter_server


def test_run_code_in_a_code_interpreter_sandbox(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    with code_interpreter_server(tmp_path_factory.mktemp("cli-run-code")) as server:
        assert server.first_key is not None
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("EMBERBOX_", "E2B_"))},
            **server.sdk_env(server.first_key),
        }

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "emberbox.cli", "sandbox", *args],
                capture_output=True, text=True, timeout=120, env=env,
            )  # fmt: skip

        created = cli("create", "-t", "code-interpreter")
        assert created.returncode == 0, created.stderr
        sandbox_id = created.stdout.strip()
        try:
            ran = cli(
                "run-code",
                sandbox_id,
                "--",
                "import numpy as np; print('hi'); int(np.arange(10).sum())",
            )
            assert (ran.returncode, ran.stdout) == (0, "hi\n45\n"), ran.stderr
            plotted = cli(
                "run-code", sandbox_id, "--out-dir", str(tmp_path), "--",
                "import matplotlib.pyplot as plt; plt.bar(['a', 'b'], [1, 2]); plt.show()",
            )  # fmt: skip
            assert plotted.returncode == 0, plotted.stderr
            (image,) = (Path(line) for line in plotted.stdout.splitlines())
            assert image.parent == tmp_path and image.read_bytes().startswith(b"\x89PNG")
            failed = cli("run-code", sandbox_id, "--", "raise ValueError('nope')")
            assert failed.returncode == 1
            assert failed.stderr.rstrip().endswith("ValueError: nope")
        finally:
            Sandbox.kill(sandbox_id, api_key=server.first_key, api_url=server.api_url)

        # A private sandbox: the interpreter's port wants its traffic token (SDK and CLI).
        created = cli("create", "-t", "code-interpreter", "--private")
        assert created.returncode == 0, created.stderr
        sandbox_id = created.stdout.strip()
        try:
            ran = cli("run-code", sandbox_id, "--", "6 * 7")
            assert (ran.returncode, ran.stdout) == (0, "42\n"), ran.stderr
        finally:
            Sandbox.kill(sandbox_id, api_key=server.first_key, api_url=server.api_url)
