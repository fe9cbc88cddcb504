"""Who this machine is and how long it has been up."""

import os
import time

from . import _host, _procfs, inline


def _os_release():
    """/etc/os-release as a dict (the freedesktop format: KEY=value, value maybe quoted)."""
    text = _host.read_or(None, "etc", "os-release")
    if text is None:
        text = _host.read_or("", "etc", "lsb-release")
    result = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[key] = value
    return result


@inline
def info():
    """Identity of this machine and agent.

    No arguments. Returns {"hostname", "kernel": {"name", "release", "version"}, "os": {"id",
    "version_id", "pretty_name", "codename"}, "arch", "cpu_count", "boot_time" (epoch seconds),
    "python" (version string), "agent_version"}.
    """
    import platform  # here, not at the top: the agent loads this family at start for ping
    try:
        from mdp_agent import __version__ as agent_version
    except ImportError:
        agent_version = None
    release = _os_release()
    stat = _procfs.stat()
    kernel = {}
    for key, name in (("name", "ostype"), ("release", "osrelease"), ("version", "version")):
        kernel[key] = _host.read_or("", "proc", "sys", "kernel", name).strip() or None
    return {
        "hostname": _host.read_or("", "proc", "sys", "kernel", "hostname").strip() or None,
        "kernel": kernel,
        "os": {
            "id": release.get("ID") or release.get("DISTRIB_ID"),
            "version_id": release.get("VERSION_ID") or release.get("DISTRIB_RELEASE"),
            "pretty_name": release.get("PRETTY_NAME") or release.get("DISTRIB_DESCRIPTION"),
            "codename": release.get("VERSION_CODENAME") or release.get("UBUNTU_CODENAME")
            or release.get("DISTRIB_CODENAME"),
        },
        "arch": os.uname()[4],
        "cpu_count": len(stat["cpus"]) or None,
        "boot_time": stat.get("btime"),
        "python": platform.python_version(),
        "agent_version": agent_version,
    }


@inline
def uptime():
    """How long the machine has been up.

    No arguments. Returns {"seconds": float, "idle_seconds": float (summed over CPUs),
    "boot_time": epoch seconds (int)}.
    """
    up, idle = (float(v) for v in _host.read("proc", "uptime").split()[:2])
    return {"seconds": up, "idle_seconds": idle, "boot_time": _procfs.stat().get("btime")}


@inline
def ping():
    """Liveness check that does no work.

    No arguments. Returns {"reply": "pong", "time": the agent's clock, epoch seconds (float)}.
    """
    return {"reply": "pong", "time": time.time()}
