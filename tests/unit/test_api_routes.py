"""Every route of the API parses its JSON body as Unicode text (``api/unicode_json.py``): a
router added without the route class would take lone surrogates in again, each a 500 later."""

from __future__ import annotations

import importlib
import pkgutil

from fastapi import APIRouter
from fastapi.routing import APIRoute

from emberbox.server import api
from emberbox.server.api.unicode_json import UnicodeJsonRoute


def test_every_api_router_refuses_bodies_that_are_not_unicode() -> None:
    routes = []
    for info in pkgutil.iter_modules(api.__path__):
        module = importlib.import_module(f"{api.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, APIRouter):
                routes += [r for r in value.routes if isinstance(r, APIRoute)]
    assert len(routes) > 40  # (every router found)
    assert [r.path for r in routes if not isinstance(r, UnicodeJsonRoute)] == []
