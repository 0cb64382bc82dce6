"""Access tokens, signed URLs, traversal and limits: refused requests touch nothing."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from emberbox.signed_urls import sign
from tests.conftest import EnvdProcess
from tests.envd.wire import run, unary_call

TOKEN = "secret-token-123"
UNAUTHORIZED = {
    "code": 401,
    "message": (
        "unauthorized access, please provide a valid access token or method signing if supported"
    ),
}


def test_token_guards_rpcs_and_http(envd_factory: Callable[..., EnvdProcess], tmp_path) -> None:
    envd = envd_factory("--access-token", TOKEN)
    marker = tmp_path / "should-not-exist"
    for headers in ({}, {"X-Access-Token": "wrong"}):
        out = run(envd.url, f"touch {marker}", headers)
        assert out == []  # 401 before any stream starts
        response = unary_call(envd.url, "filesystem.Filesystem/Stat", {"path": "/"}, headers)
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
        assert httpx.get(f"{envd.url}/envs", headers=headers).status_code == 401
        assert (
            httpx.get(
                f"{envd.url}/files", params={"path": "/etc/hostname"}, headers=headers
            ).status_code
            == 401
        )
    assert not marker.exists()
    assert httpx.get(f"{envd.url}/health").status_code == 204
    ok = run(envd.url, "echo ok", {"X-Access-Token": TOKEN})
    assert ok[-1] == (2, {})


def test_init_cannot_take_over_a_token(envd_factory: Callable[..., EnvdProcess]) -> None:
    envd = envd_factory("--access-token", TOKEN)
    hijack = httpx.post(f"{envd.url}/init", json={"accessToken": "mine"})
    assert hijack.status_code == 401
    rotate = httpx.post(
        f"{envd.url}/init", json={"accessToken": "next"}, headers={"X-Access-Token": TOKEN}
    )
    assert rotate.status_code == 204
    assert rotate.headers["X-Envd-Version"] == "0.6.13"
    assert httpx.get(f"{envd.url}/envs", headers={"X-Access-Token": TOKEN}).status_code == 401
    assert httpx.get(f"{envd.url}/envs", headers={"X-Access-Token": "next"}).status_code == 200


def test_signed_urls(envd_factory: Callable[..., EnvdProcess], user_dir: Path) -> None:
    envd = envd_factory("--access-token", TOKEN)
    target = user_dir / "signed.txt"
    target.write_text("signed content")
    shutil.chown(target, user_dir.owner(), user_dir.group())
    path = str(target)
    good = sign(path, "read", "", TOKEN, None)
    response = httpx.get(f"{envd.url}/files", params={"path": path, "signature": good})
    assert response.status_code == 200
    assert response.text == "signed content"

    # a signature binds the exact path: no traversal to another file with it
    other = path.replace("signed.txt", "../../../etc/hostname")
    stolen = httpx.get(f"{envd.url}/files", params={"path": other, "signature": good})
    assert stolen.status_code == 401
    assert stolen.json() == {"code": 401, "message": "invalid signature"}

    # read signatures do not allow writes
    write = httpx.post(
        f"{envd.url}/files",
        params={"path": path, "signature": good},
        content=b"overwritten",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert write.status_code == 401
    assert target.read_text() == "signed content"

    past = int(time.time()) - 10
    expired = sign(path, "read", "", TOKEN, past)
    response = httpx.get(
        f"{envd.url}/files",
        params={"path": path, "signature": expired, "signature_expiration": str(past)},
    )
    assert response.status_code == 401
    assert response.json() == {"code": 401, "message": "signature is already expired"}

    future = int(time.time()) + 60
    upload = sign(path, "write", "", TOKEN, future)
    response = httpx.post(
        f"{envd.url}/files",
        params={"path": path, "signature": upload, "signature_expiration": str(future)},
        content=b"new",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200
    assert target.read_text() == "new"


def test_path_errors(envd_debug: EnvdProcess) -> None:
    url = envd_debug.url
    missing = httpx.get(f"{url}/files", params={"path": "/no/such/file"})
    assert missing.status_code == 404
    assert missing.json() == {"code": 404, "message": "path '/no/such/file' does not exist"}
    directory = httpx.get(f"{url}/files", params={"path": "/tmp"})
    assert directory.status_code == 400
    assert directory.json()["message"] == "path '/tmp' is a directory"
    nul = unary_call(url, "filesystem.Filesystem/Stat", {"path": "/tmp/a\u0000b"})
    assert nul.status_code == 400
    unknown_user = httpx.get(f"{url}/files", params={"path": "/etc/hostname", "username": "ghost"})
    assert unknown_user.status_code == 401
    # '..' segments are resolved lexically, never passed raw to the OS
    dotted = unary_call(url, "filesystem.Filesystem/Stat", {"path": "/tmp/../etc/./hostname"})
    assert dotted.json()["entry"]["path"] == "/etc/hostname"


def test_upload_limit_leaves_nothing(
    envd_factory: Callable[..., EnvdProcess], user_dir: Path
) -> None:
    envd = envd_factory("--max-upload-mb", "1")
    target = user_dir / "too-big.bin"

    def chunks():
        for _ in range(4):
            yield os.urandom(512 * 1024)

    response = httpx.post(
        f"{envd.url}/files",
        params={"path": str(target)},
        content=chunks(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == 413
    assert not target.exists()
    multipart = httpx.post(
        f"{envd.url}/files",
        files={"file": (str(target), os.urandom(2 * 1024 * 1024))},
    )
    assert multipart.status_code == 413
    assert not target.exists()


def test_bad_uploads(envd_debug: EnvdProcess, user_dir: Path) -> None:
    url = envd_debug.url
    no_path = httpx.post(
        f"{url}/files", content=b"x", headers={"Content-Type": "application/octet-stream"}
    )
    assert no_path.status_code == 400
    dup = httpx.post(
        f"{url}/files",
        files=[
            ("file", (str(user_dir / "d.txt"), b"1")),
            ("file", (str(user_dir / "d.txt"), b"2")),
        ],
    )
    assert dup.status_code == 400
    bad_gzip = httpx.post(
        f"{url}/files",
        params={"path": str(user_dir / "g.bin")},
        content=b"not gzip at all",
        headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )
    assert bad_gzip.status_code == 400
    assert not (user_dir / "g.bin").exists()
    bad_meta = httpx.post(
        f"{url}/files",
        params={"path": str(user_dir / "m.txt")},
        content=b"x",
        headers={"Content-Type": "application/octet-stream", "X-Metadata-" + "k" * 300: "v"},
    )
    assert bad_meta.status_code == 400
