"""Directory watching through the official SDK (sync polling watcher and its event stream)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from e2b import FilesystemEventType, NotFoundException


def _events_until(handle: Any, predicate: Any, timeout: float = 5.0) -> list[Any]:
    events: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += handle.get_new_events()
        if predicate(events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"condition not met; events: {events}")


def test_watch_reports_create_write_remove(sandbox: Any, workdir: str) -> None:
    handle = sandbox.files.watch_dir(workdir)
    try:
        sandbox.files.write(f"{workdir}/w.txt", "1")
        sandbox.files.write(f"{workdir}/w.txt", "22")
        sandbox.files.remove(f"{workdir}/w.txt")
        events = _events_until(
            handle,
            lambda ev: any(e.type == FilesystemEventType.REMOVE for e in ev),
        )
        kinds = {(e.name, e.type) for e in events}
        assert ("w.txt", FilesystemEventType.CREATE) in kinds
        assert ("w.txt", FilesystemEventType.WRITE) in kinds
        assert ("w.txt", FilesystemEventType.REMOVE) in kinds
    finally:
        handle.stop()


def test_recursive_watch_sees_new_subdirectories(sandbox: Any, workdir: str) -> None:
    handle = sandbox.files.watch_dir(workdir, recursive=True)
    try:
        sandbox.files.make_dir(f"{workdir}/sub")
        time.sleep(0.1)
        sandbox.files.write(f"{workdir}/sub/inner.txt", "x")
        events = _events_until(handle, lambda ev: any(e.name == "sub/inner.txt" for e in ev))
        assert any(e.name == "sub" and e.type == FilesystemEventType.CREATE for e in events)
    finally:
        handle.stop()


def test_non_recursive_watch_ignores_subdirectories(sandbox: Any, workdir: str) -> None:
    sandbox.files.make_dir(f"{workdir}/sub")
    handle = sandbox.files.watch_dir(workdir)
    try:
        sandbox.files.write(f"{workdir}/sub/hidden.txt", "x")
        sandbox.files.write(f"{workdir}/visible.txt", "x")
        events = _events_until(handle, lambda ev: any(e.name == "visible.txt" for e in ev))
        assert not any("hidden" in e.name for e in events)
    finally:
        handle.stop()


def test_watch_missing_directory(sandbox: Any, workdir: str) -> None:
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir(f"{workdir}/not-there")
