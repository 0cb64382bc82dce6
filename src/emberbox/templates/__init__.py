"""Templates: content-addressed, read-only layer stacks that sandboxes boot from.

Kept import-light on purpose: ``emberbox.templates.guest`` runs inside every sandbox, where only
the standard library and envd's dependencies are installed.
"""
