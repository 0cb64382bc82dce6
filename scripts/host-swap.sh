#!/usr/bin/env bash
# A compressed swap in RAM (zram) for a host that has no swap, so the node can offload the
# memory of idle sandboxes, pooled or running (docs/stateful.md, "Idle sandboxes wait in
# swap"): ~43 MiB each becomes ~17 for a pooled one. Sized at a
# quarter of RAM, which is what it may hold uncompressed; it takes memory only for what it
# stores. Sandboxes get no more memory from it: the node holds each one's memory plus swap to
# its limit, so a host whose kernel does not account swap per cgroup gets none. Idempotent;
# anything that cannot be done leaves the host as it was (offloading is optional).
set -euo pipefail

skip() { echo "host-swap: $1; idle sandboxes stay resident"; exit 0; }

if awk '/^SwapTotal:/ { exit !($2 > 0) }' /proc/meminfo; then
  echo "host-swap: the host has swap already"; exit 0
fi
if [ -d /sys/fs/cgroup/memory ] && [ ! -e /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes ]; then
  skip "the kernel does not account swap per cgroup (swapaccount=1 would)"
fi
[ -e /sys/class/zram-control ] || modprobe zram 2>/dev/null || skip "this kernel has no zram"
device=""
for d in /sys/block/zram*; do  # an unused device the kernel made at boot
  [ -e "$d/disksize" ] && [ "$(cat "$d/disksize")" = 0 ] && { device=${d##*/}; break; }
done
if [ -z "$device" ]; then
  id=$(cat /sys/class/zram-control/hot_add 2>/dev/null) || skip "no zram device could be added"
  device="zram$id"
fi
give_up() { echo 1 > "/sys/block/$device/reset" 2>/dev/null || true; skip "$1"; }
if grep -qw lz4 "/sys/block/$device/comp_algorithm"; then  # faster than the default lzo-rle
  echo lz4 > "/sys/block/$device/comp_algorithm" 2>/dev/null || true
fi
ram_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
echo "$((ram_kib / 4))K" > "/sys/block/$device/disksize" 2>/dev/null || give_up "sizing /dev/$device failed"
mkswap "/dev/$device" >/dev/null 2>&1 || give_up "mkswap /dev/$device failed"
swapon --priority 100 "/dev/$device" 2>/dev/null || give_up "swapon /dev/$device failed"
echo "host-swap: /dev/$device, $((ram_kib / 4 / 1024)) MiB"
