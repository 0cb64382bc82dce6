#!/usr/bin/env bash
# A compressed swap in RAM (zram) for a host that has no swap, so the node can offload the
# memory of pooled sandboxes that wait behind the newest of their template (docs/stateful.md,
# "Warm pool"): ~41 MiB each compresses to ~12. Sized at a quarter of RAM, which is what it
# may hold uncompressed; it takes memory only for what it stores. Sandboxes get no more memory
# from it: the node holds each one's memory plus swap to its limit. Idempotent; a host that
# already has swap, or whose kernel has no zram, is left as it is (offloading is optional).
set -euo pipefail

if awk '/^SwapTotal:/ { exit !($2 > 0) }' /proc/meminfo; then
  echo "host-swap: the host has swap already"; exit 0
fi
if [ ! -e /sys/class/zram-control ] && ! modprobe zram 2>/dev/null; then
  echo "host-swap: this kernel has no zram; pooled sandboxes stay resident"; exit 0
fi
device=""
for d in /sys/block/zram*; do  # an unused device the kernel made at boot
  [ -e "$d/disksize" ] && [ "$(cat "$d/disksize")" = 0 ] && { device=${d##*/}; break; }
done
[ -n "$device" ] || device="zram$(cat /sys/class/zram-control/hot_add)"
if grep -qw lz4 "/sys/block/$device/comp_algorithm"; then  # faster than the default lzo-rle
  echo lz4 > "/sys/block/$device/comp_algorithm"
fi
ram_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
echo "$((ram_kib / 4))K" > "/sys/block/$device/disksize"
mkswap "/dev/$device" >/dev/null
swapon --priority 100 "/dev/$device"
echo "host-swap: /dev/$device, $((ram_kib / 4 / 1024)) MiB"
