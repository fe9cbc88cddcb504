"""Block device I/O counters from /proc/diskstats."""

from . import _host, inline

# The kernel counts sectors of 512 bytes in diskstats whatever the device's real sector size.
SECTOR = 512
# Columns after major, minor and name (Documentation/admin-guide/iostats.rst). Kernel 3.13 has
# the first 11; 4.18 added discards, 5.5 flushes.
_FIELDS = ("reads", "reads_merged", "read_sectors", "read_time_ms",
           "writes", "writes_merged", "write_sectors", "write_time_ms",
           "in_progress", "busy_time_ms", "weighted_time_ms",
           "discards", "discards_merged", "discard_sectors", "discard_time_ms",
           "flushes", "flush_time_ms")


@inline
def io(include_idle=False):
    """Cumulative I/O counters per block device since boot.

    include_idle: also list devices that never did any I/O (unused loop and ram devices).
    Returns a list of {"name", "major", "minor", "reads", "reads_merged", "read_bytes",
    "read_time_ms", "writes", "writes_merged", "write_bytes", "write_time_ms", "in_progress",
    "busy_time_ms", "weighted_time_ms"} plus "discards", "discard_bytes", ... and "flushes",
    "flush_time_ms" where the kernel reports them (4.18+, 5.5+), in kernel order.
    """
    result = []
    for line in _host.read("proc", "diskstats").splitlines():
        parts = line.split()
        if len(parts) < 14:
            continue  # pre-2.6.25 partition lines carry only four counters
        entry = {"name": parts[2], "major": int(parts[0]), "minor": int(parts[1])}
        for field, value in zip(_FIELDS, parts[3:]):
            if field.endswith("_sectors"):
                entry[field[:-len("sectors")] + "bytes"] = int(value) * SECTOR
            else:
                entry[field] = int(value)
        if include_idle or entry["reads"] or entry["writes"]:
            result.append(entry)
    return result
