"""CPU utilisation from /proc/stat tick counters."""

import threading
import time

from . import _host, _procfs

# Longest first-call sampling interval we accept: operations share a small worker pool.
MAX_INTERVAL = 5.0

# The previous sample, so each call measures the time since the last one (like top's refresh).
_previous = {"key": None, "stat": None, "at": None}
_lock = threading.Lock()


def _busy_percent(old, new):
    """Busy percentage between two cpu rows, or None when no tick elapsed."""
    total = _procfs.total_ticks(new) - _procfs.total_ticks(old)
    if total <= 0:
        return None
    idle = (new["idle"] + new["iowait"]) - (old["idle"] + old["iowait"])
    return round(100.0 * (total - idle) / total, 1)


def _sample_pair(interval):
    """(old_stat, new_stat, seconds between them); sleeps interval when there is no usable old one."""
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) \
            or not 0 < interval <= MAX_INTERVAL:
        raise ValueError("interval must be a number of seconds in (0, {}]".format(MAX_INTERVAL))
    # The lock guards only the shared sample, never the sleep: concurrent calls sample side by side
    # instead of queueing behind each other's intervals on the worker pool.
    key = _host.identity()
    with _lock:
        old, at = (_previous["stat"], _previous["at"]) if _previous["key"] == key else (None, None)
    new, now = _procfs.stat(), time.time()
    if old is None or _procfs.total_ticks(new["cpu"]) <= _procfs.total_ticks(old["cpu"]):
        old, at = new, now
        time.sleep(interval)
        new, now = _procfs.stat(), time.time()
    with _lock:
        if _previous["key"] != key or _previous["at"] is None or now >= _previous["at"]:
            _previous.update(key=key, stat=new, at=now)
    return old, new, now - at


def usage(interval=0.1):
    """CPU busy percentage, overall and per CPU, since the previous call.

    interval: seconds to sample over when there is no previous sample (first call), at most 5.
    Returns {"percent": float 0-100, "per_cpu": [float, ...] by CPU index, "times_percent":
    {"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"}, "cpu_count",
    "seconds": how long the measurement covers}. Idle includes iowait in "percent".
    """
    old, new, seconds = _sample_pair(interval)
    total = _procfs.total_ticks(new["cpu"]) - _procfs.total_ticks(old["cpu"])
    times = {}
    for field in _procfs.TOTAL_FIELDS:
        delta = new["cpu"][field] - old["cpu"][field]
        times[field] = round(100.0 * delta / total, 1) if total > 0 else 0.0
    per_cpu = []
    for index in sorted(new["cpus"]):
        # A CPU that came online between samples has no old row: it has no measurement yet.
        if index in old["cpus"]:
            per_cpu.append(_busy_percent(old["cpus"][index], new["cpus"][index]) or 0.0)
    return {
        "percent": _busy_percent(old["cpu"], new["cpu"]) or 0.0,
        "per_cpu": per_cpu,
        "times_percent": times,
        "cpu_count": len(new["cpus"]),
        "seconds": round(seconds, 3),
    }
