"""Symlink entries as E2B's envd describes them, and as each SDK reads them.

On the wire (what the JS SDK 2.51 and Python SDKs before ``is_symlink`` show): ``type`` and
``mode`` are the target's, ``symlinkTarget`` the resolved target. Python SDK 2.63 reads the
``isSymlink`` marker and shows ``FileType.SYMLINK``. Broken and looping links never break a
stat or a listing, and stay visible in it (typed SYMLINK: both SDKs drop unknown types).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from e2b import FileNotFoundException, FileType

from tests.conftest import EnvdProcess
from tests.envd.wire import unary_call

AS_USER = {"Authorization": "Basic " + base64.b64encode(b"user:").decode()}


def _stat(envd: EnvdProcess, path: str) -> dict[str, Any]:
    response = unary_call(envd.url, "filesystem.Filesystem/Stat", {"path": path}, AS_USER)
    assert response.status_code == 200, response.text
    entry: dict[str, Any] = response.json()["entry"]
    return entry


def test_links_report_their_targets_type(
    sandbox: Any, envd_debug: EnvdProcess, user_dir: Path
) -> None:
    (user_dir / "file.txt").write_text("12345")
    (user_dir / "file.txt").chmod(0o640)
    (user_dir / "dir").mkdir()
    (user_dir / "to-file").symlink_to("file.txt")  # relative: resolved against the link
    (user_dir / "to-dir").symlink_to(user_dir / "dir")

    to_file = _stat(envd_debug, f"{user_dir}/to-file")
    assert to_file["type"] == "FILE_TYPE_FILE"
    assert to_file["isSymlink"] is True
    assert to_file["symlinkTarget"] == f"{user_dir}/file.txt"
    assert to_file["mode"] == 0o640  # the target's permission bits
    assert to_file["permissions"].startswith("l")  # the link's own mode string
    to_dir = _stat(envd_debug, f"{user_dir}/to-dir")
    assert (to_dir["type"], to_dir["symlinkTarget"]) == ("FILE_TYPE_DIRECTORY", f"{user_dir}/dir")
    plain = _stat(envd_debug, f"{user_dir}/file.txt")
    assert "symlinkTarget" not in plain and "isSymlink" not in plain

    info = sandbox.files.get_info(f"{user_dir}/to-file")
    assert (info.type, info.symlink_target) == (FileType.SYMLINK, f"{user_dir}/file.txt")
    assert sandbox.files.get_info(f"{user_dir}/file.txt").symlink_target is None
    listed = {e.name: e for e in sandbox.files.list(str(user_dir))}
    assert listed["to-dir"].type == FileType.SYMLINK
    assert listed["to-dir"].symlink_target == f"{user_dir}/dir"
    assert listed["dir"].type == FileType.DIR
    assert sandbox.files.read(f"{user_dir}/to-file", user="root") == "12345"


def test_broken_and_looping_links_never_break_stat_or_list(
    sandbox: Any, envd_debug: EnvdProcess, user_dir: Path
) -> None:
    (user_dir / "dangling").symlink_to(user_dir / "gone")
    (user_dir / "loop-a").symlink_to(user_dir / "loop-b")
    (user_dir / "loop-b").symlink_to(user_dir / "loop-a")
    (user_dir / "sub").mkdir()
    (user_dir / "sub" / "dangling-too").symlink_to("nowhere")

    dangling = _stat(envd_debug, f"{user_dir}/dangling")
    assert (dangling["type"], dangling["mode"]) == ("FILE_TYPE_SYMLINK", 0o777)
    assert dangling["isSymlink"] is True
    assert dangling["symlinkTarget"] == f"{user_dir}/gone"
    looping = _stat(envd_debug, f"{user_dir}/loop-a")
    assert (looping["type"], looping["isSymlink"]) == ("FILE_TYPE_SYMLINK", True)

    info = sandbox.files.get_info(f"{user_dir}/dangling")
    assert (info.type, info.symlink_target) == (FileType.SYMLINK, f"{user_dir}/gone")
    names = {e.path for e in sandbox.files.list(str(user_dir), depth=2)}
    assert {f"{user_dir}/{n}" for n in ("dangling", "loop-a", "loop-b", "sub")} <= names
    assert f"{user_dir}/sub/dangling-too" in names
    assert sandbox.files.exists(f"{user_dir}/dangling")  # the link exists; its target does not
    try:
        sandbox.files.read(f"{user_dir}/dangling")
    except FileNotFoundException:
        pass
    else:
        raise AssertionError("reading through a dangling link must be a not-found error")


def test_a_link_does_not_reveal_what_the_user_cannot_see(
    envd_debug: EnvdProcess, user_dir: Path
) -> None:
    """Describing a link follows it with the user's rights: no target type for a hidden file."""
    vault = user_dir / "vault"
    vault.mkdir(mode=0o700)  # root's, since the test runs as root
    (vault / "secret.txt").write_text("s")
    (user_dir / "to-secret").symlink_to(vault / "secret.txt")
    as_user = _stat(envd_debug, f"{user_dir}/to-secret")
    assert as_user["type"] == "FILE_TYPE_SYMLINK"
    as_root = unary_call(
        envd_debug.url,
        "filesystem.Filesystem/Stat",
        {"path": f"{user_dir}/to-secret"},
        {"Authorization": "Basic " + base64.b64encode(b"root:").decode()},
    ).json()["entry"]
    assert as_root["type"] == "FILE_TYPE_FILE"
