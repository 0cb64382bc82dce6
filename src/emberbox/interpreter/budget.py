"""How much output one execution may send: past the budget, output is dropped, not buffered.

A cell that prints gigabytes must not grow the service's memory nor the client's. The producer
keeps draining the kernel (so the kernel never blocks and ZeroMQ never silently drops), but
stdout/stderr text and results beyond ``limit`` bytes are discarded and replaced, once, by a
marker on stderr. Errors, counts and the end of the execution always pass.
"""

from __future__ import annotations

from datetime import datetime

from .events import Event, encode

DEFAULT_LIMIT = 10 * 1024 * 1024


def marker(limit: int) -> str:
    return (
        f"\n[emberbox: output truncated: this execution produced more than {limit} bytes; "
        "the rest was discarded]\n"
    )


class OutputBudget:
    """Admits events while their encoded size fits in ``limit`` bytes."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.used = 0
        self.truncated = False

    def admit(self, event: Event) -> list[Event]:
        """The events to forward for ``event``: itself, a cut version plus the marker, or none."""
        if event.get("type") not in ("stdout", "stderr", "result"):
            return [event]
        if self.truncated:
            return []
        size = len(encode(event))
        if self.used + size <= self.limit:
            self.used += size
            return [event]
        self.truncated = True
        out: list[Event] = []
        room = self.limit - self.used
        if event["type"] != "result" and room > 0:
            head = event["text"].encode()[:room].decode(errors="ignore")
            if head:
                out.append({**event, "text": head})
        stamp = event.get("timestamp") or datetime.now().astimezone().isoformat()
        out.append({"type": "stderr", "text": marker(self.limit), "timestamp": stamp})
        self.used = self.limit
        return out
