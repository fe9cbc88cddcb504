"""State of a system service under whichever init system runs this machine."""

import os
import re
import subprocess

from . import _host

# A unit/job/script name: no "/" (no paths), no leading "-" (no options), no shell characters
# (no shell is used anyway), bounded length.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._:-]{0,127}\Z")
TIMEOUT = 5.0  # seconds any status command may take
# Where init tools are looked for; tests point this at stand-ins for upstart's initctl.
PROGRAM_DIRS = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
# Properties asked of systemd, and the ones reported back under their own names.
_SYSTEMD_PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "MainPID", "Description")
# LSB exit codes of "/etc/init.d/NAME status" (LSB core, init script actions).
_LSB = {0: "running", 1: "dead", 2: "dead", 3: "stopped", 4: "unknown"}
# "ssh start/running, process 812" / "tty1 stop/waiting"
_UPSTART = re.compile(r"^\S+ (\w+)/(\w+)(?:, process (\d+))?")


def _init_system():
    """'systemd', 'upstart' or 'sysv': what PID 1 is, as sd_booted() and initctl decide."""
    comm = _host.read_or("", "proc", "1", "comm").strip()
    if comm == "systemd" or (_host.is_real() and os.path.isdir("/run/systemd/system")):
        return "systemd"
    if comm == "init" and _host.find_program("initctl", PROGRAM_DIRS):
        code, out = _host.run([_host.find_program("initctl", PROGRAM_DIRS), "version"], TIMEOUT)
        if code == 0 and "upstart" in out:
            return "upstart"
    return "sysv"


def _systemd(name):
    argv = [_host.find_program("systemctl", PROGRAM_DIRS) or "systemctl", "show", "--no-pager",
            "--property=" + ",".join(_SYSTEMD_PROPERTIES), name]
    code, out = _host.run(argv, TIMEOUT)
    props = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
    if code != 0 or "LoadState" not in props:
        raise RuntimeError("systemctl show failed (exit %d): %s" % (code, out.strip()[:200]))
    pid = int(props.get("MainPID") or 0)
    return {
        "known": props["LoadState"] not in ("not-found", ""),
        "active": props.get("ActiveState") == "active",
        "state": props.get("ActiveState") or "unknown",
        "pid": pid or None,
        "detail": {k: props.get(k) for k in _SYSTEMD_PROPERTIES},
    }


def _upstart(name):
    code, out = _host.run([_host.find_program("initctl", PROGRAM_DIRS), "status", name], TIMEOUT)
    match = _UPSTART.match(out.strip())
    if code != 0 or not match:
        # initctl says "initctl: Unknown job: NAME" and exits 1 for a job that does not exist.
        if "Unknown job" in out:
            return {"known": False, "active": False, "state": "unknown", "pid": None,
                    "detail": {"output": out.strip()}}
        raise RuntimeError("initctl status failed (exit %d): %s" % (code, out.strip()[:200]))
    goal, state, pid = match.groups()
    return {
        "known": True,
        "active": goal == "start" and state == "running",
        "state": state,
        "pid": int(pid) if pid else None,
        "detail": {"goal": goal, "output": out.strip()},
    }


def _sysv(name):
    script = _host.path("etc", "init.d", name)
    if not os.path.isfile(script):
        return {"known": False, "active": False, "state": "unknown", "pid": None, "detail": {}}
    code, out = _host.run([script, "status"], TIMEOUT)
    return {
        "known": True,
        "active": code == 0,
        "state": _LSB.get(code, "unknown"),
        "pid": None,
        "detail": {"exit_code": code, "output": out.strip()[:500]},
    }


def status(name):
    """Whether a service is known and running, asked of the init system in use.

    name: the service (systemd unit, upstart job or /etc/init.d script), letters, digits and
    @ . _ : - only, at most 128 characters. Returns {"name", "init": "systemd"|"upstart"|"sysv",
    "known", "active" (bools), "state" (systemd ActiveState, upstart state, or LSB meaning of the
    script's exit code), "pid" (main process or null), "detail" (init-specific fields)}.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError("name must match {}".format(NAME_PATTERN.pattern))
    init = _init_system()
    try:
        result = {"systemd": _systemd, "upstart": _upstart, "sysv": _sysv}[init](name)
    except subprocess.TimeoutExpired:
        raise RuntimeError("{} did not answer about {} within {} s".format(init, name, TIMEOUT))
    result.update(name=name, init=init)
    return result
