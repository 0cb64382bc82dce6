"""Sandbox resource usage from /proc and statvfs; cpu usage is measured between calls."""

from __future__ import annotations

import os
import time


class MetricsSampler:
    def __init__(self) -> None:
        self._last = self._cpu_times()

    @staticmethod
    def _cpu_times() -> tuple[int, int]:
        """(busy, total) jiffies over all CPUs."""
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return 0, 0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields[:8])
        return total - idle, total

    @staticmethod
    def _meminfo() -> dict[str, int]:
        info: dict[str, int] = {}
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    info[key] = int(rest.split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return info

    def sample(self) -> dict[str, float | int]:
        busy, total = self._cpu_times()
        last_busy, last_total = self._last
        self._last = (busy, total)
        span = total - last_total
        cpu_pct = round(100.0 * (busy - last_busy) / span, 2) if span > 0 else 0.0
        mem = self._meminfo()
        mem_total = mem.get("MemTotal", 0)
        mem_available = mem.get("MemAvailable", mem.get("MemFree", 0))
        mem_cache = mem.get("Cached", 0) + mem.get("Buffers", 0)
        mem_used = max(mem_total - mem_available, 0)
        disk = os.statvfs("/")
        disk_total = disk.f_blocks * disk.f_frsize
        disk_used = (disk.f_blocks - disk.f_bfree) * disk.f_frsize
        return {
            "ts": int(time.time()),
            "cpu_count": os.cpu_count() or 1,
            "cpu_used_pct": cpu_pct,
            "mem_total": mem_total,
            "mem_used": mem_used,
            "mem_cache": mem_cache,
            "mem_total_mib": mem_total // (1024 * 1024),
            "mem_used_mib": mem_used // (1024 * 1024),
            "disk_used": disk_used,
            "disk_total": disk_total,
        }
