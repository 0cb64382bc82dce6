#!/usr/bin/env bash
# Expedited RCU grace periods, so that starting a sandbox does not wait for ordinary ones.
# Each `runsc run`/`restore` moves its processes into the sandbox's cgroup and back out, and a
# move waits for an RCU grace period (cgroup_threadgroup_rwsem): ~10 ms each on this 2-core
# host, two per start, ~35 ms of a ~270 ms restore (docs/runtimes.md, "Host tuning"). An
# expedited grace period interrupts every CPU briefly instead of waiting: nothing to a host
# serving sandboxes, a cost to one running latency-sensitive work beside them. Idempotent;
# lasts until reboot (add rcupdate.rcu_expedited=1 to the kernel command line to keep it).
set -euo pipefail

knob=/sys/kernel/rcu_expedited
if [ ! -e "$knob" ]; then
  echo "host-rcu: this kernel has no $knob; sandbox starts wait for normal grace periods"
  exit 0
fi
if [ "$(cat "$knob")" != 0 ]; then
  echo "host-rcu: grace periods are expedited already"
  exit 0
fi
echo 1 > "$knob" 2>/dev/null || { echo "host-rcu: could not write $knob"; exit 0; }
echo "host-rcu: grace periods expedited ($knob = 1)"
