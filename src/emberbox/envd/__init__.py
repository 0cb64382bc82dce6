"""envd: the daemon inside every sandbox, speaking E2B's envd protocol (Connect-RPC + HTTP)."""

from .state import ENVD_VERSION

__all__ = ["ENVD_VERSION"]
