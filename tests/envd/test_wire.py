"""Connect framing as the protocol notes describe it, checked byte by byte."""

from __future__ import annotations

import base64
import time

from tests.conftest import EnvdProcess
from tests.envd.wire import envelope, frames, run, stream_call, unary_call


def test_stream_frames_start_data_end_then_end_of_stream(envd_debug: EnvdProcess) -> None:
    out = run(envd_debug.url, "echo hi; exit 4")
    assert out[0] == (0, {"event": {"start": {"pid": out[0][1]["event"]["start"]["pid"]}}})
    data = b"".join(
        base64.b64decode(m["event"]["data"].get("stdout", ""))
        for f, m in out
        if f == 0 and "data" in m["event"]
    )
    assert data == b"hi\n"
    assert out[-2] == (
        0,
        {
            "event": {
                "end": {
                    "exitCode": 4,
                    "exited": True,
                    "status": "exit status 4",
                    "error": "exit status 4",
                }
            }
        },
    )
    assert out[-1] == (2, {})


def test_killed_process_reports_signal(envd_debug: EnvdProcess) -> None:
    end = run(envd_debug.url, "kill -9 $$")[-2][1]["event"]["end"]
    assert end["exitCode"] == -1
    assert end["status"] == "signal: killed"
    assert "exited" not in end  # false is the proto3 default and is omitted


def test_errors_before_start_travel_in_the_end_of_stream_frame(envd_debug: EnvdProcess) -> None:
    response, out = stream_call(
        envd_debug.url,
        "process.Process/Start",
        {"process": {"cmd": "/bin/true", "cwd": "/no/such/dir"}},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/connect+json"
    assert out == [
        (2, {"error": {"code": "invalid_argument", "message": "cwd '/no/such/dir' does not exist"}})
    ]


def test_unknown_user_is_unauthenticated(envd_debug: EnvdProcess) -> None:
    basic = "Basic " + base64.b64encode(b"nobody-here:").decode()
    out = run(envd_debug.url, "true", {"Authorization": basic})
    assert out[-1][1]["error"]["code"] == "unauthenticated"


def test_keepalives_fill_silence(envd_debug: EnvdProcess) -> None:
    out = run(envd_debug.url, "sleep 2.3; echo late", {"Keepalive-Ping-Interval": "1"})
    keepalives = [m for f, m in out if f == 0 and "keepalive" in m["event"]]
    assert len(keepalives) >= 2


def test_deadline_ends_stream_and_process(envd_debug: EnvdProcess) -> None:
    marker = f"/tmp/deadline-{time.monotonic_ns()}"
    started = time.monotonic()
    # /bin/sh, not a login shell: the root profile of the host running the tests is not ours
    # (a login shell that failed early once ended this stream cleanly before its deadline).
    _, out = stream_call(
        envd_debug.url,
        "process.Process/Start",
        {"process": {"cmd": "/bin/sh", "args": ["-c", f"sleep 2; touch {marker}"]}},
        {"Connect-Timeout-Ms": "300"},
    )
    assert time.monotonic() - started < 1.5
    deadline = (2, {"error": {"code": "deadline_exceeded", "message": "deadline exceeded"}})
    assert out[-1] == deadline, out
    time.sleep(2.2)
    import os

    assert not os.path.exists(marker)


def test_unary_json_errors(envd_debug: EnvdProcess) -> None:
    missing = unary_call(envd_debug.url, "filesystem.Filesystem/Stat", {"path": "/no/such"})
    assert missing.status_code == 404
    assert missing.json() == {"code": "not_found", "message": "path '/no/such' does not exist"}

    broken = unary_call(envd_debug.url, "filesystem.Filesystem/Stat", b"{not json")
    assert broken.status_code == 400
    assert broken.json()["code"] == "invalid_argument"

    unknown = unary_call(envd_debug.url, "filesystem.Filesystem/Format", {})
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "unimplemented"

    wrong_type = unary_call(
        envd_debug.url,
        "filesystem.Filesystem/Stat",
        b"\x0a\x01/",
        {"Content-Type": "application/proto"},
    )
    assert wrong_type.status_code == 415

    huge = unary_call(
        envd_debug.url, "filesystem.Filesystem/Stat", {"path": "x" * (5 * 1024 * 1024)}
    )
    assert huge.status_code == 429
    assert huge.json()["code"] == "resource_exhausted"


def test_malformed_stream_bodies(envd_debug: EnvdProcess) -> None:
    import httpx

    for body in (b"\x00\x00\x00", envelope(b"{oops"), envelope({}) + envelope({})):
        response = httpx.post(
            f"{envd_debug.url}/process.Process/Start",
            content=body,
            headers={"Content-Type": "application/connect+json"},
        )
        assert response.status_code == 200
        ((flags, end),) = frames(response.content)
        assert flags == 2
        assert end["error"]["code"] == "invalid_argument"


def test_envd_keeps_serving_after_bad_input(envd_debug: EnvdProcess) -> None:
    import httpx

    assert httpx.get(f"{envd_debug.url}/health").status_code == 204
    assert (
        run(envd_debug.url, "echo still-alive")[-2][1]["event"]["end"]["status"] == "exit status 0"
    )


def test_stream_with_unary_content_type_is_refused(envd_debug: EnvdProcess) -> None:
    import httpx

    response = httpx.post(
        f"{envd_debug.url}/process.Process/Start",
        content=envelope({"process": {"cmd": "/bin/true"}}),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unimplemented"
