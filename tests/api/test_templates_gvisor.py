"""Templates from code through the API, with the official e2b SDK (sync and async) against a
real server whose builds and sandboxes are real gVisor sandboxes.

Every builder step kind is built and then checked from inside a sandbox of the result; a second
build reuses every layer; a failing step fails the build with its output and leaves nothing
behind; names, tags and aliases are the team's own.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AsyncTemplate,
    BuildException,
    LogEntry,
    Sandbox,
    Template,
    wait_for_port,
)
from e2b.template.main import TemplateFinal

from emberbox.runtimes.gvisor import GVisorConfig
from emberbox.server.testing import ServerProcess
from emberbox.templates.store import TemplateStore
from tests.api.npm import JS, needs_node, run_script
from tests.api.template_support import make_context
from tests.runtimes.gvisor_support import DATA_DIR, inventory

pytestmark = pytest.mark.timeout(900)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_context(tmp_path_factory.mktemp("template-context"))


def _every_step(context: Path, run_id: str) -> TemplateFinal:
    """One template using every kind of step the SDK's builder emits; ``run_id`` (an ENV step
    first) changes every layer key, so its first build starts from scratch."""
    return (
        Template(file_context_path=str(context))
        .from_base_image()
        .set_envs({"TPL_MODE": "every-step", "PIP_BREAK_SYSTEM_PACKAGES": "1", "RUN_ID": run_id})
        .run_cmd("echo ran-as-$(id -un) > /home/user/who")
        .copy("hello.txt", "/home/user/hello.txt")
        .copy("app", "/opt/app", user="root", mode=0o755)
        .copy("notes-*.md", "/home/user/notes/")
        .copy_items(
            [{"src": "wheels", "dest": "/opt/wheels"}, {"src": "apt/repo", "dest": "/opt/repo"}]
        )
        .set_user("root")
        .run_cmd(
            "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* && "
            "echo 'deb [trusted=yes] file:/opt/repo ./' > /etc/apt/sources.list"
        )
        .apt_install("ember-hello")
        .pip_install("/opt/wheels/emberdemo-0.1-py3-none-any.whl")
        .run_cmd(
            "printf '#!/bin/sh\\necho \"npm $* as $(id -un)\" > /opt/npm-called\\n' "
            "> /usr/local/bin/npm && chmod 755 /usr/local/bin/npm"
        )
        .npm_install("left-pad", g=True)
        .run_cmd("git init -q /opt/src && git -C /opt/src -c user.email=t@t -c user.name=t "
                 "commit -q --allow-empty -m first")
        .git_clone("/opt/src", "/opt/clone")
        .make_dir("/opt/made", mode=0o700)
        .make_symlink("/opt/app/main.sh", "/usr/local/bin/app-main")
        .run_cmd("echo gone > /opt/gone && echo moved > /opt/before")
        .remove("/opt/gone")
        .rename("/opt/before", "/opt/after")
        .set_user("user")
        .set_workdir("/home/user/work")
        .set_start_cmd("python3 -m http.server 8080", wait_for_port(8080))
    )  # fmt: skip


CHECKS = {
    "echo $TPL_MODE": "every-step",
    "cat /home/user/who": "ran-as-user",
    "cat /home/user/hello.txt": "hello from the context",
    "stat -c '%U %a' /home/user/hello.txt": "user 644",
    "stat -c '%U %a' /opt/app/main.sh /opt/app/lib/util.txt": "root 755\nroot 755",
    "readlink /opt/app/link": "main.sh",
    "ls /home/user/notes": "notes-a.md\nnotes-b.md",
    "ember-hello": "hello from ember-hello",
    "python3 -c 'import emberdemo; print(emberdemo.VALUE)'": "emberdemo-0.1",
    "cat /opt/npm-called": "npm install -g left-pad as root",
    "git -c safe.directory='*' -C /opt/clone log --format=%s": "first",
    "stat -c '%a' /opt/made": "700",
    "app-main": "main",
    "ls /opt/gone 2>&1 >/dev/null | wc -l; cat /opt/after": "1\nmoved",
    "whoami; pwd": "user\n/home/user/work",
    "curl -s -o /dev/null -w '%{http_code}' localhost:8080/": "200",
}


def _check(sandbox: Sandbox) -> None:
    for command, expected in CHECKS.items():
        result = sandbox.commands.run(command)
        assert result.stdout.strip() == expected, (command, result.stdout, result.stderr)


def test_every_step_kind_then_cache(gvisor_key: str, context: Path) -> None:
    name = _name("every")
    template = _every_step(context, uuid.uuid4().hex)
    logs: list[LogEntry] = []
    started = time.monotonic()
    info = Template.build(template, name, on_build_logs=logs.append)
    first_s = time.monotonic() - started
    messages = [e.message for e in logs]
    assert any("[2/" in m and "RUN echo ran-as" in m for m in messages), messages
    assert any("Build finished" in m for m in messages)
    assert Template.exists(name)

    with Sandbox.create(name, timeout=120) as sandbox:
        _check(sandbox)
        assert sandbox.get_info().name == name

    cached: list[LogEntry] = []
    started = time.monotonic()
    again = Template.build(template, name, on_build_logs=cached.append)
    second_s = time.monotonic() - started
    assert again.build_id != info.build_id and again.template_id == info.template_id
    step_lines = [e.message for e in cached if e.message.startswith("[")]
    layered = [m for m in step_lines if not any(k in m for k in ("] ENV ", "] USER "))]
    assert layered and all(m.endswith("(cached)") for m in layered), step_lines
    assert any("Skipping upload" in e.message for e in cached)
    assert second_s <= 0.1 * first_s, (first_s, second_s)


def test_skip_cache_rebuilds_from_that_step(gvisor_key: str) -> None:
    name = _name("skip")
    template = (
        Template()
        .from_base_image()
        .run_cmd(f"echo {uuid.uuid4().hex} > /home/user/kept")
        .skip_cache()
        .run_cmd("date +%s%N > /home/user/fresh")
        .run_cmd("cat /home/user/fresh > /home/user/after")
    )
    Template.build(template, name)
    logs: list[LogEntry] = []
    Template.build(template, name, on_build_logs=logs.append)
    steps = [e.message for e in logs if e.message.startswith("[")]
    assert steps[0].endswith("(cached)"), steps
    assert not any(m.endswith("(cached)") for m in steps[1:]), steps
    logs.clear()
    Template.build(template, name, skip_cache=True, on_build_logs=logs.append)
    assert not any(e.message.endswith("(cached)") for e in logs if e.message.startswith("["))


def test_failed_step_leaves_nothing(gvisor_server: ServerProcess, gvisor_key: str) -> None:
    name = _name("fails")
    config = GVisorConfig(data_dir=DATA_DIR)
    before = asyncio.run(inventory(config))
    scratch_before = set(os.listdir(DATA_DIR / "tmp")) if (DATA_DIR / "tmp").exists() else set()
    manifests_before = set(TemplateStore(DATA_DIR).names())
    template = (
        Template()
        .from_base_image()
        .run_cmd("echo first-step-ok > /home/user/ok")
        .run_cmd("echo about-to-fail && ls /no/such/dir")
        .run_cmd("echo never-runs")
    )
    logs: list[LogEntry] = []
    with pytest.raises(BuildException) as failed:
        Template.build(template, name, on_build_logs=logs.append)
    message = str(failed.value)
    assert "[2/3] RUN echo about-to-fail" in message and "exit code 2" in message
    assert "No such file or directory" in message
    assert any(e.level == "error" for e in logs)
    assert not any("never-runs" in e.message and "[3/3]" in e.message for e in logs)

    # Nothing left: no sandbox, mount, cgroup, lease or scratch dir; no manifest.
    after = asyncio.run(inventory(config))
    assert after.leaked_since(before) == {}
    scratch_after = set(os.listdir(DATA_DIR / "tmp")) if (DATA_DIR / "tmp").exists() else set()
    assert scratch_after <= scratch_before
    assert set(TemplateStore(DATA_DIR).names()) == manifests_before

    api = httpx.Client(base_url=gvisor_server.api_url, headers={"X-API-KEY": gvisor_key})
    tpl = api.get(f"/templates/{name}").json()
    assert tpl["buildStatus"] == "error" and tpl["builds"][0]["status"] == "error"
    status = api.get(f"/templates/{tpl['templateID']}/builds/{tpl['buildID']}/status").json()
    assert status["reason"]["step"] == "2" and "about-to-fail" in status["reason"]["message"]
    created = api.post("/v2/sandboxes", json={"templateID": name})
    assert created.status_code == 404 and "no ready build" in created.json()["message"]


def test_a_server_restart_before_the_start_keeps_the_tags_and_sandboxes_show_the_id(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    """The tags a request names are the build's once it is ready, even across a restart of
    the server between the request and the start (they were kept in its memory: the build
    got ``default`` instead). Its sandboxes show the template's id, as the build API gave it
    (they showed the build's store name), and list filters find them by that id or name."""
    name = _name("tagged")
    with httpx.Client(base_url=gvisor_server.api_url, headers={"X-API-KEY": gvisor_key}) as api:
        requested = api.post("/v3/templates", json={"name": f"{name}:v1", "tags": ["stable"]})
        assert requested.status_code == 202, requested.text
        tid, bid = requested.json()["templateID"], requested.json()["buildID"]
    gvisor_server.stop()
    gvisor_server.start(timeout_s=60)
    api = httpx.Client(base_url=gvisor_server.api_url, headers={"X-API-KEY": gvisor_key})
    with api:
        body = {"fromTemplate": "base", "steps": [{"type": "RUN", "args": ["echo t > /tmp/t"]}]}
        started = api.post(f"/v2/templates/{tid}/builds/{bid}", json=body)
        assert started.status_code == 202, started.text
        deadline = time.monotonic() + 300
        while (status := api.get(f"/templates/{tid}/builds/{bid}/status").json())["status"] in (
            "waiting", "building"
        ):  # fmt: skip
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status["status"] == "ready", status
        assert {t["tag"] for t in api.get(f"/templates/{tid}/tags").json()} == {"v1", "stable"}

        with Sandbox.create(f"{name}:stable", timeout=60) as sandbox:
            assert sandbox.get_info().template_id == tid
            for wanted in (tid, name, f"{name}:v1"):
                listed = api.get("/v2/sandboxes", params={"template": wanted}).json()
                assert [
                    s["templateID"] for s in listed if s["sandboxID"] == sandbox.sandbox_id
                ] == [tid], wanted


def test_async_sdk_build_and_create(gvisor_key: str, context: Path) -> None:
    name = _name("async")

    async def run() -> str:
        template = (
            AsyncTemplate(file_context_path=str(context))
            .from_template("base")
            .copy("hello.txt", "greeting.txt")
            .set_envs({"FROM_ASYNC": "yes"})
        )
        logs: list[LogEntry] = []
        await AsyncTemplate.build(template, f"{name}:v1", on_build_logs=logs.append,
                                  cpu_count=1, memory_mb=768)  # fmt: skip
        assert await AsyncTemplate.exists(name)
        sandbox = await AsyncSandbox.create(f"{name}:v1", timeout=60)
        try:
            info = await sandbox.get_info()
            assert (info.cpu_count, info.memory_mb) == (1, 768)  # the build's size
            result = await sandbox.commands.run("cat greeting.txt; echo $FROM_ASYNC")
            return result.stdout
        finally:
            await sandbox.kill()

    assert asyncio.run(run()) == "hello from the context\nyes\n"


def test_from_own_template_tags_and_scoping(gvisor_server: ServerProcess, gvisor_key: str) -> None:
    parent, child = _name("parent"), _name("child")
    Template.build(Template().from_base_image().run_cmd("echo parent > /home/user/p"), parent)
    Template.build(
        Template().from_template(parent).run_cmd("echo child > /home/user/c"), f"{child}:v1"
    )
    with Sandbox.create(f"{child}:v1", timeout=60) as sandbox:
        assert sandbox.commands.run("cat p c").stdout == "parent\nchild\n"

    assigned = Template.assign_tags(f"{child}:v1", ["stable", "prod"])
    assert sorted(assigned.tags) == ["prod", "stable"]
    assert {t.tag for t in Template.get_tags(child)} == {"v1", "stable", "prod"}
    with Sandbox.create(f"{child}:stable", timeout=60) as sandbox:
        assert sandbox.commands.run("cat c").stdout == "child\n"
    Template.remove_tags(child, "prod")
    assert {t.tag for t in Template.get_tags(child)} == {"v1", "stable"}

    other = gvisor_server.create_key(f"other-{uuid.uuid4().hex[:6]}")
    assert not Template.exists(child, api_key=other)
    mine = httpx.Client(base_url=gvisor_server.api_url, headers={"X-API-KEY": gvisor_key})
    theirs = httpx.Client(base_url=gvisor_server.api_url, headers={"X-API-KEY": other})
    template_id = mine.get(f"/templates/aliases/{child}").json()["templateID"]
    for method, path in [
        ("GET", f"/templates/{template_id}"),
        ("GET", f"/templates/{template_id}/tags"),
        ("GET", f"/templates/{template_id}/files/{'0' * 64}"),
        ("PATCH", f"/templates/{template_id}"),
        ("DELETE", f"/templates/{template_id}"),
    ]:
        body = {"public": True} if method == "PATCH" else None
        assert theirs.request(method, path, json=body).status_code == 404, (method, path)
    assert theirs.post("/v2/sandboxes", json={"templateID": child}).status_code == 404
    assert theirs.post("/v2/sandboxes", json={"templateID": template_id}).status_code == 404
    assert child not in {t["names"][0] for t in theirs.get("/templates").json()}

    # Public: usable by id from another team, still not listed or managed by it.
    assert mine.patch(f"/templates/{template_id}", json={"public": True}).status_code == 200
    with Sandbox.create(f"{template_id}:v1", timeout=60, api_key=other) as sandbox:
        assert sandbox.commands.run("cat c").stdout == "child\n"

    # Deleting a template some sandbox still runs from keeps what that sandbox needs.
    detail = mine.get(f"/templates/{parent}").json()
    store_name = f"b-{detail['buildID']}"
    with Sandbox.create(parent, timeout=60) as sandbox:
        assert mine.delete(f"/templates/{parent}").status_code == 204
        assert store_name in TemplateStore(DATA_DIR).names()
        assert sandbox.commands.run("cat p").stdout == "parent\n"
    assert mine.delete(f"/templates/{child}").status_code == 204
    assert not Template.exists(child)
    assert mine.post("/v2/sandboxes", json={"templateID": child}).status_code == 404
    assert f"b-{assigned.build_id}" not in TemplateStore(DATA_DIR).names()


@needs_node
def test_npm_sdk_builds_and_uses_a_template(
    gvisor_server: ServerProcess, gvisor_key: str, context: Path, tmp_path: Path
) -> None:
    name = _name("js")
    out = run_script(JS / "template.mjs", gvisor_server, gvisor_key, tmp_path, 600,
                     TPL_NAME=name, TPL_CONTEXT=str(context))  # fmt: skip
    assert len(out["templateId"]) == 20 and out["exists"] is True
    assert any("RUN echo built-as" in m for m in out["stepLogs"]), out["stepLogs"]
    assert out["stdout"] == (
        "hello from the context\nbuilt-as-user\nroot-made\nfrom-js\nuser 640\n"
    )
    assert out["tags"] == ["js-stable", "v1"]
    assert out["failure"].startswith("BuildError") and "exit code 7" in out["failure"]
    assert "js-fails" in out["failure"]


def test_a_copy_keeps_what_its_source_s_create_changed_of_the_template_s_env(
    gvisor_key: str, gvisor_api: httpx.Client
) -> None:
    """A template's ENV that a sandbox's create changed stays changed in the sandboxes started
    from its snapshots, of memory or of files (as the source's restored processes have it);
    the rest is the template's, of the build the source ran (a snapshot's files are changes
    to that build's, so a template rebuilt since does not change what they boot)."""
    name = _name("envs")
    Template.build(Template().from_template("base").set_envs({"MODE": "template", "TPL": "v1"}),
                   name)  # fmt: skip
    src = Sandbox.create(name, timeout=120, envs={"MODE": "created"})
    made: list[Sandbox] = []
    snapshots: list[str] = []
    try:
        snapshots.append(src.create_snapshot().snapshot_id)
        snapshots.append(src.create_snapshot(mode="filesystem").snapshot_id)
        Template.build(Template().from_template("base").set_envs({"MODE": "template",
                                                                  "TPL": "v2"}), name)  # fmt: skip
        made += [Sandbox.create(s, timeout=120) for s in snapshots]
        made.append(Sandbox.create(snapshots[0], timeout=120, envs={"MODE": "own"}))
        shown = [m.commands.run("echo $MODE $TPL").stdout.split() for m in made]
        assert shown == [["created", "v1"], ["created", "v1"], ["own", "v1"]]
    finally:
        for sbx in (*made, src):
            sbx.kill()
        for snapshot_id in snapshots:
            Sandbox.delete_snapshot(snapshot_id)
        gvisor_api.delete(f"/templates/{name}")
