"""``python -m emberbox.cli``: the same as the ``emberbox`` command."""

from .app import main

main()
