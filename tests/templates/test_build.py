"""Custom templates are built inside sandboxes, cached per step, all-or-nothing, and boot."""

from __future__ import annotations

import dataclasses
import io
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from emberbox.runtimes.gvisor import GVisorRuntime
from emberbox.templates import cache, hashing
from emberbox.templates._run import StepFailed
from emberbox.templates.builder import build_template
from emberbox.templates.ext4 import build_ext4
from emberbox.templates.spec import BuildSpec, parse_dockerfile
from emberbox.templates.store import Template, TemplateNotFound, TemplateStore
from tests.runtimes.conftest import SandboxFactory
from tests.runtimes.gvisor_support import inventory, run, tcp_read

DOCKERFILE = """
FROM base
ENV GREETING=hello APP_MODE=test
RUN echo built-by-$(id -un) > /etc/built.txt && rm /usr/bin/git
WORKDIR /srv/app
COPY app/ ./
COPY config.txt /etc/app/
USER user
RUN echo "$GREETING from $(id -un) in $(pwd)" > /home/user/who.txt
CMD python3 -m http.server 8080 --directory /srv/app
HEALTHCHECK CMD curl -sf http://127.0.0.1:8080/main.py
"""


def _spec(context: Path, text: str = DOCKERFILE) -> BuildSpec:
    return dataclasses.replace(parse_dockerfile(text, context), allow_internet=False)


@pytest.fixture(autouse=True, scope="module")
def forget_test_templates() -> Iterator[None]:
    """Manifests made here are removed afterwards; their layers stay as build cache."""
    yield
    for name in ("test-app", "test-broken", "test-image"):
        TemplateStore().delete(name)


@pytest.fixture
def context(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('app')\n")
    (tmp_path / "config.txt").write_text("setting=1\n")
    return tmp_path


async def _build(name: str, spec: BuildSpec, runtime: GVisorRuntime) -> tuple[Template, str]:
    log = io.StringIO()
    template = await build_template(TemplateStore(), name, spec, runner=runtime, log=log)
    return template, log.getvalue()


async def test_custom_template_builds_boots_and_caches(
    base_template: Template, runtime: GVisorRuntime, make_sandbox: SandboxFactory, context: Path
):
    store = TemplateStore()
    template, log = await _build("test-app", _spec(context), runtime)
    assert template.layers[: len(base_template.layers)] == base_template.layers
    assert len(template.layers) == len(base_template.layers) + 5  # RUN WORKDIR COPY COPY RUN

    sandbox = await make_sandbox("test-app")
    result = await run(sandbox, "cat /etc/built.txt /home/user/who.txt /etc/app/config.txt "
                       "/srv/app/main.py; echo $GREETING $APP_MODE; id -un; pwd; "
                       "stat -c %U /srv/app/main.py; which git || echo no-git")  # fmt: skip
    assert result.text.splitlines() == [
        "built-by-root",  # RUN is root until USER, as in Docker
        "hello from user in /srv/app",
        "setting=1",
        "print('app')",
        "hello test",
        "user",
        "/srv/app",
        "root",  # COPY without --chown gives root, as in Docker
        "no-git",  # a whiteout in a layer hides the file below it
    ]
    reply = await tcp_read(sandbox.address, 8080)  # the start command runs with the sandbox
    assert reply is not None and reply.startswith(b"HTTP/1.0 200")
    assert (store.layer_path(base_template.layers[0]) / "usr/bin/git").exists()

    # Unchanged inputs: every step comes from cache, nothing runs.
    again, log = await _build("test-app", _spec(context), runtime)
    assert again.id == template.id
    assert log.count("(cached)") == 5

    # A changed file re-runs its COPY and everything above it, nothing below. The content is
    # new on every run: layers outlive test runs as build cache, so "setting=2" could be cached.
    (context / "config.txt").write_text(f"setting={secrets.token_hex(8)}\n")
    changed, log = await _build("test-app", _spec(context), runtime)
    assert changed.layers[:-2] == template.layers[:-2]
    assert changed.layers[-2:] != template.layers[-2:]
    assert log.count("(cached)") == 3


async def test_failed_step_shows_output_and_leaves_nothing(
    base_template: Template, runtime: GVisorRuntime, context: Path
):
    store = TemplateStore()
    before_layers = set(p.name for p in store.layers_dir.iterdir())
    before = await inventory(runtime.config)
    text = "FROM base\nRUN echo step-one > /one\nRUN echo visible-output; echo oops >&2; exit 3\n"
    with pytest.raises(StepFailed) as failure:
        await _build("test-broken", _spec(context, text), runtime)
    assert failure.value.code == 3
    assert "visible-output" in failure.value.output and "oops" in failure.value.output
    assert "RUN echo visible-output" in str(failure.value)
    with pytest.raises(TemplateNotFound):
        store.get("test-broken")
    new_layers = set(p.name for p in store.layers_dir.iterdir()) - before_layers
    assert len(new_layers) <= 1  # at most the successful first step, kept as cache
    assert list(store.tmp_dir.iterdir()) == []
    assert (await inventory(runtime.config)).leaked_since(before) == {}


async def test_ext4_image_and_cache_round_trip(
    base_template: Template, runtime: GVisorRuntime, context: Path, tmp_path: Path
):
    if shutil.which("debugfs") is None:
        pytest.skip("debugfs (e2fsprogs) not installed")
    store = TemplateStore()
    text = "FROM base\nRUN rm /usr/bin/git && echo image-test > /etc/image.txt\n"
    template, _ = await _build("test-image", _spec(context, text), runtime)
    image = await build_ext4(store, template)
    try:
        await _check_image(image, store, template, tmp_path)
    finally:
        image.unlink()  # hundreds of MiB; the layers stay cached


async def _check_image(image: Path, store: TemplateStore, template: Template, tmp_path: Path):

    def debugfs(request: str) -> str:
        return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                              text=True).stdout  # fmt: skip

    assert debugfs("cat /etc/image.txt").strip() == "image-test"
    assert "user:x:1000" in debugfs("cat /etc/passwd")
    assert "emberbox" in debugfs("ls /opt/emberbox/venv/bin")
    assert debugfs("stat /usr/bin/git") == ""  # the whiteout was applied, not copied

    top = template.layers[-1]
    digest = hashing.hash_tree(store.layer_path(top))
    await cache.export_layer(store, top, tmp_path / "cache")
    aside = tmp_path / "aside"
    shutil.move(store.layer_path(top), aside)
    try:
        assert await cache.import_layer(store, top, tmp_path / "cache")
        assert hashing.hash_tree(store.layer_path(top)) == digest  # whiteouts survive tar
    finally:
        shutil.rmtree(aside, ignore_errors=True)
