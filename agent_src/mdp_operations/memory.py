"""Memory and swap from /proc/meminfo."""

from . import _host, _procfs, inline

# What info() and _estimate_available() read of /proc/meminfo.
FIELDS = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "Shmem", "SReclaimable", "SwapTotal",
          "SwapFree", "SwapCached", "Active(file)", "Inactive(file)")


def _low_watermark_bytes():
    """Sum of every zone's low watermark (/proc/zoneinfo, in pages) in bytes."""
    pages = 0
    for line in _host.read_or("", "proc", "zoneinfo").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "low":
            pages += int(parts[1])
    return pages * _host.page_size()


def _estimate_available(mem):
    """MemAvailable as kernel 3.14 computes it (si_mem_available), for kernels that lack it.

    free - low, plus the page cache and reclaimable slab minus what must stay cached:
      available = MemFree - low
                + pagecache - min(pagecache / 2, low)       pagecache = Active(file) + Inactive(file)
                + SReclaimable - min(SReclaimable / 2, low)
    where low is the sum of the zones' low watermarks. Same formula as procps and psutil.
    """
    low = _low_watermark_bytes()
    pagecache = mem.get("Active(file)", 0) + mem.get("Inactive(file)", 0)
    slab = mem.get("SReclaimable", 0)
    available = mem["MemFree"] - low
    available += pagecache - min(pagecache // 2, low)
    available += slab - min(slab // 2, low)
    return max(available, 0)


@inline
def info():
    """Memory and swap use, in bytes.

    No arguments. Returns {"total", "free", "available", "used", "buffers", "cached", "shared",
    "slab_reclaimable", "percent" (share not available, 0-100), "available_estimated" (true when
    the kernel has no MemAvailable, as 3.13 / Ubuntu 14.04, and it was computed from zoneinfo),
    "swap": {"total", "free", "used", "cached", "percent"}}.
    """
    mem = _procfs.meminfo(FIELDS)
    total, free = mem["MemTotal"], mem["MemFree"]
    buffers, cached = mem.get("Buffers", 0), mem.get("Cached", 0)
    estimated = "MemAvailable" not in mem
    available = _estimate_available(mem) if estimated else mem["MemAvailable"]
    available = min(available, total)
    swap_total, swap_free = mem.get("SwapTotal", 0), mem.get("SwapFree", 0)
    return {
        "total": total,
        "free": free,
        "available": available,
        # procps's classic "used": what is neither free nor easily given back.
        "used": max(total - free - buffers - cached, 0),
        "buffers": buffers,
        "cached": cached,
        "shared": mem.get("Shmem", 0),
        "slab_reclaimable": mem.get("SReclaimable", 0),
        "percent": round(100.0 * (total - available) / total, 1) if total else 0.0,
        "available_estimated": estimated,
        "swap": {
            "total": swap_total,
            "free": swap_free,
            "used": swap_total - swap_free,
            "cached": mem.get("SwapCached", 0),
            "percent": round(100.0 * (swap_total - swap_free) / swap_total, 1) if swap_total else 0.0,
        },
    }
