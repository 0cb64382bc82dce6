from __future__ import annotations

import types

import emberbox


def test_all_lists_exactly_the_public_names_sorted() -> None:
    public = {
        name
        for name in dir(emberbox)
        if not name.startswith("_") and not isinstance(getattr(emberbox, name), types.ModuleType)
    } | {"__version__"}
    assert sorted(emberbox.__all__) == sorted(public)
    assert emberbox.__all__ == sorted(emberbox.__all__, key=lambda n: (n.startswith("_"), n))


def test_every_exception_derives_from_the_root() -> None:
    for name in emberbox.__all__:
        obj = getattr(emberbox, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, emberbox.SandboxException), name
