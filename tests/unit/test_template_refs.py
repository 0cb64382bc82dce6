"""One reading of a template reference ``[namespace/]name[:tag]`` for every lookup: a
reference one lookup read as a team's template and another as a build's store name let any
team boot another team's private build (``b-<build>:x/y`` passed the store-name guard as
``y``, then booted ``b-<build>``)."""

from __future__ import annotations

import pytest

from emberbox.server.builds.service import BuiltinTemplates
from emberbox.server.lifecycle.templates import StaticTemplates, TemplateInfo
from emberbox.vocabulary import template_ref_parts

BUILD = "b-0f8e2c1d-9a7b-4c3d-8e6f-5a4b3c2d1e0f"
IMAGE = "img-3f2e1d0c"


@pytest.mark.parametrize(
    ("ref", "parts"),
    [
        ("base", ("base", None)),
        ("base:v1", ("base", "v1")),
        ("team/base", ("base", None)),
        ("team/base:default", ("base", "default")),
        (f"{BUILD}:x/y", ("y", None)),
        (f"{BUILD}:/", ("", None)),
    ],
)
def test_a_reference_reads_one_way(ref: str, parts: tuple[str, str | None]) -> None:
    assert template_ref_parts(ref) == parts


@pytest.mark.parametrize(
    "ref",
    [BUILD, f"ns/{BUILD}", f"{BUILD}:default", f"{BUILD}:x/y", f"{BUILD}:/", f"{IMAGE}:t/x",
     f"{IMAGE}:/", IMAGE],
)  # fmt: skip
def test_no_spelling_reaches_a_build_or_image_by_its_store_name(ref: str) -> None:
    catalog = StaticTemplates(
        {name: TemplateInfo(name, name) for name in ("base", BUILD, IMAGE, "y", "x")}
    )
    found = BuiltinTemplates(catalog).resolve(ref)
    assert found is None or found.template_id not in (BUILD, IMAGE), ref


def test_the_node_s_own_templates_resolve_however_spelled() -> None:
    catalog = StaticTemplates({"base": TemplateInfo("base", "base")})
    for ref in ("base", "base:default", "team/base", "team/base:v2"):
        found = BuiltinTemplates(catalog).resolve(ref)
        assert found is not None and found.template_id == "base", ref
