"""The sandbox state machine. Every change goes through :func:`check_transition`.

creating ─▶ running ─▶ pausing ─▶ paused ─▶ resuming ─▶ running
    │          │          │          │          │
    └──────────┴──────────┴────┬─────┴──────────┘
                               ▼
                  killing ─▶ killed        (any live state ─▶ failed)

running ─▶ paused directly: a rollback the node left paused at its snapshot (it failed, or
was cut off), recorded as the node holds it.
"""

from __future__ import annotations

import enum
from typing import Literal


class State(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    KILLING = "killing"
    KILLED = "killed"
    FAILED = "failed"


class EndReason(enum.StrEnum):
    TIMEOUT = "timeout"
    KILLED_BY_USER = "killed by user"
    OUT_OF_MEMORY = "out of memory"
    RUNTIME_CRASH = "runtime crash"
    CREATE_FAILED = "create failed"


_ENDED = {State.KILLED, State.FAILED}
_NEXT: dict[State, set[State]] = {
    State.CREATING: {State.RUNNING, State.KILLING, State.FAILED},
    State.RUNNING: {State.PAUSING, State.PAUSED, State.KILLING, State.FAILED},
    State.PAUSING: {State.PAUSED, State.RUNNING, State.KILLING, State.FAILED},
    State.PAUSED: {State.RESUMING, State.KILLING, State.FAILED},
    State.RESUMING: {State.RUNNING, State.PAUSED, State.KILLING, State.FAILED},
    State.KILLING: {State.KILLED, State.FAILED},
    State.KILLED: set(),
    State.FAILED: set(),
}

# States a user can see (in list/get) and that hold node resources.
VISIBLE: frozenset[State] = frozenset({State.RUNNING, State.PAUSED, State.PAUSING, State.RESUMING})
# A paused sandbox is saved to disk and holds no CPU or memory (runtimes/gvisor: pause).
HOLDS_RESOURCES: frozenset[State] = frozenset(
    {State.CREATING, State.RUNNING, State.PAUSING, State.RESUMING, State.KILLING}
)
COUNTS_TOWARD_QUOTA: frozenset[State] = HOLDS_RESOURCES
# States in which the node keeps a paused sandbox's saved memory on disk (``paused_bytes``).
HOLDS_SAVED_MEMORY: frozenset[State] = frozenset({State.PAUSED, State.RESUMING})


class IllegalTransition(Exception):
    def __init__(self, current: State, wanted: State) -> None:
        super().__init__(f"sandbox cannot go from {current} to {wanted}")
        self.current = current
        self.wanted = wanted


def check_transition(current: State, wanted: State) -> None:
    if wanted not in _NEXT[current]:
        raise IllegalTransition(current, wanted)


def is_ended(state: State) -> bool:
    return state in _ENDED


def public_state(state: State) -> Literal["running", "paused"]:
    """The two states the E2B API knows: in-between states show as where they are heading from."""
    return "paused" if state in HOLDS_SAVED_MEMORY else "running"
