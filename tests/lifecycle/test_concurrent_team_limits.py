"""Requests at the same moment against a team's names and limits, on the real database: two
builds of a new template name both get it (the second was a 500, the unique name raised in
its transaction), parallel secret creates stop at the team's limit (each counted below it,
all were stored), and a template asking for more disk than a sandbox may have is refused
before anything is made (it was stored, and every create from it failed later)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from emberbox.server.builds.runner import BuildRunner
from emberbox.server.builds.service import TemplateService
from emberbox.server.builds.uploads import Uploads
from emberbox.server.config import Limits
from emberbox.server.db.models import Secret
from emberbox.server.db.templates import TeamTemplate
from emberbox.server.lifecycle.errors import Invalid, QuotaExceeded
from emberbox.server.secrets.cipher import SecretCipher
from emberbox.server.secrets.service import SecretService

from .conftest import Plane


def _templates(plane: Plane, tmp_path: Path, limits: Limits) -> TemplateService:
    sessions = plane.service.sessions
    return TemplateService(
        sessions, Uploads.open(tmp_path, 2**20), BuildRunner(sessions, plane.service.node),
        plane.service.templates.resolve, limits,
    )  # fmt: skip


async def test_two_builds_of_a_new_name_at_once_both_get_the_template(
    plane: Plane, tmp_path: Path
) -> None:
    templates = _templates(plane, tmp_path, Limits())
    first, second = await asyncio.gather(
        *(templates.request_build(plane.who, "racing-app") for _ in range(2))
    )
    assert first.template.id == second.template.id
    assert first.build.id != second.build.id
    async with plane.service.sessions() as s:
        names = (await s.execute(select(TeamTemplate.name))).scalars().all()
    assert names.count("racing-app") == 1


async def test_a_template_asking_for_more_disk_than_a_sandbox_may_have_is_refused(
    plane: Plane, tmp_path: Path
) -> None:
    templates = _templates(plane, tmp_path, Limits(max_disk_mb=4096))
    with pytest.raises(Invalid, match="minFreeDiskMb must be at most 3584"):
        await templates.request_build(plane.who, "huge-disk", min_free_disk_mb=1_000_000_000)
    fits = await templates.request_build(plane.who, "fits", min_free_disk_mb=3584)
    assert fits.build.disk_mb == 4096
    async with plane.service.sessions() as s:
        names = (await s.execute(select(TeamTemplate.name))).scalars().all()
    assert "huge-disk" not in names


async def test_parallel_secret_creates_stop_at_the_teams_limit(plane: Plane) -> None:
    secrets = SecretService(plane.service.sessions, SecretCipher(os.urandom(32)), max_secrets=3)
    answers = await asyncio.gather(
        *(secrets.create(plane.who, f"key-{n}", "value", {}) for n in range(8)),
        return_exceptions=True,
    )
    made = [a for a in answers if isinstance(a, Secret)]
    refused = [a for a in answers if isinstance(a, QuotaExceeded)]
    assert (len(made), len(refused)) == (3, 5), answers
    async with plane.service.sessions() as s:
        stored = await s.scalar(
            select(func.count()).select_from(Secret).where(Secret.team_id == plane.who.team_id)
        )
    assert stored == 3
