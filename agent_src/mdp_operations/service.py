"""System services under whichever init system runs this machine: their state, and control.

start/stop/restart/reload are mutating: the agent refuses them unless enable_mutating is on.
"""

import os
import re
import subprocess

from . import NotAvailable, _host, mutating

# A unit/job/script name: no "/" (no paths), no leading "-" (no options), no shell characters
# (no shell is used anyway), bounded length.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._:-]{0,127}\Z")
TIMEOUT = 5.0  # seconds any status command may take
# Seconds a start/stop/restart/reload may take: under the agent's default operation_timeout (10 s),
# so the reply says what happened instead of "timeout"; a unit slower than this is left running.
CONTROL_TIMEOUT = 8.0
ACTIONS = ("start", "stop", "restart", "reload")
# Bound on the service list: a host has a few hundred units; a reply is chunked datagrams.
MAX_SERVICES = 1000
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
    _check_name(name)
    init = _init_system()
    try:
        result = {"systemd": _systemd, "upstart": _upstart, "sysv": _sysv}[init](name)
    except subprocess.TimeoutExpired:
        raise RuntimeError("{} did not answer about {} within {} s".format(init, name, TIMEOUT))
    result.update(name=name, init=init)
    return result


def _check_name(name):
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError("name must match {}".format(NAME_PATTERN.pattern))


def _control(action, name):
    """Run action on name with the init system in use; returns the status afterwards."""
    _check_name(name)
    init = _init_system()
    if init == "systemd":
        argv = [_host.find_program("systemctl", PROGRAM_DIRS) or "systemctl", action, name]
    elif init == "upstart":
        argv = [_host.find_program("initctl", PROGRAM_DIRS), action, name]
    else:
        script = _host.path("etc", "init.d", name)
        if not os.path.isfile(script):
            raise ValueError("no /etc/init.d script named {}".format(name))
        argv = [script, action]
    try:
        code, out = _host.run(argv, CONTROL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError("{} {} {} did not finish within {} s".format(init, action, name, CONTROL_TIMEOUT))
    if code != 0:
        raise RuntimeError("{} {} {} failed (exit {}): {}".format(init, action, name, code, out.strip()[:300]))
    result = status(name)
    result["action"] = action
    return result


@mutating
def start(name):
    """Start a service (mutating: refused unless the agent's config sets enable_mutating = true).

    name: as for service.status. Runs `systemctl start`, `initctl start` or `/etc/init.d/NAME start`
    (at most 8 s) and returns service.status's answer afterwards plus "action": "start".
    Example: {"name": "cron", "init": "systemd", "known": true, "active": true, "state": "active",
    "pid": 412, "detail": {...}, "action": "start"}.
    """
    return _control("start", name)


@mutating
def stop(name):
    """Stop a service (mutating). name: as for service.status; returns its status afterwards plus "action"."""
    return _control("stop", name)


@mutating
def restart(name):
    """Restart a service (mutating). name: as for service.status; returns its status afterwards plus "action".

    Example: {"name": "cron", "active": true, "pid": 4242 (the new main process), "action": "restart", ...}.
    """
    return _control("restart", name)


@mutating
def reload(name):
    """Reload a service's configuration (mutating). name: as for service.status; returns its status plus "action"."""
    return _control("reload", name)


def _systemctl(*args):
    # (a tuple concatenation: this module's list() is the operation service.list)
    argv = [_host.find_program("systemctl", PROGRAM_DIRS) or "systemctl"] + [a for a in args]
    code, out = _host.run(argv, TIMEOUT)
    if code != 0:
        raise RuntimeError("systemctl %s failed (exit %d): %s" % (args[0], code, out.strip()[:200]))
    return out


def _systemd_units(*args):
    """systemctl list-units rows as {"name", "load", "active", "sub", "description"}."""
    rows = []
    for line in _systemctl("list-units", "--no-legend", "--no-pager", "--plain", *args).splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 4:
            rows.append({"name": parts[0], "load": parts[1], "active": parts[2], "sub": parts[3],
                         "description": parts[4] if len(parts) > 4 else ""})
    return rows


def failed():
    """Units systemd holds as failed (systemd only; upstart and sysv keep no such state).

    No arguments. Returns {"init": "systemd", "count", "units": [{"name", "load", "active", "sub",
    "description"}]}. Example: {"init": "systemd", "count": 1, "units": [{"name": "nginx.service",
    "load": "loaded", "active": "failed", "sub": "failed", "description": "A high performance..."}]}.
    Error "not_available" under upstart or sysv.
    """
    init = _init_system()
    if init != "systemd":
        raise NotAvailable("{} keeps no failed state; ask service.list or service.status".format(init))
    units = _systemd_units("--failed", "--all")
    return {"init": init, "count": len(units), "units": units[:MAX_SERVICES]}


def _upstart_jobs():
    code, out = _host.run([_host.find_program("initctl", PROGRAM_DIRS), "list"], TIMEOUT)
    if code != 0:
        raise RuntimeError("initctl list failed (exit %d): %s" % (code, out.strip()[:200]))
    rows = []
    for line in out.splitlines():
        match = _UPSTART.match(line.strip())
        if match:
            goal, state, pid = match.groups()
            rows.append({"name": line.split()[0], "active": goal == "start" and state == "running",
                         "state": state, "pid": int(pid) if pid else None})
    return rows


def list():  # noqa: A001 - the operation's name is service.list
    """Every service the init system knows, with its state.

    No arguments. Returns {"init", "count", "truncated", "services": [...]}: under systemd each is
    {"name", "load", "active", "sub", "description"} (systemctl list-units --type=service --all);
    under upstart {"name", "active", "state", "pid"} (initctl list); under sysv {"name", "active":
    null, "state": null} for each /etc/init.d script (asking each script would run them all).
    At most 1000 services. Example: {"init": "systemd", "count": 2, "truncated": false, "services":
    [{"name": "cron.service", "load": "loaded", "active": "active", "sub": "running",
    "description": "Regular background program processing daemon"}, ...]}.
    """
    init = _init_system()
    if init == "systemd":
        rows = _systemd_units("--type=service", "--all")
    elif init == "upstart":
        rows = _upstart_jobs()
    else:
        rows = [{"name": n, "active": None, "state": None}
                for n in sorted(_host.listdir("etc", "init.d")) if NAME_PATTERN.match(n) and n != "README"]
    return {"init": init, "count": len(rows), "truncated": len(rows) > MAX_SERVICES,
            "services": rows[:MAX_SERVICES]}
