"""Which test files may run side by side: scripts/test runs the suite in two pytest-xdist
workers (``-n 2 --dist loadfile``), and this module decides what each worker is handed.

A whole file is one unit, so its module fixtures (a server, a node) start once. Files that use
a host resource with no per-process name form one unit together, so they run one after another
in one worker; every other file may run next to anything. A file that uses one of those
resources but is missing from its table fails at collection (:func:`check`) or when it reaches
for the resource (:func:`require`), never only sometimes.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

# The data dir the gVisor suites share (tests/runtimes/gvisor_support.DATA_DIR): one server or
# runtime at a time owns its instance, and a starting one removes the sandboxes it does not
# know. These files also use the fake internet's fixed stand-in addresses (a host route each)
# and list the shared template store expecting no one else to add to it.
SHARED_DATA_DIR = "gvisor-shared-data-dir"
# envd on the host's fixed port 49983, where the SDKs' debug mode looks for it.
ENVD_DEBUG_PORT = "envd-debug-port"

_FILES: dict[str, frozenset[str]] = {
    SHARED_DATA_DIR: frozenset(
        {
            "tests/api/test_auto_pause.py",
            "tests/api/test_chaos_restarts.py",
            "tests/api/test_egress_log.py",
            "tests/api/test_egress_proxy.py",
            "tests/api/test_gvisor.py",
            "tests/api/test_header_rules.py",
            "tests/api/test_network.py",
            "tests/api/test_paused_memory.py",
            "tests/api/test_stateful.py",
            "tests/api/test_stateful_stress.py",
            "tests/api/test_stress.py",
            "tests/api/test_templates_gvisor.py",
            "tests/api/test_templates_oci.py",
            "tests/api/test_tls.py",
            "tests/api/test_volumes.py",
            "tests/cli/test_network.py",
            "tests/cli/test_run_code_server.py",
            "tests/cli/test_snapshots.py",
            "tests/cli/test_template.py",
            "tests/envd/test_gvisor_permissions.py",
            "tests/interpreter/test_in_gvisor.py",
            "tests/node/test_node_builds.py",
            "tests/runtimes/test_gvisor_egress.py",
            "tests/runtimes/test_gvisor_egress_domains.py",
            "tests/runtimes/test_gvisor_filesystem_pause.py",
            "tests/runtimes/test_gvisor_isolation.py",
            "tests/runtimes/test_gvisor_kept_pause.py",
            "tests/runtimes/test_gvisor_restore_retry.py",
            "tests/runtimes/test_gvisor_rollback_failure.py",
            "tests/runtimes/test_gvisor_sandbox.py",
            "tests/sdk/test_run_code_server.py",
            "tests/sdk/test_server.py",
            "tests/templates/test_build.py",
        }
    ),
    ENVD_DEBUG_PORT: frozenset(
        {
            "tests/cli/test_exec.py",
            "tests/cli/test_shell.py",
            "tests/envd/test_detach.py",
            "tests/envd/test_downloads.py",
            "tests/envd/test_npm_sdk.py",
            "tests/envd/test_sdk_async.py",
            "tests/envd/test_sdk_commands.py",
            "tests/envd/test_sdk_files.py",
            "tests/envd/test_sdk_permissions.py",
            "tests/envd/test_sdk_pty.py",
            "tests/envd/test_sdk_symlinks.py",
            "tests/envd/test_sdk_watch.py",
            "tests/envd/test_security.py",
            "tests/envd/test_system.py",
            "tests/envd/test_wire.py",
            "tests/sdk/test_commands.py",
            "tests/sdk/test_files.py",
            "tests/sdk/test_streaming.py",
        }
    ),
}
# The fixtures that always reach for each resource. (A gVisor server uses the shared data dir
# unless given one of its own: gvisor_support.gvisor_server checks at its start.)
_FIXTURES: dict[str, frozenset[str]] = {
    SHARED_DATA_DIR: frozenset({"runtime", "gvisor_config"}),
    ENVD_DEBUG_PORT: frozenset({"envd_debug"}),
}


def unit_of(path: str) -> str:
    """The unit of work a test file belongs to: a shared resource's name, else the file."""
    for group, files in _FILES.items():
        if path in files:
            return group
    return path


def file_of(nodeid: str) -> str:
    """A test's file, from its node id (``PYTEST_CURRENT_TEST`` starts with one too)."""
    return nodeid.split("::", 1)[0]


def unit_of_test(nodeid: str) -> str:
    return unit_of(file_of(nodeid))


def check(items: list[pytest.Item]) -> None:
    """Refuse to run a test whose fixtures reach for a shared resource its file's unit
    does not own."""
    for item in items:
        path = file_of(item.nodeid)
        for group, fixtures in _FIXTURES.items():
            used = fixtures.intersection(getattr(item, "fixturenames", ()))
            if used and unit_of(path) != group:
                raise pytest.UsageError(
                    f"{path} uses {group} (fixture {min(used)}): list it in tests/lanes.py"
                )


def require(group: str) -> None:
    """Fail the running test unless its file is in ``group``: for code that reaches for a
    shared resource without one of the fixtures :func:`check` knows."""
    running = os.environ.get("PYTEST_CURRENT_TEST", "")
    path = file_of(running)
    if running and unit_of(path) != group:
        raise RuntimeError(f"{path} uses {group}: list it in tests/lanes.py")


class LaneScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist has no types
    """xdist's load-by-scope scheduling with :func:`unit_of` as the scope: idle workers take
    the next unit, the biggest first."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of_test(nodeid)


class LaneTimes:
    """What each worker spent on tests and which units took longest, printed after a run in
    lanes: it shows whether one unit (the shared data dir's) is the run's critical path.
    Registered in the controller; xdist hands it every worker's reports."""

    def __init__(self) -> None:
        self.by_worker: dict[str, float] = defaultdict(float)
        self.by_unit: dict[str, float] = defaultdict(float)

    def add(self, worker: str, nodeid: str, seconds: float) -> None:
        self.by_worker[worker] += seconds
        self.by_unit[unit_of_test(nodeid)] += seconds

    def lines(self, top: int = 5) -> list[str]:
        workers = ", ".join(f"{w} {s:.0f} s" for w, s in sorted(self.by_worker.items()))
        longest = sorted(self.by_unit.items(), key=lambda pair: -pair[1])[:top]
        units = ", ".join(f"{unit} {s:.0f} s" for unit, s in longest)
        return [f"lanes: tests took {workers}", f"lanes: longest units: {units}"]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        node: Any = getattr(report, "node", None)  # set by xdist on a worker's report
        if node is not None:
            self.add(node.gateway.id, report.nodeid, report.duration)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.by_worker:
            for line in self.lines():
                terminalreporter.write_line(line)
