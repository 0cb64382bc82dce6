"""Which languages contexts speak: each names a Jupyter kernelspec, and a language is offered
only where its kernelspec is installed (the ``code-interpreter`` template installs Python's,
Bash's, our JavaScript one's, :mod:`.js_kernel`, and Debian's IRkernel for R), so an unknown
or uninstalled language is refused up front, naming the ones there are. ``js`` is another
name for ``javascript``, ``ts`` for ``typescript`` (the same kernel, types stripped by
Debian's TypeScript compiler).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence

# Language (as the SDKs name it) → kernelspec name.
KERNELS = {
    "python": "python3",
    "bash": "bash",
    "javascript": "javascript",
    "typescript": "typescript",
    "r": "ir",
}
# Other names callers use for a language (the SDKs type ``javascript``; people write ``js``).
ALIASES = {"js": "javascript", "node": "javascript", "nodejs": "javascript", "ts": "typescript"}
NODE_LANGUAGES = ("javascript", "typescript")  # kernels driving node: JavaScript env code
DEFAULT_LANGUAGE = "python"


def canonical(language: str) -> str:
    name = language.strip().lower()
    return ALIASES.get(name, name)


def installed_kernels() -> dict[str, str]:
    """Language → kernelspec for every language whose kernel is installed here (JavaScript's
    and TypeScript's also need ``node`` on the PATH: their kernel only drives it)."""
    from jupyter_client.kernelspec import KernelSpecManager

    found = KernelSpecManager().find_kernel_specs()
    node = shutil.which("node") or shutil.which("nodejs")
    return {
        language: kernel
        for language, kernel in KERNELS.items()
        if kernel in found and (language not in NODE_LANGUAGES or node)
    }


def kernel_arguments(language: str) -> list[str]:
    """Extra kernel command-line arguments: Python kernels load our IPython extension, which
    adds chart data to matplotlib figures (:mod:`.kernel_ext`)."""
    return ["--ext=emberbox.interpreter.kernel_ext"] if language == "python" else []


def reseed_code(language: str) -> str | None:
    """Code that seeds the kernel's random generators from the OS (Python's ``random`` and
    numpy's global one if loaded); None where there is nothing to reseed in a running kernel
    (JavaScript kernels start on demand, after the sandbox exists)."""
    if language != "python":
        return None
    return (
        "import random as _emberbox_random, sys as _emberbox_sys\n"
        "_emberbox_random.seed()\n"
        "if 'numpy' in _emberbox_sys.modules:\n"
        "    _emberbox_sys.modules['numpy'].random.seed()\n"
        "del _emberbox_random, _emberbox_sys\n"
    )


# -- per-call environment variables, in each kernel's own language ---------------------------


def _r_strings(values: Mapping[str, str] | Sequence[str]) -> str:
    """An R character vector (named, for a mapping): JSON string literals are R's too."""

    def lit(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    if isinstance(values, Mapping):
        return "c(" + ", ".join(f"{lit(k)} = {lit(v)}" for k, v in values.items()) + ")"
    return "c(" + ", ".join(lit(v) for v in values) + ")"


def set_env_code(language: str, env_vars: Mapping[str, str]) -> str:
    """Code that sets ``env_vars`` and remembers what they were, for :func:`restore_env_code`."""
    if language in NODE_LANGUAGES:
        return (
            f"globalThis.__emberboxEnv = {json.dumps(dict(env_vars))};\n"
            "globalThis.__emberboxEnvSaved = Object.fromEntries(Object.keys(__emberboxEnv)"
            ".map((k) => [k, process.env[k]]));\n"
            "Object.assign(process.env, __emberboxEnv);"
        )
    if language == "bash":
        lines = []
        for key, value in env_vars.items():
            lines.append(
                f'if [ -n "${{{key}+x}}" ]; then __eb_old_{key}="${key}"; __eb_had_{key}=1; '
                f"else __eb_had_{key}=0; fi; export {key}={shlex.quote(value)}"
            )
        lines.append(f"__eb_keys={shlex.quote(' '.join(env_vars))}")
        return "\n".join(lines)
    if language == "r":
        return (
            f".emberbox_env <- {_r_strings(env_vars)}\n"
            ".emberbox_env_saved <- Sys.getenv(names(.emberbox_env), unset = NA, names = TRUE)\n"
            "invisible(do.call(Sys.setenv, as.list(.emberbox_env)))"
        )
    return (
        "import os as _emberbox_os\n"
        f"_emberbox_env = {dict(env_vars)!r}\n"
        "_emberbox_env_saved = {k: _emberbox_os.environ.get(k) for k in _emberbox_env}\n"
        "_emberbox_os.environ.update(_emberbox_env)\n"
    )


def apply_env_code(language: str, values: Mapping[str, str], removed: Sequence[str]) -> str:
    """Code that sets ``values`` and unsets ``removed`` for good (the sandbox's own env)."""
    if language in NODE_LANGUAGES:
        return (
            f"Object.assign(process.env, {json.dumps(dict(values))});\n"
            f"for (const k of {json.dumps(list(removed))}) delete process.env[k];"
        )
    if language == "bash":
        lines = [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
        lines += [f"unset {k}" for k in removed]
        return "\n".join(lines) or ":"
    if language == "r":
        return (
            f"invisible(do.call(Sys.setenv, as.list({_r_strings(values)})))\n"
            f"invisible(Sys.unsetenv({_r_strings(removed)}))"
        )
    return (
        "import os as _emberbox_os\n"
        f"_emberbox_os.environ.update({dict(values)!r})\n"
        f"[_emberbox_os.environ.pop(k, None) for k in {list(removed)!r}]\n"
        "del _emberbox_os\n"
    )


def settable(language: str, env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` a ``language`` kernel can hold (the others are skipped)."""
    return {k: v for k, v in env.items() if env_problem(language, {k: v}) is None}


def restore_env_code(language: str) -> str:
    if language in NODE_LANGUAGES:
        return (
            "for (const [k, v] of Object.entries(globalThis.__emberboxEnvSaved || {})) {\n"
            "  if (v === undefined) delete process.env[k]; else process.env[k] = v;\n"
            "}\n"
            "delete globalThis.__emberboxEnv; delete globalThis.__emberboxEnvSaved;"
        )
    if language == "bash":
        return (
            "for __eb_k in $__eb_keys; do "
            'if [ "$(eval echo \\$__eb_had_$__eb_k)" = 1 ]; then '
            'eval "export $__eb_k=\\"\\$__eb_old_$__eb_k\\""; else unset "$__eb_k"; fi; '
            'unset "__eb_old_$__eb_k" "__eb_had_$__eb_k"; done; unset __eb_k __eb_keys'
        )
    if language == "r":
        return (  # (in local(): the user's own .k and .v stay as they were)
            "local(for (.k in names(.emberbox_env_saved)) {\n"
            "  .v <- .emberbox_env_saved[[.k]]\n"
            "  if (is.na(.v)) Sys.unsetenv(.k) else do.call(Sys.setenv, setNames(list(.v), .k))\n"
            "})\n"
            "suppressWarnings(rm(.emberbox_env, .emberbox_env_saved))"
        )
    return (  # (in a function: the user's own names stay as they were)
        "def _emberbox_restore(saved, environ):\n"
        "    for k, v in saved.items():\n"
        "        if v is None:\n"
        "            environ.pop(k, None)\n"
        "        else:\n"
        "            environ[k] = v\n"
        "_emberbox_restore(_emberbox_env_saved, _emberbox_os.environ)\n"
        "del _emberbox_restore, _emberbox_env, _emberbox_env_saved, _emberbox_os\n"
    )


_BASH_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_problem(language: str, env_vars: Mapping[str, str]) -> str | None:
    """Why ``env_vars`` cannot be set in a ``language`` kernel, or None when they can."""
    for key, value in env_vars.items():
        if "\0" in key or "\0" in value or "=" in key or not key:
            return f"env var {key!r} cannot be set (empty, or contains '=' or NUL)"
        if language == "bash" and not _BASH_NAME.match(key):
            return f"env var {key!r} is not a valid bash variable name"
    return None
