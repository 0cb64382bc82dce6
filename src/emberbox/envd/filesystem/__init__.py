"""The ``filesystem.Filesystem`` service: stat, list, move, remove, watch."""
