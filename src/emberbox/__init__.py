"""Emberbox: self-hosted sandboxes for AI agents and untrusted code.

The SDK (``Sandbox``/``AsyncSandbox``) lands here; ``emberbox.envd`` is the in-sandbox daemon.
"""

__version__ = "0.1.0"
