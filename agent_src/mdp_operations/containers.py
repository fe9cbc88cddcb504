"""Containers on this machine: Docker and Podman (their API sockets), LXC, and systemd-nspawn machines."""

import json
import os
import socket
import subprocess

from . import _host

# Bounds: the engine API answers in milliseconds; a hung daemon must not hold a worker for long.
API_TIMEOUT = 3.0
MAX_API_BYTES = 4 * 1024 * 1024   # /containers/json is ~1.5 KB per container: ~2500 of them
MAX_CONTAINERS = 500
PODMAN_TIMEOUT = 5.0
PROGRAM_DIRS = ["/usr/bin", "/bin", "/usr/local/bin"]
# Where the Docker-compatible API listens (Podman's service speaks the same API).
SOCKETS = (("docker", ("run", "docker.sock")), ("podman", ("run", "podman", "podman.sock")))
# LXC marks a running container by its cgroup: LXC 4+ (cgroup2) "lxc.payload.NAME"; LXC 1-3 "lxc/NAME",
# under each controller on cgroup v1 (trusty's LXC 1.0 on kernel 3.13).
_LXC_CGROUPS = (("fs", "cgroup", "lxc.payload.{}"), ("fs", "cgroup", "lxc", "{}"),
                ("fs", "cgroup", "cpu", "lxc", "{}"), ("fs", "cgroup", "systemd", "lxc", "{}"))


def _api_get(sock_path, request_path):
    """GET request_path over the engine's Unix socket (HTTP/1.0: no chunking, the server closes)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(API_TIMEOUT)
    try:
        sock.connect(sock_path)
        sock.sendall(("GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" % request_path).encode("ascii"))
        chunks, size = [], 0
        while size <= MAX_API_BYTES:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        sock.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise RuntimeError("engine API answered %s" % head.split(b"\r\n", 1)[0][:100].decode("ascii", "replace"))
    if size > MAX_API_BYTES:
        raise RuntimeError("engine API answer is larger than %d bytes" % MAX_API_BYTES)
    return json.loads(body.decode("utf-8"))


def _engine_rows(engine, entries):
    rows = []
    for entry in entries:
        names = entry.get("Names") or []
        rows.append({"engine": engine, "id": (entry.get("Id") or entry.get("ID") or "")[:12],
                     "name": names[0].lstrip("/") if names else None, "image": entry.get("Image"),
                     "state": entry.get("State"), "status": entry.get("Status")})
    return rows


def _podman_program():
    program = _host.find_program("podman", PROGRAM_DIRS)
    if program is None:
        return None
    try:
        code, out = _host.run([program, "ps", "--all", "--format", "json"], PODMAN_TIMEOUT,
                              max_output=MAX_API_BYTES, merge_stderr=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError("podman ps did not answer within %g s" % PODMAN_TIMEOUT)
    if code != 0:
        raise RuntimeError("podman ps failed (exit %d)" % code)
    return json.loads(out or "[]")


def _lxc_rows():
    rows = []
    for name in sorted(_host.listdir("var", "lib", "lxc")):
        if not os.path.isfile(_host.path("var", "lib", "lxc", name, "config")):
            continue
        running = any(os.path.isdir(_host.path("sys", *[p.format(name) for p in parts])) for parts in _LXC_CGROUPS)
        rows.append({"engine": "lxc", "id": None, "name": name, "image": None,
                     "state": "running" if running else "stopped", "status": None})
    return rows


def _machined_rows():
    rows = []
    for name in sorted(_host.listdir("run", "systemd", "machines")):
        if name.startswith("unit:"):
            continue  # the unit -> machine index files beside the machine files
        fields = dict(line.partition("=")[::2] for line in
                      _host.read_or("", "run", "systemd", "machines", name).splitlines() if "=" in line)
        if fields.get("CLASS", "container") == "container":
            rows.append({"engine": "systemd-nspawn", "id": None, "name": fields.get("NAME", name),
                         "image": fields.get("ROOT"), "state": fields.get("STATE", "running"), "status": None})
    return rows


def list():  # noqa: A001 - the operation's name is containers.list
    """Containers of every engine present: Docker, Podman, LXC, systemd-nspawn (machined).

    No arguments. Docker and Podman are asked through their API sockets (/run/docker.sock,
    /run/podman/podman.sock; Podman without its service through `podman ps`), LXC from
    /var/lib/lxc and its cgroups, nspawn from /run/systemd/machines. Returns {"engines": [names
    found], "count", "truncated", "containers": [{"engine", "id", "name", "image", "state",
    "status"}], "errors": {engine: why}} (at most 500). No engine is no error: {"engines": [],
    "count": 0, ...}. Example: {"engines": ["docker"], "count": 1, "truncated": false,
    "containers": [{"engine": "docker", "id": "4f2a9c1b7d3e", "name": "web", "image":
    "nginx:1.27", "state": "running", "status": "Up 3 hours"}], "errors": {}}.
    """
    engines, rows, errors = [], [], {}
    for engine, parts in SOCKETS:
        path = _host.path(*parts)
        if not os.path.exists(path):
            continue
        engines.append(engine)
        try:
            rows.extend(_engine_rows(engine, _api_get(path, "/containers/json?all=1")))
        except (OSError, ValueError, RuntimeError) as exc:
            errors[engine] = str(exc)[:200]
    if "podman" not in engines and _host.is_real():
        try:
            entries = _podman_program()
        except (OSError, ValueError, RuntimeError) as exc:
            engines.append("podman")
            errors["podman"] = str(exc)[:200]
        else:
            if entries is not None:
                engines.append("podman")
                rows.extend(_engine_rows("podman", entries))
    for engine, found in (("lxc", _lxc_rows()), ("systemd-nspawn", _machined_rows())):
        if found or (engine == "lxc" and _host.listdir("var", "lib", "lxc")):
            engines.append(engine)
            rows.extend(found)
    return {"engines": engines, "count": len(rows), "truncated": len(rows) > MAX_CONTAINERS,
            "containers": rows[:MAX_CONTAINERS], "errors": errors}
