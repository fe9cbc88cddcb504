"""Whether the clock is synchronised, as the kernel's NTP state says, and which daemon keeps it."""

from . import _host

# Process names (comm, at most 15 characters) of the time daemons, in the order reported.
DAEMONS = ("systemd-timesyn", "chronyd", "ntpd", "openntpd", "ntpdate")
# adjtimex(2): status bits and the clock states it returns.
_STA_UNSYNC = 0x0040
_STA_NANO = 0x2000
TIMEDATECTL_TIMEOUT = 3.0   # a D-Bus round trip to timedated; bounded like every program run
_CLOCK_STATES = {0: "ok", 1: "insert_leap", 2: "delete_leap", 3: "leap_in_progress", 4: "leap_done", 5: "error"}


def _adjtimex():
    """(clock state code, struct timex as a dict) read with modes=0, which needs no privilege."""
    import ctypes  # here, not at import: the agent's start-up pays only for what runs
    import ctypes.util

    class Timex(ctypes.Structure):
        # struct timex from <sys/timex.h>: longs are the platform's, padding as the C ABI lays it.
        _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                    ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                    ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                    ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                    ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
                    ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
                    ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
                    ("reserved", ctypes.c_int * 11)]

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    timex = Timex()
    state = libc.adjtimex(ctypes.byref(timex))
    if state < 0:
        raise OSError(ctypes.get_errno(), "adjtimex failed")
    return state, {name: getattr(timex, name) for name in ("offset", "maxerror", "esterror", "status")}


def _timedatectl_synchronized():
    """systemd's NTPSynchronized (True/False), or None without timedatectl or an answer."""
    program = _host.find_program("timedatectl")
    if program is None:
        return None
    try:
        code, out = _host.run([program, "show", "--property=NTPSynchronized", "--value"], TIMEDATECTL_TIMEOUT,
                              merge_stderr=False)
    except Exception:  # noqa: BLE001 - a missing answer is null, not a failed operation
        return None
    return {"yes": True, "no": False}.get(out.strip()) if code == 0 else None


def sync():
    """Is the clock synchronised, by how much is it off, and which time daemon runs.

    No arguments. The kernel's NTP state (adjtimex) is what timesyncd, chronyd and ntpd all set,
    so one answer covers each. Returns {"synchronized": bool, "clock_state": "ok"|"error"|...,
    "offset_seconds", "max_error_seconds", "estimated_error_seconds", "daemon": the running
    daemon's process name or null, "daemon_pid"}. Example: {"synchronized": true, "clock_state":
    "ok", "offset_seconds": -0.000021, "max_error_seconds": 0.0145, "estimated_error_seconds":
    0.000008, "daemon": "chronyd", "daemon_pid": 611}. Reading a fixture tree, the kernel fields are null.
    Where a container's seccomp filter refuses adjtimex, the kernel fields are null, "kernel_error"
    says why, and "synchronized" is systemd's NTPSynchronized (timedatectl) or null.
    """
    running = _host.processes_named(DAEMONS)
    daemon = next((name for name in DAEMONS if name in running), None)
    result = {"synchronized": None, "clock_state": None, "offset_seconds": None, "max_error_seconds": None,
              "estimated_error_seconds": None, "daemon": daemon, "daemon_pid": running.get(daemon)}
    if not _host.is_real():
        return result  # a recorded tree describes another machine's processes, not its clock
    try:
        state, timex = _adjtimex()
    except OSError as exc:
        # Containers' seccomp filters (systemd-nspawn, Docker) refuse adjtimex even to read:
        # then ask systemd, which keeps the kernel's answer, and say why the numbers are missing.
        result.update(synchronized=_timedatectl_synchronized(), kernel_error=str(exc))
        return result
    unit = 1e-9 if timex["status"] & _STA_NANO else 1e-6
    result.update(
        synchronized=state != 5 and not timex["status"] & _STA_UNSYNC,
        clock_state=_CLOCK_STATES.get(state, str(state)),
        offset_seconds=round(timex["offset"] * unit, 9),
        max_error_seconds=round(timex["maxerror"] * 1e-6, 6),
        estimated_error_seconds=round(timex["esterror"] * 1e-6, 6),
    )
    return result
