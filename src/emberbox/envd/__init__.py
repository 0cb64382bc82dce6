"""envd: the daemon inside every sandbox, speaking E2B's envd protocol (Connect-RPC + HTTP)."""

# From the leaf module: the sudo shim (guest/sudo.py) imports this package on every call.
from ..vocabulary import ENVD_VERSION

__all__ = ["ENVD_VERSION"]
