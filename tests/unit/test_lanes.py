"""tests/lanes.py: what xdist may run side by side, and the refusals that keep the tables whole."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests import lanes

ROOT = Path(__file__).parents[2]


def _item(nodeid: str, *fixtures: str) -> Any:
    return SimpleNamespace(nodeid=nodeid, fixturenames=list(fixtures))


def test_every_listed_file_exists() -> None:
    """A renamed file would silently leave its unit and run next to the others."""
    listed = [path for files in lanes._FILES.values() for path in files]
    assert [path for path in listed if not (ROOT / path).is_file()] == []


def test_files_sharing_a_resource_are_one_unit_and_others_their_own() -> None:
    shared = sorted(lanes._FILES[lanes.SHARED_DATA_DIR])
    units = {lanes.unit_of_test(f"{path}::test_x[a::b]") for path in shared}
    assert units == {lanes.SHARED_DATA_DIR}
    unit = lanes.unit_of_test("tests/unit/test_lanes.py::TestX::test_y")
    assert unit == "tests/unit/test_lanes.py"


def test_an_unlisted_file_reaching_for_a_shared_resource_is_refused() -> None:
    lanes.check([_item("tests/unit/test_lanes.py::test_x", "tmp_path")])
    for fixture in ("envd_debug", "runtime", "gvisor_config"):
        with pytest.raises(pytest.UsageError, match=r"list it in tests/lanes\.py"):
            lanes.check([_item("tests/unit/test_lanes.py::test_x", fixture)])


def test_require_refuses_a_test_outside_the_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/unit/test_lanes.py::test_x (setup)")
    with pytest.raises(RuntimeError, match=r"list it in tests/lanes\.py"):
        lanes.require(lanes.SHARED_DATA_DIR)
    shared = min(lanes._FILES[lanes.SHARED_DATA_DIR])
    monkeypatch.setenv("PYTEST_CURRENT_TEST", f"{shared}::test_x (setup)")
    lanes.require(lanes.SHARED_DATA_DIR)


def test_lane_times_sum_by_worker_and_by_unit() -> None:
    times = lanes.LaneTimes()
    shared = sorted(lanes._FILES[lanes.SHARED_DATA_DIR])
    times.add("gw0", f"{shared[0]}::test_a", 30.0)
    times.add("gw0", f"{shared[1]}::test_b", 12.5)
    times.add("gw1", "tests/unit/test_lanes.py::test_c", 2.0)
    assert times.lines(top=1) == [
        "lanes: tests took gw0 42 s, gw1 2 s",
        f"lanes: longest units: {lanes.SHARED_DATA_DIR} 42 s",
    ]
