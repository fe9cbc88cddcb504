"""Run-queue load averages."""

from . import _host, inline


@inline
def avg():
    """Load averages from /proc/loadavg.

    No arguments. Returns {"load1", "load5", "load15" (floats), "runnable" (tasks running now),
    "tasks" (all tasks), "last_pid"}.
    """
    parts = _host.read("proc", "loadavg").split()
    runnable, _, tasks = parts[3].partition("/")
    return {
        "load1": float(parts[0]),
        "load5": float(parts[1]),
        "load15": float(parts[2]),
        "runnable": int(runnable),
        "tasks": int(tasks),
        "last_pid": int(parts[4]),
    }
