"""The real CLI in a fresh process, with its wall time and peak memory: how the hostile-input
tests check the bounds (at most 10 s and 1 GiB for a hostile file).

The peak is the child's own VmHWM, read by the child itself as it exits (and sampled while it
runs, to kill a runaway past `memory_cap`). Not wait4's ru_maxrss: Linux carries the parent's
peak over a fork and exec into it, so a child of a pytest process that has loaded TensorFlow
"peaks" at gigabytes before it starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_bytes: int


def _resident_peak(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# Runs `python -m bninspect ARGS` and, as the process exits, writes its own VmHWM to the file
# named by the first argument.
_REPORTING_PEAK = """
import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def write_peak():
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
atexit.register(write_peak)
sys.argv[0] = "bninspect"
runpy.run_module("bninspect", run_name="__main__", alter_sys=True)
"""


def run_bounded(*args: str, timeout: float = 60.0, memory_cap: int | None = None, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> Run:
    """`python -m bninspect ARGS`: exit code (negative for a signal), output, wall seconds and peak
    resident bytes. Killed after `timeout` seconds (a hang) or past `memory_cap` bytes."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as peak_file:
        start = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", _REPORTING_PEAK, peak_file.name, *args], stdout=out,
                                 stderr=err, cwd=cwd, env=env, start_new_session=True)
        sampled = 0
        while True:
            if child.poll() is not None:
                break
            sampled = max(sampled, _resident_peak(child.pid))
            if time.monotonic() - start > timeout or (memory_cap is not None and sampled > memory_cap):
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                break
            time.sleep(0.02)
        seconds = time.monotonic() - start
        reported = peak_file.read().strip()
        out.seek(0)
        err.seek(0)
        return Run(child.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                   seconds, max(sampled, int(reported) * 1024 if reported else 0))
