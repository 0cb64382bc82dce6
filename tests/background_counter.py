"""A background shell loop whose value proves that a sandbox's processes survived a pause,
snapshot or fork.

Each value is written beside the counter file and renamed over it, so a reader sees the old
value or the new one, never the empty file that a truncating ``echo >`` leaves between its open
and its write (a reader that hit that window once turned a CI run red). A reader started right
after the loop waits up to five seconds for its first value instead of failing on a missing file.
"""

LOOP = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new;"
    " mv /tmp/counter.new /tmp/counter; sleep 0.1; done"
)
READ = "for _ in $(seq 100); do [ -e /tmp/counter ] && break; sleep 0.05; done; cat /tmp/counter"
