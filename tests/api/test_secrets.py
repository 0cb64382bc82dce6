"""E2B's ``/secrets`` with the official SDK (sync and async) and a plain client: values are
write-only, names canonical, versions count, teams are apart, and no value is stored in clear."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
from e2b import AsyncSecret, Secret, SecretException

from tests.api.conftest import Running


def test_secret_lifecycle_with_the_official_sdk(sdk_env: Running) -> None:
    info = Secret.create("Lifecycle-Key", "sk-first-value", metadata={"env": "prod"})
    try:
        assert info.name == "lifecycle-key"  # lower-cased, as E2B stores names
        assert info.secret_id.startswith("sec_")
        assert (info.version, info.metadata) == (1, {"env": "prod"})
        assert Secret.get_info("LIFECYCLE-KEY").secret_id == info.secret_id
        assert Secret.get_info(info.secret_id).name == "lifecycle-key"

        updated = Secret.update("lifecycle-key", "sk-second-value")
        assert (updated.version, updated.metadata) == (2, {"env": "prod"})  # metadata kept
        updated = Secret.update(info.secret_id, "sk-third-value", metadata={"env": "dev"})
        assert (updated.version, updated.metadata) == (3, {"env": "dev"})
        assert updated.updated_at >= info.updated_at

        with pytest.raises(SecretException):  # the name is taken (409)
            Secret.create("lifecycle-key", "other")
        assert Secret.exists("lifecycle-key")
    finally:
        assert Secret.destroy(info.secret_id)
    assert not Secret.exists("lifecycle-key")
    assert not Secret.destroy("lifecycle-key")


def test_listing_pages_through_every_secret(sdk_env: Running) -> None:
    made = [Secret.create(f"page-{i}", f"value-{i}").secret_id for i in range(5)]
    try:
        paginator = Secret.list(limit=2)
        seen: list[str] = []
        pages = 0
        while paginator.has_next:
            seen += [s.name for s in paginator.next_items()]
            pages += 1
        paged = [n for n in seen if n.startswith("page-")]
        assert paged == [f"page-{i}" for i in range(5)]
        assert pages >= 3
    finally:
        for secret_id in made:
            Secret.destroy(secret_id)


async def test_async_sdk(sdk_env: Running) -> None:
    info = await AsyncSecret.create("async-key", "value")
    try:
        assert (await AsyncSecret.get_info("async-key")).version == 1
        assert (await AsyncSecret.update("async-key", "v2")).version == 2
        names = [s.name for s in await AsyncSecret.list(limit=100).next_items()]
        assert "async-key" in names
    finally:
        assert await AsyncSecret.destroy(info.secret_id)


def test_no_read_returns_the_value_and_the_database_holds_none(running: Running) -> None:
    value = "sk-never-in-clear-8d1f"
    with running.client() as api:
        created = api.post("/secrets", json={"name": "clear-check", "value": value})
        assert created.status_code == 201, created.text
        sid = created.json()["secretID"]
        try:
            api.post(f"/secrets/{sid}", json={"value": value + "-2"}).raise_for_status()
            for r in (api.get(f"/secrets/{sid}"), api.get("/secrets")):
                assert r.status_code == 200
                assert value not in r.text and "value" not in r.text
            database = running.server.data_dir / "emberbox.db"
            if not running.server.database_url:
                with sqlite3.connect(database) as db:
                    sealed = db.execute("select sealed from secret_versions").fetchall()
                    kept = db.execute(
                        "select version from secret_versions where secret_id = ?", (sid,)
                    ).fetchall()
                assert kept == [(2,)]  # a rotated-away value is not kept
                assert all(value.encode() not in s for (s,) in sealed)
                assert value.encode() not in database.read_bytes()
        finally:
            api.delete(f"/secrets/{sid}")


def test_other_team_sees_nothing(running: Running) -> None:
    with running.client() as api, running.client(running.other_key) as other:
        sid = api.post("/secrets", json={"name": "team-a-only", "value": "x"}).json()["secretID"]
        try:
            for ref in (sid, "team-a-only"):
                assert other.get(f"/secrets/{ref}").status_code == 404
                assert other.post(f"/secrets/{ref}", json={"value": "y"}).status_code == 404
                assert other.delete(f"/secrets/{ref}").status_code == 404
            assert "team-a-only" not in other.get("/secrets").text
            # The name is the other team's to take too.
            theirs = other.post("/secrets", json={"name": "team-a-only", "value": "z"})
            assert theirs.status_code == 201
            other.delete(f"/secrets/{theirs.json()['secretID']}")
            assert api.get(f"/secrets/{sid}").json()["currentVersion"] == 1
        finally:
            api.delete(f"/secrets/{sid}")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "sec_reserved", "value": "x"}, "may not start with 'sec_'"),
        ({"name": "bad{name}", "value": "x"}, "secret name"),
        ({"name": "", "value": "x"}, "secret name"),
        ({"name": "line", "value": "a\r\nX-Injected: 1"}, "control characters"),
        ({"name": "space", "value": "trailing "}, "spaces at either end"),
        ({"name": "big", "value": "x" * 8193}, "at most"),
        ({"name": "meta", "value": "x", "metadata": {f"k{i}": "v" for i in range(33)}}, "32"),
    ],
)
def test_bad_secrets_are_400_and_store_nothing(
    running: Running, body: dict[str, object], words: str
) -> None:
    with running.client() as api:
        before = api.get("/secrets").json()
        r = api.post("/secrets", json=body)
        assert r.status_code == 400, r.text
        assert words in r.json()["message"]
        assert api.get("/secrets").json() == before


def test_bad_page_token_is_400(running: Running) -> None:
    with httpx.Client(base_url=running.server.api_url, headers={"X-API-KEY": running.key}) as c:
        assert c.get("/secrets", params={"limit": 0}).status_code == 400
        assert c.get("/secrets", params={"nextToken": "%%%"}).status_code == 400


async def test_our_sdk_sync_and_async(sdk_env: Running) -> None:
    import emberbox

    info = emberbox.Secret.create("Ours-Key", "v1", metadata={"team": "a"})
    try:
        assert (info.name, info.version) == ("ours-key", 1)
        assert emberbox.Secret.update("ours-key", "v2").version == 2
        assert emberbox.Secret.get_info(info.secret_id).metadata == {"team": "a"}
        assert "ours-key" in [s.name for s in emberbox.Secret.list(limit=1)]  # every page
        assert emberbox.Secret.fill("ours-key") == "${e2b.secrets.ours-key}"
        with pytest.raises(emberbox.NotFoundException):
            emberbox.Secret.get_info("no-such-secret")
        assert (await emberbox.AsyncSecret.update(info.secret_id, "v3")).version == 3
        names = [s.name async for s in emberbox.AsyncSecret.list()]
        assert "ours-key" in names
    finally:
        assert emberbox.Secret.destroy(info.secret_id)
    assert not emberbox.Secret.exists("ours-key")
    assert not await emberbox.AsyncSecret.destroy("ours-key")
