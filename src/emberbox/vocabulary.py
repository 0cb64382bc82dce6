"""The facts every layer shares, each written down once: sandbox ids, envd's port and version,
and a sandbox's default size.

The control plane, the node, the runtimes, the proxy and the SDK import these names instead of
repeating the literals, so changing one (a new envd feature level, a bigger default disk) is a
one-line change.
"""

from __future__ import annotations

import re
import secrets
import string

ENVD_PORT = 49983
"""Where envd listens inside every sandbox (E2B's fixed port; the SDKs hard-code it)."""

TRAFFIC_TOKEN_HEADER = "e2b-traffic-access-token"
"""E2B's header for a private sandbox's ``trafficAccessToken`` on its ports (envd's exempt)."""

ENVD_TOKEN_HEADER = "X-Access-Token"
"""Where a request to envd (or the code interpreter) carries the sandbox's ``envdAccessToken``."""

ENVD_VERSION = "0.6.13"
"""The E2B envd feature level we implement; SDKs switch behaviour on it (protocol §2.7)."""

GUEST_HOSTNAME = "e2b"
"""Every sandbox's kernel host name (what ``hostname`` prints), as in E2B's sandboxes. Not the
sandbox id: a sandbox restored from a snapshot (a warm-pool claim, a fork, a create from a
snapshot) keeps the host name saved in its memory, and root inside lacks ``CAP_SYS_ADMIN`` to
change it, so one name for all keeps it the same however a sandbox started. The id is in
``/etc/hostname``, ``/.e2b`` and ``E2B_SANDBOX_ID``; ``/etc/hosts`` resolves both names."""

DEFAULT_USER = "user"
DEFAULT_WORKDIR = "/home/user"
"""Who commands run as, and where, unless a template or a call says otherwise (E2B's)."""

STANDBY_SHELLS = 2
"""Login shells envd keeps started per (user, cwd, stdin) so a command need not wait for a login
(``envd/process/standby.py``); the warm pool primes a pooled sandbox with as many commands."""

HOST_MIN_FREE_MB = 1024
"""Memory (``MemAvailable``, MiB) the node leaves the host for what runs: no warm-pool refill
starts below it (``EMBERBOX_WARM_POOL_MIN_FREE_MB``), and no paused sandbox's processes are
kept below it (those kept go, resident ones first: ``runtimes/gvisor/kept.py``)."""

OFFLOADED_BELOW_BYTES = 16 << 20
"""A sandbox whose memory the node moved to swap counts as offloaded once it keeps less than
this resident (an idle gVisor sandbox keeps ~4 MiB): an offload that ran out of steps above it
is tried again (``node/offload.py``), and a paused sandbox's kept processes count as in swap
only below it (``runtimes/gvisor/kept.py``)."""

PAUSE_KEEP_S = 600.0
"""How long a node keeps a paused sandbox's processes stopped beside its saved memory, at most
(``EMBERBOX_PAUSE_KEEP_S``; 0: never): a resume within it continues them in tens of ms
instead of restoring the memory. Only once their memory is in compressed swap; resident,
a minute at most (docs/stateful.md, "Kept paused sandboxes")."""

DEFAULT_UID = 1000
"""The uid (and gid) of ``DEFAULT_USER`` in our templates: who owns what is put in a volume."""

SERVER_KEEPALIVE_S = 310
"""How long our listeners keep an idle connection: longer than the SDKs' 300 s pool keepalive,
so a client never sends on a connection the server just closed."""

DEFAULT_CPU_COUNT = 2
DEFAULT_MEMORY_MB = 512
DEFAULT_DISK_MB = 1024
DEFAULT_PIDS_LIMIT = 1024

SANDBOX_ID_LENGTH = 20
_ID_ALPHABET = string.ascii_lowercase + string.digits
SANDBOX_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
"""What any sandbox id looks like: safe in host object names (netns, cgroups, paths) and in
``<port>-<id>.<domain>`` host names (the port never contains '-', so the first '-' splits)."""


class InvalidSandboxId(ValueError):
    """A sandbox id that no sandbox can have."""


def template_ref_parts(ref: str) -> tuple[str, str | None]:
    """A template reference ``[namespace/]name[:tag]`` → (``name``, ``tag``; None when not
    given): the one reading of it, for every lookup. The namespace is cut off first (at the
    last '/'), then the tag: lookups that read it otherwise found different templates for
    one reference (``b-<build>:x/y`` was ``y`` to one and ``b-<build>`` to another)."""
    name, _, tag = ref.rpartition("/")[2].partition(":")
    return name, (tag or None)


def new_sandbox_id() -> str:
    """20 chars of [a-z0-9], the shape E2B's ids have (no '-' or '.', which hosts split on)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(SANDBOX_ID_LENGTH))


def new_snapshot_id() -> str:
    """A snapshot's id: also a directory name on its node, so it has a sandbox id's shape."""
    return "snap" + new_sandbox_id()


SNAPSHOT_ID_RE = re.compile(rf"snap[a-z0-9]{{{SANDBOX_ID_LENGTH}}}")
"""What :func:`new_snapshot_id` makes. A snapshot is named by its id or its name wherever one
is asked for, so no name may have this shape."""


def is_snapshot_id(value: str) -> bool:
    return SNAPSHOT_ID_RE.fullmatch(value) is not None


VOLUME_ID_RE = re.compile(r"vol[a-z0-9]{20}")
"""A volume's id: also its directory's name on the node, checked by the server and the runtime."""


def new_volume_id() -> str:
    return "vol" + new_sandbox_id()


SECRET_ID_PREFIX = "sec_"
"""Secret ids start with it, and secret names may not (E2B reserves it): a secret is named by
its id or its name wherever one is asked for."""


def new_secret_id() -> str:
    return SECRET_ID_PREFIX + new_sandbox_id()


def is_volume_id(value: str) -> bool:
    return VOLUME_ID_RE.fullmatch(value) is not None


def is_sandbox_id(value: str) -> bool:
    return SANDBOX_ID_RE.match(value) is not None


def check_sandbox_id(value: str) -> str:
    """``value`` if it is a valid sandbox id, else :class:`InvalidSandboxId`."""
    if not is_sandbox_id(value):
        raise InvalidSandboxId(f"invalid sandbox id {value!r}: use [a-z0-9-], at most 48 chars")
    return value


def e2b_env(sandbox_id: str, template_id: str) -> dict[str, str]:
    """The variables every process in an E2B sandbox sees (protocol §2.6)."""
    return {"E2B_SANDBOX": "true", "E2B_SANDBOX_ID": sandbox_id, "E2B_TEMPLATE_ID": template_id}


# Those of :func:`e2b_env`: each sandbox's own, never carried over from another's.
IDENTITY_VARS = frozenset(e2b_env("", ""))


# In E2B's ``network.maskRequestHost``, what stands for the port a request is for.
MASK_PORT_VARIABLE = "${PORT}"

# E2B's error_code for a plain resume of a sandbox paused while its envd did not answer (409):
# only a resume without memory (the SDKs' on_resume="reboot") brings it back.
GUEST_UNRESPONSIVE_ERROR = "sandbox_snapshot_guest_agent_unresponsive"


def whole_number(text: str, max_digits: int = 19) -> int | None:
    """``text`` as a non-negative integer when it is 1 to ``max_digits`` ASCII digits, else
    None: how every number a request (or an image's files) carries is read. ``str.isdigit``
    also accepts "²" and other digits ``int`` refuses, which made such checks answer 500."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None
