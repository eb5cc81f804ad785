"""Run one command and print its wall time and peak RSS as JSON: `python measure.py ARGV...`.

Linux counts the memory a child had before `exec` in its peak RSS, and a child forked from
the benchmark process starts as large as that process. Measured from this small process
instead, every command carries the same few MiB of it, taskstack and baseline alike.
"""

import json
import os
import sys
import time

start = time.perf_counter()
# The command's own output goes nowhere; stdout carries only the figures.
discard = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ, file_actions=discard)
_, status, usage = os.wait4(pid, 0)
elapsed = time.perf_counter() - start
print(
    json.dumps(
        {
            "seconds": elapsed,
            "peak_mib": usage.ru_maxrss / 1024,
            "exit": os.waitstatus_to_exitcode(status),
        }
    )
)
