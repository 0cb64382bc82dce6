"""The code-interpreter template's recipe: its cache key, its cache pruning, its SDK alias.

Building it needs root and mmdebstrap (scripts/setup does; the gVisor suites in
tests/interpreter boot it); these checks need neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emberbox.server.lifecycle.templates import StaticTemplates, StoreTemplates
from emberbox.templates import base, cache, code_interpreter
from emberbox.templates import code_interpreter_recipe as recipe
from emberbox.templates.store import Template, TemplateStore

KEY = "a" * 64


def test_the_layer_key_follows_base_and_the_recipe() -> None:
    keys = base.compute_keys(base.project_root())
    mine = recipe.layer_key(keys.envd)
    assert mine == recipe.layer_key(keys.envd)
    assert mine != recipe.layer_key("0" * 64)  # new envd (project source) → rebuilt
    assert base.built_in_layers(keys) == (keys.os, keys.envd, mine)


def test_pruning_the_cache_keeps_every_built_in_layer(tmp_path: Path) -> None:
    keys = base.compute_keys(base.project_root())
    for key in (*base.built_in_layers(keys), "stale"):
        (tmp_path / f"{key}.tar").write_bytes(b"")
    assert cache.prune(tmp_path, base.built_in_layers(keys)) == ["stale.tar"]


def test_code_interpreter_v1_names_the_code_interpreter_template(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    (store.layers_dir / KEY).mkdir(parents=True)
    config = code_interpreter.config()
    store.save(Template(name="code-interpreter", layers=(KEY,), config=config))
    catalog = StoreTemplates(tmp_path, StaticTemplates.from_env(None))
    for asked in ("code-interpreter-v1", "code-interpreter-v1:latest", "code-interpreter"):
        found = catalog.resolve(asked)
        assert found is not None and found.template_id == "code-interpreter", asked
        assert (found.cpu_count, found.memory_mb) == (2, 2048)  # E2B's size for it
    assert catalog.resolve("code-interpreter-v2") is None
    sized = StoreTemplates(
        tmp_path, StaticTemplates.from_env('{"code-interpreter": {"memoryMB": 768}}')
    )
    assert (found := sized.resolve("code-interpreter")) is not None and found.memory_mb == 768
    cpus = StoreTemplates(
        tmp_path, StaticTemplates.from_env('{"code-interpreter": {"cpuCount": 4}}')
    )
    assert (found := cpus.resolve("code-interpreter")) is not None
    assert (found.cpu_count, found.memory_mb) == (4, 2048)  # the size not given stays its own
    manifest = json.loads((store.templates_dir / "code-interpreter.json").read_text())
    assert "--envd-url http://127.0.0.1:49983" in manifest["config"]["start_cmd"]
    assert manifest["config"]["ready_cmd"].endswith("127.0.0.1:49999/health")


def test_node_and_the_javascript_kernel_are_part_of_the_recipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = base.compute_keys(base.project_root())
    mine = recipe.layer_key(keys.envd)
    assert recipe.DEBIAN_PACKAGES == (
        "nodejs", "node-typescript", "r-base-core", "r-cran-irkernel",
    )  # fmt: skip
    assert "kernels/ir/kernel.json" in recipe.SETUP
    assert "emberbox.interpreter.js_kernel install >" in recipe.SETUP
    assert "emberbox.interpreter.js_kernel install --typescript" in recipe.SETUP
    monkeypatch.setattr(recipe, "DEBIAN_PACKAGES", ("nodejs",))
    assert recipe.layer_key(keys.envd) != mine  # another package → rebuilt
