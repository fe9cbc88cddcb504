"""Parsers for /proc and /sys files that more than one family reads."""

from . import _host

# /proc/stat cpu columns in kernel order. Kernels before 2.6.33 stop early (no guest_nice),
# 2.6.11 and older earlier still; missing columns count as 0. guest and guest_nice are already
# included in user and nice, so totals leave them out to avoid counting them twice.
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
TOTAL_FIELDS = CPU_FIELDS[:8]


def stat():
    """/proc/stat as {"cpu": {field: ticks}, "cpus": {index: {field: ticks}}, "btime": int, ...}."""
    result = {"cpu": None, "cpus": {}}
    for line in _host.read("proc", "stat").splitlines():
        parts = line.split()
        if not parts:
            continue
        key = parts[0]
        if key.startswith("cpu"):
            values = [int(v) for v in parts[1:]] + [0] * len(CPU_FIELDS)
            times = dict(zip(CPU_FIELDS, values))
            if key == "cpu":
                result["cpu"] = times
            else:
                result["cpus"][int(key[3:])] = times
        elif len(parts) == 2 and parts[1].isdigit():
            result[key] = int(parts[1])
    return result


def total_ticks(times):
    return sum(times[f] for f in TOTAL_FIELDS)


def meminfo(fields=None):
    """/proc/meminfo as {field: bytes} (the kernel writes kB; HugePages_* counts stay counts).

    fields: only those (the ones present), each found by one str.find instead of parsing all ~55
    lines: memory.info needs a dozen, and the parse was most of its CPU (bench_throughput).
    """
    text = _host.read("proc", "meminfo")
    if fields is None:
        result = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if rest.strip():
                result[key.strip()] = _meminfo_value(rest)
        return result
    text = "\n" + text   # every field then starts after a newline, so "Cached" never matches "SwapCached"
    result = {}
    for field in fields:
        start = text.find("\n" + field + ":")
        if start >= 0:
            start += len(field) + 2
            end = text.find("\n", start)
            rest = text[start:end if end >= 0 else len(text)]
            if rest.strip():
                result[field] = _meminfo_value(rest)
    return result


def _meminfo_value(rest):
    """The bytes of one meminfo value, "   16384 kB" (or a bare count: "      0")."""
    if rest.endswith(" kB"):     # nearly every line: one int() of "   16384" and no split
        return int(rest[:-3]) * 1024
    parts = rest.split()
    return int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)


# What drivers print for "speed unknown": SPEED_UNKNOWN is -1, printed unsigned by kernels
# before 4.x (4294967295), and 65535 by some older drivers.
UNKNOWN_SPEEDS = (65535, 4294967295)


def link_speed(interface):
    """Mbit/s of an interface from /sys/class/net/NAME/speed, or None when the driver does not know.

    Virtual NICs answer EINVAL or -1; kernel 3.13 prints -1 as 4294967295.
    """
    text = _host.read_or("", "sys", "class", "net", interface, "speed").strip()
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value <= 0 or value in UNKNOWN_SPEEDS else value
