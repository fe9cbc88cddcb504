"""Kernel settings (sysctl values from /proc/sys) and loaded modules (/proc/modules)."""

import re

from . import _host, inline

# What operators look at first: forwarding, SYN cookies, overcommit, swappiness, limits, ASLR.
DEFAULT_SYSCTLS = (
    "fs.file-max", "fs.file-nr", "kernel.pid_max", "kernel.threads-max", "kernel.panic",
    "kernel.randomize_va_space", "kernel.dmesg_restrict", "kernel.kptr_restrict",
    "net.core.somaxconn", "net.ipv4.ip_forward", "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies", "net.ipv4.conf.all.rp_filter", "net.ipv6.conf.all.forwarding",
    "vm.overcommit_memory", "vm.swappiness", "vm.dirty_ratio", "vm.max_map_count",
)
# sysctl names: dotted words; no "..", no "/", so a name can only reach a file under /proc/sys.
SYSCTL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_][A-Za-z0-9_-]*){0,7}\Z")
MAX_NAMES = 64          # one request's worth; `sysctl -a` has ~1000 and is not what this is for
MAX_VALUE_CHARS = 4096  # some values are tables (e.g. kernel.sched_domain); cut them


def sysctl(names=None):
    """Selected kernel settings as `sysctl NAME` prints them.

    names: list of sysctl names (at most 64, e.g. ["vm.swappiness", "net.ipv4.ip_forward"]);
    omitted: a default set (forwarding, syncookies, overcommit, swappiness, file and pid limits,
    ASLR...). Returns {name: value text, or null when the kernel has no such setting or it cannot
    be read}. Example: {"net.ipv4.ip_forward": "0", "vm.swappiness": "60",
    "net.ipv4.ip_local_port_range": "32768\\t60999"}.
    """
    if names is None:
        names = DEFAULT_SYSCTLS
    if not isinstance(names, (list, tuple)) or not names or len(names) > MAX_NAMES:
        raise ValueError("names must be a list of 1 to %d sysctl names" % MAX_NAMES)
    result = {}
    for name in names:
        if not isinstance(name, str) or len(name) > 128 or not SYSCTL_NAME.match(name):
            raise ValueError("not a sysctl name: {!r}".format(name))
        value = _host.read_or(None, "proc", "sys", *name.split("."))
        result[name] = None if value is None else value.strip()[:MAX_VALUE_CHARS]
    return result


@inline
def modules():
    """Loaded kernel modules, from /proc/modules (as lsmod).

    No arguments. Returns {"count", "modules": [{"name", "size" (bytes), "instances" (use count),
    "used_by": [names], "state": "Live"|"Loading"|"Unloading"}]} sorted by name. Example:
    {"count": 2, "modules": [{"name": "ext4", "size": 1003520, "instances": 2, "used_by": [],
    "state": "Live"}, {"name": "mbcache", "size": 16384, "instances": 1, "used_by": ["ext4"], ...}]}.
    """
    rows = []
    for line in _host.read_or("", "proc", "modules").splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        used_by = [n for n in parts[3].split(",") if n and n != "-"]
        rows.append({"name": parts[0], "size": int(parts[1]), "instances": int(parts[2]), "used_by": used_by,
                     "state": parts[4]})
    rows.sort(key=lambda r: r["name"])
    return {"count": len(rows), "modules": rows}
