"""The node's build messages without root or runsc: a real template store in a temp dir, the
real builder, and a step runner that only writes what each RUN step asked for (the gVisor
tests run the same messages with real build sandboxes, embedded and remote)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from emberbox._proto.node import node_pb2 as pb
from emberbox.node.builds import FILES_DIR, BuildSettings, NodeBuilds
from emberbox.node.client import (
    EmbeddedNode,
    NodeBadRequest,
    NodeFull,
    NodeSandboxNotFound,
    NodeUnsupported,
)
from emberbox.templates.step_output import MAX_FILE_BYTES as STEP_FILE_CAP
from emberbox.templates.steps import Step
from emberbox.templates.store import Template, TemplateConfig, TemplateStore

from .fake_runtime import FakeRuntime

HASH = "ab" * 32


class FakeSteps(FakeRuntime):
    """Runs a step by writing its command into its layer; ``exit N`` in it fails the step,
    ``hold`` keeps it running until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.largest = 0  # the largest a flooded step's log file grew

    async def run_step(self, step: Step) -> int:
        command = step.args[-1]
        step.upper.mkdir(parents=True, exist_ok=True)
        (step.upper / "ran").write_text(command)
        step.log.write_text(f"output of {command}\n")
        if "flood" in command:  # (``yes`` in a RUN step: 64 MiB, as a writer that appends)
            with step.log.open("ab") as log:
                for n in range(64):
                    log.write(f"{n:04d}".encode() * (1 << 18))
                    log.flush()
                    self.largest = max(self.largest, step.log.stat().st_size)
                    await asyncio.sleep(0.03)
        if "hold" in command:
            self.holding.set()
            await self.release.wait()
        return int(command.split("exit ")[1]) if "exit " in command else 0

    async def boot_check(self, sandbox_id: str, template: Template, allow_internet: bool) -> None:
        return None


