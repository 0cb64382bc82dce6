"""The tests' fake internet never lands on a place something else holds: the namespace and
routes of a run killed before its clean-up, or of another fake internet alive beside it."""

from __future__ import annotations

import itertools
import os
import secrets
import urllib.request
from unittest import mock

import pytest

from tests import fake_internet as fi

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _get(address: str) -> str:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(f"http://{address}:{fi.PORT}/", timeout=5) as response:
        return str(response.read().decode())


def test_a_second_fake_internet_drawing_a_taken_place_takes_another() -> None:
    with fi.fake_internet() as first:
        # Twice the live one's tag, then real draws (a fixed third tag could name the same n).
        draw = secrets.token_hex
        drawn = itertools.chain([first.tag, first.tag], iter(lambda: draw(2), None))
        with (
            mock.patch.object(secrets, "token_hex", lambda _n: next(drawn)),
            fi.fake_internet() as second,
        ):
            assert second.tag != first.tag
            assert not set(second.public) & set(first.public)
            assert _get(first.public[0]).startswith(f"fake internet {first.tag}")
            assert _get(second.public[0]).startswith(f"fake internet {second.tag}")
