"""The code-interpreter service: stateful Jupyter kernels behind E2B's port-49999 protocol.

A small Starlette app (:mod:`.app`) speaks the wire protocol the official
``e2b-code-interpreter`` SDK parses; each context (:mod:`.kernels`) owns one real ``ipykernel``
process driven over ZeroMQ by ``jupyter_client``, with no notebook server in between;
:mod:`.events` turns the kernel's IOPub messages into the NDJSON lines of ``POST /execute``.
See docs/code-interpreter.md.
"""

INTERPRETER_PORT = 49999  # where the SDKs look for the code interpreter
