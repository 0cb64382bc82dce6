"""The gVisor (runsc) runtime: a syscall boundary without hardware virtualization."""

from .config import GVisorConfig
from .runtime import GVisorRuntime

__all__ = ["GVisorConfig", "GVisorRuntime"]
