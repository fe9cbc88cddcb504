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


def meminfo():
    """/proc/meminfo as {field: bytes} (the kernel writes kB; HugePages_* counts stay counts)."""
    result = {}
    for line in _host.read("proc", "meminfo").splitlines():
        key, _, rest = line.partition(":")
        if rest.endswith(" kB"):     # nearly every line: one int() of "   16384" and no split
            result[key.strip()] = int(rest[:-3]) * 1024
            continue
        parts = rest.split()
        if parts:
            result[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return result


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
