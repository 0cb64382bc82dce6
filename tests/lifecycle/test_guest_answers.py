"""The control plane reads what a sandbox's envd answers as the guest's to choose (a user with
root in the sandbox can put anything on envd's port): within a time and a size."""

from __future__ import annotations

import pytest

from emberbox.server.lifecycle.errors import Unreachable
from emberbox.server.lifecycle.service import CreateRequest

from .conftest import Plane


async def test_a_guest_answering_its_journal_without_end_is_cut_off(plane: Plane) -> None:
    """What answers on envd's port is the guest's to choose: an endless answer to the logs
    request is refused once too big, not read into the control plane's memory forever."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    assert (await plane.service.envd_journal(plane.who, row.id))[1] == []
    plane.runtime.envds[row.id].endless_logs = True
    with pytest.raises(Unreachable, match="too much"):
        await plane.service.envd_journal(plane.who, row.id)
