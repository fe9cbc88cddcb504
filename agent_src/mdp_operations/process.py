"""Processes: the busiest ones and how many there are."""

import pwd
import threading
import time

from . import _host, _procfs

MAX_N = 100             # bound on process.top's answer: it must fit a few datagrams
MAX_INTERVAL = 5.0      # longest first-call sampling interval (the worker pool is small)
MAX_CMDLINE = 200       # characters of each command line kept

# /proc/PID/stat state letters (fs/proc/array.c task_state_array, old and new kernels).
_STATES = {"R": "running", "S": "sleeping", "D": "disk_sleep", "Z": "zombie", "T": "stopped",
           "t": "tracing_stop", "X": "dead", "x": "dead", "I": "idle", "K": "wakekill",
           "W": "waking", "P": "parked"}

# The previous CPU sample, so each process.top by cpu measures since the last call.
_previous = {"key": None, "ticks": None, "procs": None}
_lock = threading.Lock()


def _stat(pid):
    """Fields of /proc/PID/stat after the command name, which may hold spaces and parentheses;
    (comm, fields) or None when the process is gone."""
    text = _host.read_or(None, "proc", str(pid), "stat")
    if not text:
        return None
    head, _, tail = text.rpartition(")")
    return head.partition("(")[2], tail.split()


# Indexes into the fields after the command name (proc(5) numbering minus 3).
_STATE, _UTIME, _STIME, _THREADS, _START, _RSS = 0, 11, 12, 17, 19, 21


def _snapshot():
    """({pid: (comm, fields)}, elapsed ticks per CPU so far, CPU count)."""
    stat = _procfs.stat()
    procs = {}
    for pid in _host.pids():
        parsed = _stat(pid)
        if parsed is not None:
            procs[pid] = parsed
    cpus = max(len(stat["cpus"]), 1)
    return procs, _procfs.total_ticks(stat["cpu"]) / float(cpus), cpus


def _cpu_ticks(fields):
    return int(fields[_UTIME]) + int(fields[_STIME])


def _cpu_percents(interval):
    """({pid: (comm, fields)}, {pid: percent of one CPU since the previous sample})."""
    # The lock guards only the shared sample, never the sleep (see cpu.usage).
    key = _host.identity()
    with _lock:
        old = dict(_previous) if _previous["key"] == key else None
    procs, ticks, cpus = _snapshot()
    if old is None or ticks <= old["ticks"]:
        old = {"procs": procs, "ticks": ticks}
        time.sleep(interval)
        procs, ticks, cpus = _snapshot()
    with _lock:
        if _previous["key"] != key or _previous["ticks"] is None or ticks >= _previous["ticks"]:
            _previous.update(key=key, ticks=ticks, procs=procs)
    elapsed = ticks - old["ticks"]
    percents = {}
    for pid, (comm, fields) in procs.items():
        before = old["procs"].get(pid)
        # Same pid and start time: the same process. Otherwise it is new: count from its start
        # (capped, in case it only escaped the previous sample by a race).
        if before is not None and before[1][_START] == fields[_START]:
            used = _cpu_ticks(fields) - _cpu_ticks(before[1])
        else:
            used = _cpu_ticks(fields)
        percents[pid] = round(min(100.0 * used / elapsed, 100.0 * cpus), 1) if elapsed > 0 else 0.0
    return procs, percents


def _user(pid):
    for line in _host.read_or("", "proc", str(pid), "status").splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            try:
                return pwd.getpwuid(uid).pw_name
            except KeyError:
                return str(uid)
    return None


def _cmdline(pid):
    raw = _host.read_or("", "proc", str(pid), "cmdline")
    return raw.replace("\0", " ").strip()[:MAX_CMDLINE]


def top(n=10, by="cpu", interval=0.1):
    """The n processes using the most CPU or memory.

    n: how many, 1-100. by: "cpu" (percent of one CPU since the previous call, like top) or
    "memory" (resident set size). interval: seconds to sample CPU over on the first call, at most 5.
    Returns a list of {"pid", "name", "user", "state", "cpu_percent", "rss" (bytes),
    "memory_percent", "threads", "cmdline" (first 200 characters)}, busiest first.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise ValueError("n must be an integer from 1 to %d" % MAX_N)
    if by not in ("cpu", "memory"):
        raise ValueError('by must be "cpu" or "memory", not {!r}'.format(by))
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
            or not 0 < interval <= MAX_INTERVAL:
        raise ValueError("interval must be a number of seconds in (0, {}]".format(MAX_INTERVAL))
    procs, percents = _cpu_percents(interval)
    page = _host.page_size()
    total_memory = _procfs.meminfo(("MemTotal",)).get("MemTotal", 0)
    rows = []
    for pid, (comm, fields) in procs.items():
        rss = int(fields[_RSS]) * page
        rows.append({
            "pid": pid,
            "name": comm,
            "state": _STATES.get(fields[_STATE], fields[_STATE]),
            "cpu_percent": percents.get(pid, 0.0),
            "rss": rss,
            "memory_percent": round(100.0 * rss / total_memory, 1) if total_memory else 0.0,
            "threads": int(fields[_THREADS]),
        })
    key = "cpu_percent" if by == "cpu" else "rss"
    rows.sort(key=lambda r: (-r[key], r["pid"]))
    rows = rows[:n]
    for row in rows:
        row["user"] = _user(row["pid"])
        row["cmdline"] = _cmdline(row["pid"])
    return rows


def count():
    """How many processes and threads there are, by state.

    No arguments. Returns {"total", "threads", "by_state": {"running", "sleeping", "zombie", ...:
    count}} (only states that occur appear).
    """
    total = threads = 0
    by_state = {}
    for pid in _host.pids():
        parsed = _stat(pid)
        if parsed is None:
            continue
        fields = parsed[1]
        total += 1
        threads += int(fields[_THREADS])
        state = _STATES.get(fields[_STATE], fields[_STATE])
        by_state[state] = by_state.get(state, 0) + 1
    return {"total": total, "threads": threads, "by_state": by_state}
