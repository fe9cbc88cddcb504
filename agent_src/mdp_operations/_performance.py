"""The cluster performance score: a pure 1-9 formula and the collector of its inputs.

The formula is written out in docs/cluster.md; cluster.performance and the cluster_info answer use it.
"""

import math
import os
import re
import socket
import struct
import time

from . import _host, _procfs, load, memory

# Hard floors: below these a machine cannot hold a synced folder, whatever else it has.
MIN_FREE_DISK = 256 * 1024 * 1024        # one ordinary upload burst would fill it
MIN_FREE_DISK_FRACTION = 0.01            # Syncthing itself stops pulling at 1 % free (minDiskFree)
MIN_AVAILABLE_MEMORY = 64 * 1024 * 1024  # Syncthing alone needs tens of MB
# Each input is scored 0..1 on a logarithmic ramp between "useless" and "plenty":
# doubling a resource adds the same amount, and more than plenty adds nothing.
RAMPS = {
    "cpu": (0.25, 8.0),                                  # idle cores
    "memory": (128 * 1024 ** 2, 8 * 1024 ** 3),          # bytes available
    "disk": (1024 ** 3, 1024 ** 4),                      # bytes free on the synced filesystem
    "network": (10.0, 10000.0),                          # Mbit/s of link not in use
}
WEIGHTS = {"disk": 0.35, "network": 0.25, "memory": 0.2, "cpu": 0.2}
UNKNOWN_LINK = 0.5     # virtual NICs report no speed: neither reward nor punish
LINK_SAMPLE_S = 0.2    # how long link use is measured for


def _ramp(value, low, high):
    if value <= low:
        return 0.0
    if value >= high:
        return 1.0
    return math.log(value / low) / math.log(high / low)


def score(inputs):
    """The 1-9 performance score from measured inputs (pure; the formula is in docs/cluster.md).

    inputs: cpu_count, load1, mem_available (bytes), disk_free, disk_total (bytes), read_only
    (bool), link_mbps (None when unknown), link_use (0..1 of the link busy, None when unknown).
    Returns (score, parts) where parts holds each 0..1 sub-score, or the floor that applied.
    """
    if inputs["read_only"]:
        return 1, {"floor": "read-only filesystem"}
    if inputs["disk_free"] < MIN_FREE_DISK or \
            inputs["disk_free"] < MIN_FREE_DISK_FRACTION * max(inputs["disk_total"], 1):
        return 1, {"floor": "almost no free disk"}
    if inputs["mem_available"] < MIN_AVAILABLE_MEMORY:
        return 1, {"floor": "almost no available memory"}
    idle_cores = max(0.0, inputs["cpu_count"] - inputs["load1"])
    parts = {
        "cpu": _ramp(idle_cores, *RAMPS["cpu"]),
        "memory": _ramp(inputs["mem_available"], *RAMPS["memory"]),
        "disk": _ramp(inputs["disk_free"], *RAMPS["disk"]),
    }
    if inputs.get("link_mbps"):
        spare = inputs["link_mbps"] * (1.0 - min(max(inputs.get("link_use") or 0.0, 0.0), 1.0))
        parts["network"] = _ramp(spare, *RAMPS["network"])
    else:
        parts["network"] = UNKNOWN_LINK
    weighted = sum(WEIGHTS[name] * parts[name] for name in WEIGHTS)
    return 1 + int(round(8 * weighted)), {k: round(v, 3) for k, v in parts.items()}  # noqa: RUF046 - 3.4


def _existing(path):
    """The nearest existing ancestor: a folder not created yet lives on its parent's filesystem."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _route_interface(ip):
    """Interface whose route covers ip (longest prefix, /proc/net/route), or None."""
    try:
        target = struct.unpack("<I", socket.inet_aton(ip))[0]
    except (OSError, TypeError):
        return None
    best = None
    for line in _host.read_or("", "proc", "net", "route").splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest, mask = int(fields[1], 16), int(fields[7], 16)   # both in host (little-endian) order
        prefix = bin(mask).count("1")  # noqa: FURB161 - int.bit_count is 3.10+
        if target & mask == dest and (best is None or prefix > best[0]):
            best = (prefix, fields[0])
    return best[1] if best else None


def _link(interface):
    """(speed in Mbit/s or None, share of it in use 0..1 or None) measured over LINK_SAMPLE_S."""
    if not interface:
        return None, None
    speed = _procfs.link_speed(interface)
    if speed is None:
        return None, None

    def octets():
        total = 0
        for name in ("rx_bytes", "tx_bytes"):
            total += int(_host.read_or("0", "sys", "class", "net", interface, "statistics", name).strip() or 0)
        return total

    first, start = octets(), time.time()
    time.sleep(LINK_SAMPLE_S)
    moved, elapsed = octets() - first, max(time.time() - start, 1e-3)
    # Full duplex: each direction has the whole speed, so busy = the busier half at most 2x.
    return speed, min(1.0, moved * 8.0 / elapsed / (speed * 1e6 * 2))


def _unescape(field):
    """Mount points in mountinfo escape space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _host_read_only(path):
    """Whether path's filesystem is read-only as the host sees it (PID 1's mount table), or None.

    The agent's own view can differ: systemd's ProtectSystem=strict mounts / read-only for the agent
    alone, while Syncthing, which does the writing, sees it read-write.
    """
    best = None
    for line in _host.read_or("", "proc", "1", "mountinfo").splitlines():
        mine, _, fs = line.partition(" - ")
        fields, fs_fields = mine.split(), fs.split()
        if len(fields) < 6 or len(fs_fields) < 3:
            continue
        point = _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):   # later mounts hide earlier ones
            best = (point, fields[5].split(",") + fs_fields[2].split(","))
    return None if best is None else "ro" in best[1]


def inputs(folder="/", ip=None):
    """Measure the score's inputs for folder (and the link that carries ip)."""
    where = _existing(folder)
    st = os.statvfs(where)
    try:
        cpu_count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpu_count = os.cpu_count() or 1
    link_mbps, link_use = _link(_route_interface(ip) if ip else None)
    read_only = _host_read_only(os.path.realpath(where))
    if read_only is None:
        read_only = bool(st.f_flag & os.ST_RDONLY) or not os.access(where, os.W_OK)
    return {
        "cpu_count": cpu_count,
        "load1": load.avg()["load1"],
        "mem_available": memory.info()["available"],
        "disk_free": st.f_bavail * st.f_frsize,
        "disk_total": st.f_blocks * st.f_frsize,
        "read_only": read_only,
        "link_mbps": link_mbps,
        "link_use": link_use,
    }


