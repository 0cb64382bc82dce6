"""A Jupyter kernel for JavaScript: ipykernel's protocol side, one persistent ``node`` child.

Why our own: ``ijavascript`` needs npm's native ``zeromq`` build, which a sandbox cannot fetch.
Here ipykernel speaks Jupyter and node only evaluates (``js_driver.js``), over two private
pipes of newline-delimited JSON (their fd numbers on node's command line), so nothing
a cell prints can corrupt the protocol. Output is forwarded as ``stream`` messages while the
cell runs (console output as frames; what node's own fds 1 and 2 receive, from child
processes or native code, read from two more pipes), the value as a ``text/plain``
``execute_result``, a throw as an ``error`` reply. node starts with the kernel, in the
background, so a new context's first cell rarely waits for it.

SIGINT (``jupyter_client``'s interrupt) is forwarded to node, which breaks a synchronous cell
or abandons an awaiting one; a node that does not answer within :data:`INTERRUPT_GRACE`
seconds is killed and the cell reports it. A node that exits (``process.exit(1)``, OOM) ends
its cell with a ``KernelDied`` error and a fresh node starts on the next cell: in both cases
the cell's state is gone, and the error says so.

``python -m emberbox.interpreter.js_kernel install [--prefix P] [--typescript]`` registers the
kernelspec ``javascript`` (or ``typescript``: the same kernel, each cell transpiled by Debian's
TypeScript compiler in node); ``python -m emberbox.interpreter.js_kernel [--typescript] -f
CONNECTION_FILE`` runs it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ipykernel.kernelbase import Kernel

KERNEL_NAME = "javascript"
DRIVER = Path(__file__).with_name("js_driver.js")
INTERRUPT_GRACE = 2.0  # seconds node gets to end an interrupted cell before it is killed
FRAME_LIMIT = 64 << 20  # bytes of one frame line (output is cut into 32 KiB frames)
RAW_READ_LIMIT = 1 << 20  # bytes of node's fd 1 or 2 read at one wake-up
STDOUT, STDERR = "stdout", "stderr"
RAW = (STDOUT, STDERR)


def node_binary() -> str | None:
    return shutil.which("node") or shutil.which("nodejs")


def _die_with_parent() -> None:
    """In the child: SIGKILL when the kernel dies, even while node spins in a loop."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Node:
    """One ``node`` running the driver: write a request, read frames."""

    def __init__(self, process: asyncio.subprocess.Process, frames: asyncio.StreamReader) -> None:
        self.process = process
        self.frames = frames
        self.requests_fd: int | None = None
        self.raw: dict[str, int] = {}  # stream name → our end of node's fd 1 or 2
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in RAW}
        self.version = ""

    @classmethod
    async def start(cls, node: str, language: str = "javascript") -> Node:
        req_read, req_write = os.pipe()
        frame_read, frame_write = os.pipe()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                node,
                str(DRIVER),
                str(req_read),
                str(frame_write),
                language,
                stdin=subprocess.DEVNULL,
                # Output bypassing the driver (child processes, native code); JS-level output
                # is framed.
                stdout=out_write,
                stderr=err_write,
                pass_fds=(req_read, frame_write),
                # Its own session: the interrupt reaches it once, through us, not twice.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            for fd in (req_read, frame_write, out_write, err_write):
                os.close(fd)
        loop = asyncio.get_running_loop()
        frames = asyncio.StreamReader(limit=FRAME_LIMIT)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(frames), os.fdopen(frame_read, "rb", 0)
        )
        started = cls(process, frames)
        started.requests_fd = req_write
        started.raw = {STDOUT: out_read, STDERR: err_read}
        for fd in started.raw.values():
            os.set_blocking(fd, False)
        ready = await started.read()
        if ready is None or ready.get("t") != "ready":
            await started.kill()
            raise RuntimeError(f"node did not start the driver (got {ready!r})")
        started.version = str(ready.get("version", ""))
        return started

    def send(self, request: dict[str, Any]) -> None:
        assert self.requests_fd is not None
        data = (json.dumps(request) + "\n").encode()
        while data:
            data = data[os.write(self.requests_fd, data) :]

    async def read(self) -> dict[str, Any] | None:
        """The next frame, or None once node has exited."""
        line = await self.frames.readline()
        if not line:
            return None
        frame: dict[str, Any] = json.loads(line)
        return frame

    def interrupt(self) -> None:
        self._signal(signal.SIGINT)

    def _signal(self, signum: int) -> None:
        # os.kill, not Popen.send_signal: that polls first, which can reap a node that just
        # exited before asyncio's child watcher does (the watcher then reports 255).
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def read_raw(self, name: str) -> str | None:
        """What node's fd 1 or 2 holds now ("" if nothing), None once it is closed."""
        fd = self.raw.get(name)
        if fd is None:
            return None
        chunks: list[bytes] = []
        while sum(map(len, chunks)) < RAW_READ_LIMIT:  # (a writer as fast as us never stops)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                asyncio.get_running_loop().remove_reader(fd)
                os.close(self.raw.pop(name))
                break
            chunks.append(chunk)
        if not chunks:
            return None if name not in self.raw else ""
        return self.decoders[name].decode(b"".join(chunks))

    async def kill(self) -> int | None:
        """node and what its cells started (its process group: node leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for fd in self.raw.values():
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        self.raw = {}
        if self.requests_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.requests_fd)
            self.requests_fd = None
        return await self.process.wait()


class JavaScriptKernel(Kernel):
    implementation = "emberbox-javascript"
    implementation_version = "1"
    language = "javascript"
    language_version = ""
    banner = "JavaScript (Node.js) kernel of the Emberbox code interpreter"
    language_info = {
        "name": "javascript",
        "mimetype": "application/javascript",
        "file_extension": ".js",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._node: Node | None = None
        self._interrupted: asyncio.Event | None = None
        # Node's raw output (fds 1 and 2), read by a loop callback. It is published from the
        # cell's own task: the callback runs in the context it was registered in, which holds
        # an older cell's parent header.
        self._raw: list[tuple[str, str]] = []
        self._raw_ready = asyncio.Event()
        self._raw_dropped = 0  # characters written while no cell ran
        self._node_lock = asyncio.Lock()  # one node at a time: the prestart races cell one

    def start(self) -> None:
        super().start()  # type: ignore[no-untyped-call]
        # Ours for good: ipykernel would turn SIGINT into KeyboardInterrupt around handlers.
        signal.signal(signal.SIGINT, self._on_sigint)
        # node boots (~0.5 s in gVisor) while the kernel answers its first requests, so a new
        # context's first cell does not wait for it.
        self.io_loop.add_callback(self._prestart)

    async def _prestart(self) -> None:
        try:
            await self._ensure_node()
        except Exception:  # the first cell reports it
            self.log.exception("node did not start")

    def pre_handler_hook(self) -> None:
        pass

    def post_handler_hook(self) -> None:
        pass

    def _publish(self, msg_type: str, content: dict[str, Any]) -> None:
        self.send_response(self.iopub_socket, msg_type, content)  # type: ignore[no-untyped-call]

    def _on_sigint(self, signum: int, frame: Any) -> None:
        node, flag = self._node, self._interrupted
        if node is not None and flag is not None:
            node.interrupt()
            asyncio.get_event_loop().call_soon_threadsafe(flag.set)

    async def _ensure_node(self) -> Node:
        async with self._node_lock:
            return await self._ensure_node_locked()

    async def _ensure_node_locked(self) -> Node:
        if self._node is None or self._node.process.returncode is not None:
            binary = node_binary()
            if binary is None:
                raise RuntimeError("node is not installed")
            self._node = await Node.start(binary, self.language)
            loop = asyncio.get_running_loop()
            for name, fd in self._node.raw.items():
                loop.add_reader(fd, self._collect_raw, self._node, name)
            self.language_version = self._node.version.lstrip("v")
        return self._node

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        **_: Any,
    ) -> dict[str, Any]:
        try:
            node = await self._ensure_node()
        except Exception as exc:
            return self._error("KernelDied", f"node could not start: {exc}", silent)
        self._interrupted = asyncio.Event()
        if self._raw_dropped:
            self.log.info("node wrote %d characters between cells", self._raw_dropped)
            self._raw_dropped = 0
        try:
            node.send({"code": code})
            return await self._follow(node, silent)
        except (BrokenPipeError, OSError) as exc:
            return await self._died(node, silent, f"({exc})")
        except Exception as exc:  # (a frame that could not be read: the pipe is out of step)
            self.log.exception("node's answer could not be read")
            return await self._died(node, silent, f" (its answer could not be read: {exc})")
        finally:
            self._interrupted = None
            # What a cell that ended without it being sent left (killed, or node gone):
            # never the next cell's output.
            self._raw_dropped += sum(len(text) for _name, text in self._raw)
            self._raw.clear()
            self._raw_ready.clear()

    async def _follow(self, node: Node, silent: bool) -> dict[str, Any]:
        assert self._interrupted is not None
        interrupted = asyncio.ensure_future(self._interrupted.wait())
        reading: asyncio.Future[Any] | None = None
        raw: asyncio.Future[Any] | None = None
        try:
            while True:
                reading = reading or asyncio.ensure_future(node.read())
                raw = raw or asyncio.ensure_future(self._raw_ready.wait())
                await asyncio.wait({reading, interrupted, raw}, return_when=asyncio.FIRST_COMPLETED)
                if raw.done():
                    raw = None
                    self._publish_raw(silent)
                if not reading.done():
                    if not interrupted.done():
                        continue
                    # Interrupted: node answers with the cell's end, or is killed.
                    done, _ = await asyncio.wait({reading}, timeout=INTERRUPT_GRACE)
                    if not done:
                        await node.kill()
                        self._node = None
                        return self._error(
                            "Interrupted",
                            "node did not stop when interrupted, so it was restarted: "
                            "the context's variables are gone",
                            silent,
                        )
                frame, reading = reading.result(), None
                if frame is None:
                    self._drain_raw(node, silent)
                    return await self._died(node, silent, "")
                kind = frame.get("t")
                if kind == "out":
                    if not silent:
                        self._publish(
                            "stream",
                            {"name": frame.get("name", STDOUT), "text": frame.get("text", "")},
                        )
                elif kind == "done":
                    # Raw output written before the reply is in the pipes by now: it belongs
                    # to this cell, so it is sent before the cell ends.
                    self._drain_raw(node, silent)
                    return self._finish(frame, silent)
        finally:
            for future in (interrupted, reading, raw):
                if future is not None:
                    future.cancel()

    def _collect_raw(self, node: Node, name: str) -> None:
        text = node.read_raw(name)
        if not text:
            return
        if self._interrupted is None:  # between cells: no cell to show it in, and a
            self._raw_dropped += len(text)  # background writer must not fill our memory
            return
        self._raw.append((name, text))
        self._raw_ready.set()

    def _drain_raw(self, node: Node, silent: bool) -> None:
        for name in RAW:
            self._collect_raw(node, name)
        self._publish_raw(silent)

    def _publish_raw(self, silent: bool) -> None:
        self._raw_ready.clear()
        chunks, self._raw = self._raw, []
        if not silent:
            for name, text in chunks:
                self._publish("stream", {"name": name, "text": text})

    def _finish(self, frame: dict[str, Any], silent: bool) -> dict[str, Any]:
        error = frame.get("error")
        if error:
            return self._error(
                str(error.get("ename", "Error")),
                str(error.get("evalue", "")),
                silent,
                [str(line) for line in error.get("traceback", [])],
            )
        value = frame.get("value")
        if value is not None and not silent:
            self._publish(
                "execute_result",
                {
                    "execution_count": self.execution_count,
                    "data": {"text/plain": value},
                    "metadata": {},
                },
            )
        return {
            "status": "ok",
            "execution_count": self.execution_count,
            "payload": [],
            "user_expressions": {},
        }

    async def _died(self, node: Node, silent: bool, detail: str) -> dict[str, Any]:
        code = await node.kill()
        self._node = None
        how = f"exited with code {code}" if code is not None and code >= 0 else "was killed"
        return self._error(
            "KernelDied",
            f"node {how}{detail}; the context's state is gone and a fresh node starts "
            "on the next call",
            silent,
        )

    def _error(
        self, ename: str, evalue: str, silent: bool, traceback: list[str] | None = None
    ) -> dict[str, Any]:
        content = {
            "ename": ename,
            "evalue": evalue,
            "traceback": traceback or [f"{ename}: {evalue}"],
        }
        if not silent:
            self._publish("error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        if self._node is not None:
            await self._node.kill()
            self._node = None
        return {"status": "ok", "restart": restart}


class TypeScriptKernel(JavaScriptKernel):
    """The same kernel; node transpiles each cell with Debian's ``typescript`` module first."""

    implementation = "emberbox-typescript"
    language = "typescript"
    banner = "TypeScript (Node.js, types stripped, not checked) of the Emberbox code interpreter"
    language_info = {
        "name": "typescript",
        "mimetype": "text/typescript",
        "file_extension": ".ts",
    }


