"""``python -m emberbox.server``: the ``emberbox`` command (``server``, ``keys``, ...)."""

from __future__ import annotations

from ..cli.app import main

if __name__ == "__main__":
    main()
