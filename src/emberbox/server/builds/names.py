"""How templates are named: ``[namespace/]name[:tag]`` in requests; ids and store names we make.

A team's names are its own (two teams may both have ``web``); the namespace part of a reference
is accepted and dropped, since a deployment has one namespace per team.
"""

from __future__ import annotations

import re
import secrets
import string

from ...node.builds import BUILD_PREFIX
from ...vocabulary import template_ref_parts
from ..lifecycle.errors import Invalid

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
TAG_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
DEFAULT_TAG = "default"
_ID_ALPHABET = string.ascii_lowercase + string.digits


split_ref = template_ref_parts  # ``ns/name:tag`` → (``name``, ``tag`` or None)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise Invalid(
            f"invalid template name {name!r}: use lowercase letters, digits, '.', '_' and '-' "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return name


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise Invalid(f"invalid tag {tag!r}: use letters, digits, '.', '_' and '-'")
    return tag


def new_template_id() -> str:
    """20 lowercase letters and digits, the shape of E2B's template ids."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


STORE_PREFIX = BUILD_PREFIX


def store_name(build_id: str) -> str:
    """The node's manifest name for what a build produced (see ``templates.store``)."""
    return f"{STORE_PREFIX}{build_id}"


IMAGE_PREFIX = "img-"  # an image with our conventions (templates.oci), a build's parent


def is_store_name(name: str) -> bool:
    """Build outputs (and the images they start from) are reached through their team's
    template, never by manifest name."""
    return split_ref(name)[0].startswith((STORE_PREFIX, IMAGE_PREFIX))
