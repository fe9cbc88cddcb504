"""Space and inodes of mounted filesystems."""

import os
import re

from . import _host

# /proc/filesystems marks filesystems that need no block device "nodev": proc, tmpfs, cgroup...
# Those are pseudo filesystems, except ZFS, which holds real data in pools rather than on one device.
_NODEV_BUT_REAL = frozenset(("zfs",))
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field):
    """/proc/mounts writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _real_types():
    real = set(_NODEV_BUT_REAL)
    for line in _host.read_or("", "proc", "filesystems").splitlines():
        parts = line.split()
        if len(parts) == 1:
            real.add(parts[0])
    return real


def _mounts():
    """[(device, mountpoint, fstype, options list)] in mount order."""
    mounts = []
    for line in _host.read("proc", "mounts").splitlines():
        parts = line.split()
        if len(parts) >= 4:
            mounts.append((_unescape(parts[0]), _unescape(parts[1]), parts[2], parts[3].split(",")))
    return mounts


def _usage(device, mountpoint, fstype, options, stat_path):
    st = os.statvfs(stat_path)
    total = st.f_blocks * st.f_frsize
    free = st.f_bfree * st.f_frsize
    available = st.f_bavail * st.f_frsize
    used = total - free
    # As df: the share of what non-root users can use, so a full disk reads 100%.
    usable = used + available
    return {
        "device": device,
        "mountpoint": mountpoint,
        "fstype": fstype,
        "read_only": "ro" in options,
        "total": total,
        "used": used,
        "free": free,
        "available": available,
        "percent": round(100.0 * used / usable, 1) if usable else 0.0,
        "inodes_total": st.f_files,
        "inodes_free": st.f_ffree,
    }


def usage(path=None):
    """Space and inodes of real mounted filesystems (pseudo ones such as proc and tmpfs skipped).

    path: optional absolute path; then only the filesystem holding it is reported (any type).
    Returns a list of {"device", "mountpoint", "fstype", "read_only", "total", "used", "free",
    "available" (bytes; available is what non-root users may use), "percent" (0-100, as df),
    "inodes_total", "inodes_free"} sorted by mount point.
    """
    mounts = _mounts()
    if path is not None:
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise ValueError("path must be an absolute path")
        if not os.path.exists(path):
            raise ValueError("path does not exist: {}".format(path))
        real = os.path.realpath(path)
        # The last mount on the longest matching mount point is the one that is visible.
        best = None
        for mount in mounts:
            point = mount[1].rstrip("/") + "/"
            if (real + "/").startswith(point) and (best is None or len(mount[1]) >= len(best[1])):
                best = mount
        if best is None:
            raise ValueError("no mount found for {}".format(path))
        return [_usage(best[0], best[1], best[2], best[3], real)]
    real_types = _real_types()
    visible = {}
    for device, point, fstype, options in mounts:
        if fstype in real_types:
            visible[point] = (device, point, fstype, options)
        else:
            visible.pop(point, None)  # a pseudo filesystem mounted over a real one hides it
    result = []
    for point in sorted(visible):
        try:
            result.append(_usage(*(visible[point] + (point,))))
        except OSError:
            continue  # unmounted meanwhile, or not ours to see
    return result
