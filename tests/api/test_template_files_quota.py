"""The archives a team uploads for its templates' COPY steps: one archive's size limit and
the team's quota, on a real server (process runtime, SQLite). An upload over either answers
429 with ``{code, message}`` and keeps nothing; other teams are not counted; deleting a
template frees its archives."""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import Running, start_server

FILE = 20_000  # bytes in each archive's one file
ARCHIVE = 30_720  # its uncompressed tar: headers and padding to tarfile's 10 KiB records
QUOTA = 2 * ARCHIVE + 1000


def _tar(seed: int, size: int = FILE) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f"f{seed}")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes([seed % 256]) * size))
    return buf.getvalue()


def _hash(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from start_server(
        tmp_path_factory.mktemp("files-quota"),
        "sqlite",
        {
            "EMBERBOX_MAX_TEMPLATE_FILES_BYTES_PER_TEAM": str(QUOTA),
            "EMBERBOX_MAX_UPLOAD_BYTES": str(ARCHIVE + ARCHIVE // 2),
        },
    )


def _template(api: httpx.Client) -> str:
    r = api.post("/v3/templates", json={"name": f"files-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 202, r.text
    return str(r.json()["templateID"])


def _link(api: httpx.Client, tid: str, files_hash: str) -> str:
    r = api.get(f"/templates/{tid}/files/{files_hash}")
    assert r.status_code == 201 and r.json()["present"] is False, r.text
    return str(r.json()["url"])


def _present(api: httpx.Client, tid: str, files_hash: str) -> bool:
    return bool(api.get(f"/templates/{tid}/files/{files_hash}").json()["present"])


def _leftovers(running: Running) -> list[Path]:
    return [p for p in (running.server.data_dir / "template-files").rglob("*")
            if p.is_file() and not p.name.endswith(".tar")]  # fmt: skip


def test_a_teams_archives_stay_within_its_quota(quota_server: Running) -> None:
    assert len(_tar(1)) == ARCHIVE
    with quota_server.client() as api, quota_server.client(quota_server.other_key) as theirs:
        first, second = _template(api), _template(api)
        link = _link(api, first, _hash(1))
        assert httpx.put(link, content=_tar(1)).status_code == 200
        assert httpx.put(_link(api, second, _hash(2)), content=_tar(2)).status_code == 200

        # A third archive passes the team's quota, in either template: nothing is kept.
        for tid in (first, second):
            r = httpx.put(_link(api, tid, _hash(3)), content=_tar(3))
            assert r.status_code == 429 and r.json()["code"] == 429, r.text
            assert "EMBERBOX_MAX_TEMPLATE_FILES_BYTES_PER_TEAM" in r.json()["message"]
            assert not _present(api, tid, _hash(3))
        assert _leftovers(quota_server) == []

        # An archive sent again through its link replaces itself: it counts once.
        assert httpx.put(link, content=_tar(1)).status_code == 200

        # Another team's archives are its own.
        mine = _template(theirs)
        for n in (5, 6):
            assert httpx.put(_link(theirs, mine, _hash(n)), content=_tar(n)).status_code == 200

        # Deleting a template frees its archives.
        assert api.delete(f"/templates/{second}").status_code == 204
        assert httpx.put(_link(api, first, _hash(3)), content=_tar(3)).status_code == 200
        assert _present(api, first, _hash(3))


def test_one_archive_over_its_size_limit_is_refused_as_it_inflates(
    quota_server: Running,
) -> None:
    """Counted as it unpacks: a small gzip of zeros over the limit is refused."""
    import gzip

    with quota_server.client() as api:
        tid = _template(api)
        bomb = gzip.compress(_tar(7, size=2 * ARCHIVE))
        assert len(bomb) < ARCHIVE // 4
        r = httpx.put(_link(api, tid, _hash(7)), content=bomb)
        assert r.status_code == 429 and "larger than" in r.json()["message"], r.text
        assert not _present(api, tid, _hash(7))
        assert _leftovers(quota_server) == []
        assert api.delete(f"/templates/{tid}").status_code == 204


async def test_uploads_at_once_cannot_pass_the_quota_together(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Four archives sent at once, slowly, where two fit: two are kept, two refused."""
    with contextlib.contextmanager(start_server)(
        tmp_path_factory.mktemp("files-quota-race"),
        "sqlite",
        {"EMBERBOX_MAX_TEMPLATE_FILES_BYTES_PER_TEAM": str(QUOTA)},
    ) as running:
        await _race(running)


async def _slowly(data: bytes) -> AsyncIterator[bytes]:
    for at in range(0, len(data), 4096):
        yield data[at : at + 4096]
        await asyncio.sleep(0.01)


async def _send(client: httpx.AsyncClient, url: str, data: bytes) -> int:
    try:
        return (await client.put(url, content=_slowly(data))).status_code
    except httpx.TransportError:  # refused mid-body: the server closed meanwhile
        return 429


async def _race(running: Running) -> None:
    with running.client() as api:
        tids = [_template(api) for _ in range(4)]
        links = [_link(api, tid, _hash(10 + i)) for i, tid in enumerate(tids)]
    async with httpx.AsyncClient(timeout=30) as client:
        codes = await asyncio.gather(
            *(_send(client, url, _tar(10 + i)) for i, url in enumerate(links))
        )
    with running.client() as api:
        kept = [_present(api, tid, _hash(10 + i)) for i, tid in enumerate(tids)]
    assert sum(kept) == 2 and sorted(codes) == [200, 200, 429, 429], (codes, kept)
    assert [c == 200 for c in codes] == kept
    assert _leftovers(running) == []


def test_an_upload_for_a_template_deleted_since_is_not_kept(quota_server: Running) -> None:
    with quota_server.client() as api:
        tid = _template(api)
        link = _link(api, tid, _hash(20))
        assert api.delete(f"/templates/{tid}").status_code == 204
        r = httpx.put(link, content=_tar(20))
        assert r.status_code == 404 and r.json()["code"] == 404, r.text
    assert not (quota_server.server.data_dir / "template-files" / tid).exists()


async def test_an_upload_a_crash_cut_off_is_removed_at_the_next_start(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The server SIGKILLed while an archive arrives: its next start removes the half-written
    file (which no quota counts and nothing else would remove), and the link still works."""
    with contextlib.contextmanager(start_server)(
        tmp_path_factory.mktemp("files-crash"), "sqlite"
    ) as running:
        with running.client() as api:
            tid = _template(api)
            link = _link(api, tid, _hash(30))
        async with httpx.AsyncClient(timeout=30) as client:
            upload = asyncio.create_task(client.put(link, content=_slowly(_tar(30) * 4)))
            files = running.server.data_dir / "template-files" / tid
            for _ in range(500):
                if list(files.glob(".*.part")):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the upload never began")
            running.server.sigkill()
            with contextlib.suppress(httpx.TransportError):
                await upload
        assert _leftovers(running) != []
        running.server.start()
        assert _leftovers(running) == []
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.put(link, content=_tar(30))).status_code == 200
        with running.client() as api:
            assert _present(api, tid, _hash(30))
