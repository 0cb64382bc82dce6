"""Which Linux user a request acts as, and how its paths resolve."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import pwd
from dataclasses import dataclass

from starlette.datastructures import Headers

from .._connect.errors import Code, ConnectError
from ..vocabulary import DEFAULT_USER
from .state import EnvdState


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @classmethod
    def lookup(cls, name: str) -> User:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConnectError(Code.UNAUTHENTICATED, f"invalid user: '{name}'") from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)

    def groups(self) -> list[int]:
        return os.getgrouplist(self.name, self.gid)

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


def fallback_user() -> str:
    """envd's default user before ``/init``: ``user`` if it exists (templates), else ourselves."""
    try:
        pwd.getpwnam(DEFAULT_USER)
        return DEFAULT_USER
    except KeyError:
        return pwd.getpwuid(os.geteuid()).pw_name


def username_from_basic(headers: Headers) -> str | None:
    """``Authorization: Basic base64("<user>:")`` selects the user of an RPC."""
    auth = headers.get("authorization")
    if not auth or not auth.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ConnectError(Code.UNAUTHENTICATED, "malformed Basic authorization header") from None
    return decoded.split(":", 1)[0] or None


def resolve_user(state: EnvdState, name: str | None) -> User:
    user = User.lookup(name or state.default_user or fallback_user())
    return dataclasses.replace(user, home=state.home) if state.home else user


def resolve_path(path: str, user: User) -> str:
    """Absolute, normalised path; relative paths and ``~`` are taken from the user's home.

    NUL bytes are refused rather than silently truncated by the OS.
    """
    if "\x00" in path:
        raise ConnectError(Code.INVALID_ARGUMENT, "path contains a NUL byte")
    if path == "~" or path.startswith("~/"):
        path = user.home + path[1:]
    elif not path.startswith("/"):
        path = os.path.join(user.home, path)
    return os.path.normpath(path)


def make_dirs(path: str) -> None:
    """``mkdir -p``; run under the user's credentials (:mod:`.creds`), so whatever it creates is
    the user's and it can create only where the user may."""
    missing: list[str] = []
    current = path
    while current and not os.path.exists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            continue
