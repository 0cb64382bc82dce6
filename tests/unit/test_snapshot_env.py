"""What a filesystem snapshot keeps of its source's variables (``gvisor.runtime._carried_env``):
the source's own, never its identity, and not the template's (they come with the build the
snapshot's sandboxes boot)."""

from __future__ import annotations

from emberbox.runtimes.gvisor.runtime import _carried_env


def test_only_what_the_source_had_beyond_its_template_is_carried() -> None:
    template = {"PATH": "/usr/bin:/bin", "HOME": "/root", "MODE": "template", "KEEP": "t",
                "E2B_SANDBOX_ID": "src", "EMBERBOX_DEFAULT_USER": "user"}  # fmt: skip
    booted = {**template, "MODE": "created", "FROM_CREATE": "c", "E2B_SANDBOX_ID": "src"}
    given = {"FROM_CLAIM": "g", "E2B_TEMPLATE_ID": "x"}
    assert _carried_env(booted, template, given, []) == {
        "MODE": "created", "FROM_CREATE": "c", "FROM_CLAIM": "g",
    }  # fmt: skip


def test_a_template_gone_since_leaves_every_variable_but_the_identity() -> None:
    booted = {"PATH": "/opt/bin", "FROM_CREATE": "c", "E2B_SANDBOX": "true",
              "EMBERBOX_START_CMD": "serve"}  # fmt: skip
    assert _carried_env(booted, {}, {}, []) == {"PATH": "/opt/bin", "FROM_CREATE": "c"}


def test_a_variable_pid_1_needs_is_carried_when_its_create_gave_it_whatever_its_value() -> None:
    """``HOME=/root`` given at the source's create is its own, though the template sets the
    same: envd hands it to commands, so its snapshot's sandboxes keep it too."""
    template = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    assert _carried_env(template, template, {}, ["HOME"]) == {"HOME": "/root"}