def _base(data_dir: Path) -> None:
    store = TemplateStore(data_dir)
    tree = store.scratch("base-")
    (tree / "etc").mkdir()
    (tree / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n")
    key = hashlib.sha256(b"fake base").hexdigest()
    store.publish_layer(key, tree)
    store.save(Template(name="base", layers=(key,), config=TemplateConfig()))


def _start(build_id: str, *commands: str, **extra: str) -> pb.StartBuildRequest:
    request = pb.StartBuildRequest(build_id=build_id, template_id="tpl1",
                                   store_name=f"b-{build_id}", from_template="base")  # fmt: skip
    request.steps.extend(pb.BuildStep(type="RUN", args=[c]) for c in commands)
    for name, value in extra.items():
        setattr(request, name, value)
    return request


async def _finished(node: EmbeddedNode, build_id: str) -> pb.BuildStatusResponse:
    for _ in range(500):
        answer = await node.build_status(build_id, 0)
        if answer.status in ("ready", "error"):
            return answer
        await asyncio.sleep(0.01)
    raise AssertionError(f"build {build_id} never ended")


@pytest.fixture
async def node(tmp_path: Path) -> EmbeddedNode:  # type: ignore[misc]
    _base(tmp_path)
    runtime = FakeSteps()
    settings = BuildSettings(max_concurrent=1, max_queued=2)
    node = EmbeddedNode(runtime, tmp_path / "node", dead_check_every_s=0,
                        builds=NodeBuilds.for_runtime(tmp_path, runtime, settings))  # fmt: skip
    await node.start()
    yield node
    runtime.release.set()
    await node.close()


async def test_a_build_reports_its_steps_then_its_template(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    await node.start_build(_start("one", "echo a", "echo b"))
    answer = await _finished(node, "one")
    assert answer.status == "ready", answer
    by_step = {(line.step, line.message) for line in answer.lines}
    assert ("1", "[1/2] RUN echo a") in by_step and ("2", "output of echo b") in by_step
    assert [line.seq for line in answer.lines] == list(range(len(answer.lines)))
    later = await node.build_status("one", 3)
    assert [line.seq for line in later.lines] == list(range(3, len(answer.lines)))
    assert "b-one" in TemplateStore(tmp_path).names()

    await node.delete_template("tpl1", ["b-one"])
    assert "b-one" not in TemplateStore(tmp_path).names()
    with pytest.raises(NodeBadRequest):
        await node.delete_template("tpl1", ["../escape"])
    with pytest.raises(NodeBadRequest):
        await node.delete_template("../tpl", [])


async def test_a_failing_step_leaves_no_template(node: EmbeddedNode, tmp_path: Path) -> None:
    await node.start_build(_start("bad", "echo fine", "exit 3", "echo never"))
    answer = await _finished(node, "bad")
    assert answer.status == "error" and answer.reason_step == "2"
    assert "exit code 3" in answer.reason and "output of exit 3" in answer.reason
    assert not any("never" in line.message for line in answer.lines)
    assert "b-bad" not in TemplateStore(tmp_path).names()


async def test_refusals_keep_nothing(node: EmbeddedNode, tmp_path: Path) -> None:
    with pytest.raises(NodeSandboxNotFound):  # NOT_FOUND: the parent is not on this node
        await node.start_build(_start("x1", "true", from_template="nope"))
    with pytest.raises(NodeBadRequest, match="not supported"):
        await node.start_build(pb.StartBuildRequest(build_id="x2", template_id="tpl1",
                               store_name="b-x2", from_template="base",
                               steps=[pb.BuildStep(type="ADD", args=["a"])]))  # fmt: skip
    copy = pb.BuildStep(type="COPY", args=["a", "/a"], files_hash=HASH)
    with pytest.raises(NodeBadRequest, match="not on this node"):
        await node.start_build(pb.StartBuildRequest(build_id="x3", template_id="tpl1",
                               store_name="b-x3", from_template="base", steps=[copy]))  # fmt: skip
    with pytest.raises(NodeBadRequest, match="invalid template name"):
        await node.start_build(_start("x4", "true", store_name="../../etc"))
    for taken in ("base", "img-0123"):  # a build writes and deletes only build outputs
        with pytest.raises(NodeBadRequest, match="not a build's name"):
            await node.start_build(_start("x5", "exit 1", store_name=taken))
        with pytest.raises(NodeBadRequest, match="not a build's name"):
            await node.delete_template("tpl1", [taken])
    assert "base" in TemplateStore(tmp_path).names()
    with pytest.raises(NodeSandboxNotFound):
        await node.build_status("x1", 0)  # none of them was queued


async def test_the_queue_is_bounded_and_a_cancel_ends_a_build(node: EmbeddedNode) -> None:
    runtime = node.orchestrator.runtime
    assert isinstance(runtime, FakeSteps)
    await node.start_build(_start("h1", "hold"))
    await node.start_build(_start("h2", "hold"))
    with pytest.raises(NodeFull):
        await node.start_build(_start("h3", "true"))
    await runtime.holding.wait()
    assert (await node.build_status("h1", 0)).status == "building"
    assert (await node.build_status("h2", 0)).status == "waiting"  # one build at a time
    await node.cancel_build("h1")
    ended = await _finished(node, "h1")
    assert ended.status == "error" and "stopped" in ended.reason
    await node.cancel_build("h2")  # never began: it ends too
    await node.cancel_build("h2")  # idempotent
    assert (await _finished(node, "h2")).status == "error"
    await node.start_build(_start("h3", "true"))  # room again
    assert (await _finished(node, "h3")).status == "ready"
    await node.cancel_build("h3")  # just finished: undone (the control plane will not use it)
    assert (await node.build_status("h3", 0)).status == "error"
    assert node.builds is not None and "b-h3" not in node.builds.store.names()


async def test_files_arrive_in_chunks_and_appear_whole(node: EmbeddedNode, tmp_path: Path) -> None:
    assert await node.build_files("tpl1", [HASH]) == (HASH,)
    put = pb.PutBuildFileRequest(template_id="tpl1", files_hash=HASH)
    await node.put_build_file(pb.PutBuildFileRequest(template_id="tpl1", files_hash=HASH,
                                                     offset=0, data=b"12345"))  # fmt: skip
    assert await node.build_files("tpl1", [HASH]) == (HASH,), "not visible before the last chunk"
    with pytest.raises(NodeBadRequest, match="chunk at 9"):
        put.offset, put.data = 9, b"x"
        await node.put_build_file(put)
    put.offset, put.data, put.last = 5, b"678", True
    await node.put_build_file(put)
    assert await node.build_files("tpl1", [HASH]) == ()
    assert (tmp_path / FILES_DIR / "tpl1" / f"{HASH}.tar").read_bytes() == b"12345678"
    with pytest.raises(NodeBadRequest, match="64 lowercase hex"):
        await node.build_files("tpl1", ["../../x"])


async def test_a_runtime_without_build_steps_refuses_builds(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    builds = NodeBuilds.for_runtime(tmp_path, runtime, BuildSettings())
    node = EmbeddedNode(runtime, tmp_path, dead_check_every_s=0, builds=builds)
    await node.start()
    try:
        assert not (await node.info()).capabilities.builds
        with pytest.raises(NodeUnsupported, match="gVisor"):
            await node.start_build(_start("n1", "true"))
        with pytest.raises(NodeUnsupported):
            await node.build_files("tpl1", [HASH])
    finally:
        await node.close()


def test_build_settings_from_the_environment() -> None:
    got = BuildSettings.from_env({"EMBERBOX_MAX_CONCURRENT_BUILDS": "2",
                                  "EMBERBOX_INSECURE_REGISTRIES": "a:5000,b"})  # fmt: skip
    assert got == BuildSettings(max_concurrent=2, insecure_registries=("a:5000", "b"))
    with pytest.raises(ValueError, match="EMBERBOX_BUILD_CPUS"):
        BuildSettings.from_env({"EMBERBOX_BUILD_CPUS": "0"})


async def test_an_archive_uploaded_under_another_teams_hash_never_lends_its_layer(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    """The layer store is every team's, and a client names the hash its archive goes by:
    another template's upload under the same hash and the same steps took the first
    build's COPY layer (its files, and every layer above them) as cached."""
    for template_id, content in (("tpl1", b"the owner's files"), ("tpl2", b"planted files")):
        put = pb.PutBuildFileRequest(template_id=template_id, files_hash=HASH, data=content)
        put.last = True
        await node.put_build_file(put)
    copy = pb.BuildStep(type="COPY", args=["app", "/app"], files_hash=HASH)
    answers = []
    for build_id, template_id in (("own", "tpl1"), ("other", "tpl2"), ("again", "tpl1")):
        request = _start(build_id, template_id=template_id)
        request.steps.extend([copy, pb.BuildStep(type="RUN", args=["echo above"])])
        await node.start_build(request)
        answers.append(await _finished(node, build_id))
    assert [a.status for a in answers] == ["ready"] * 3, answers
    cached = [[line.message for line in a.lines if line.message.endswith("(cached)")]
              for a in answers]  # fmt: skip
    assert cached[0] == [] and cached[1] == []  # the same hash, other bytes: built afresh
    assert len(cached[2]) == 2  # the same bytes again: both layers cached


async def test_a_step_that_floods_its_output_is_kept_to_its_head_and_tail(
    node: EmbeddedNode,
) -> None:
    """64 MiB of output: the file on the host stays under the cap as it is written, and the
    build's log keeps its head, a note of what was cut, and its tail (it held it all, in
    the node's memory and then the database)."""
    await node.start_build(_start("flood", "flood"))
    answer = await _finished(node, "flood")
    assert answer.status == "ready", answer
    runtime = node.orchestrator.runtime
    assert isinstance(runtime, FakeSteps)
    assert 0 < runtime.largest < 3 * STEP_FILE_CAP  # (over the cap for a check's interval)
    text = "\n".join(line.message for line in answer.lines)
    assert len(text) < 512 << 10
    assert "output of flood" in text and "0000" in text and "0063" in text
    assert "bytes of output cut" in text