def install(prefix: str | None = None, user: bool = False, language: str = KERNEL_NAME) -> str:
    """Register the ``javascript`` (or ``typescript``) kernelspec, run by this interpreter;
    returns its path."""
    from jupyter_client.kernelspec import KernelSpecManager

    argv = [sys.executable, "-m", "emberbox.interpreter.js_kernel"]
    spec = {
        "argv": [
            *argv,
            *(["--typescript"] if language == "typescript" else []),
            "-f",
            "{connection_file}",
        ],
        "display_name": "TypeScript (Node.js)"
        if language == "typescript"
        else "JavaScript (Node.js)",
        "language": language,
        "interrupt_mode": "signal",
    }
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # copied as is: a 0700 spec dir is invisible to other users
        Path(tmp, "kernel.json").write_text(json.dumps(spec, indent=1))
        os.chmod(Path(tmp, "kernel.json"), 0o644)
        return str(KernelSpecManager().install_kernel_spec(tmp, language, user=user, prefix=prefix))


def main() -> None:
    if sys.argv[1:2] == ["install"]:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m emberbox.interpreter.js_kernel install")
        parser.add_argument("--prefix", help="default: this interpreter's prefix")
        parser.add_argument("--typescript", action="store_true", help="the typescript kernel")
        args = parser.parse_args(sys.argv[2:])
        language = "typescript" if args.typescript else KERNEL_NAME
        print(install(prefix=args.prefix or sys.prefix, language=language))
        return
    from ipykernel.kernelapp import IPKernelApp

    typescript = "--typescript" in sys.argv  # ours, not IPKernelApp's
    if typescript:
        sys.argv.remove("--typescript")
    IPKernelApp.launch_instance(kernel_class=TypeScriptKernel if typescript else JavaScriptKernel)


if __name__ == "__main__":
    main()
