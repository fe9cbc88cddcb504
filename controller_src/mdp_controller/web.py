"""`mdp monitor --http`: /metrics for Prometheus, the live fleet page at /, and the JSON API under /api/.

Read-only: GET and HEAD only; nothing here writes to the database or talks to agents. `mdp monitor`
runs it in a child process (start_process) with its own read-only SQLite connection (WAL: readers
never block the writer), so a long scrape never takes CPU from the collector's receive loop. On loopback it answers anyone on this host; on any other address a token
is required (`--http-token-file`), sent as `Authorization: Bearer TOKEN` (Prometheus'
`authorization.credentials_file`) or as the password of HTTP Basic auth (what a browser prompts for).
docs/monitor.md describes every route.
"""

from __future__ import annotations

import base64
import gc
import hmac
import ipaddress
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .metrics import FleetMetrics
from .storage import is_up

log = logging.getLogger("mdp.http")

# The classic text format every Prometheus since 2.0 reads (newer clients label their output 1.0.0,
# which Debian's 2.42 does not know; with MDP's plain metric names both are the same bytes).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_HTTP_PORT = 9123
DEFAULT_HTTP_ADDRESS = f"127.0.0.1:{DEFAULT_HTTP_PORT}"
MIN_TOKEN_CHARS = 16
# History one /api request returns at most; longer ranges come back thinned evenly (storage.history).
MAX_HISTORY_POINTS = 2000
HISTORY_DEFAULT_S = 3600
SUMMARY_BATCH = 500   # machines read per query for /api/machines' rows
# The page's own files; nothing else on disk is ever served.
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "app.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class HttpConfigError(Exception):
    """A bad --http address or token file: printed as the monitor's error, nothing is started."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False   # a name: it could resolve anywhere


def read_token(path: str | Path) -> str:
    """The token from a file only its owner may read (like an SSH key), at least MIN_TOKEN_CHARS long."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        token = path.read_text().strip()
    except OSError as exc:
        raise HttpConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise HttpConfigError(f"the token file {path} is readable by others (mode {mode:04o}); chmod 600 it")
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise HttpConfigError(f"the token in {path} must be at least {MIN_TOKEN_CHARS} characters without spaces")
    return token


def check_exposure(listen: tuple[str, int], token: str | None):
    """Refuse to serve the fleet's data on a non-loopback address without a token."""
    if token is None and not is_loopback(listen[0]):
        raise HttpConfigError(f"--http {listen[0]}:{listen[1]} is not a loopback address: give --http-token-file "
                              "(anyone who can reach it could read the fleet's data)")


def _latest_result(latest: dict, name: str):
    return latest.get(name, {}).get("result")


def machine_summary(machine: dict) -> dict:
    """The numbers of one row of the fleet page, from a machine's latest values."""
    latest = machine.get("latest", {})
    out = {key: machine.get(key) for key in ("ip", "up", "last_seen", "first_seen", "interval", "reports", "status")}
    load = _latest_result(latest, "load.avg")
    out["load1"] = load.get("load1") if isinstance(load, dict) else None
    mem = _latest_result(latest, "memory.info")
    out["memory_used_ratio"] = None
    if isinstance(mem, dict) and isinstance(mem.get("total"), int | float) and mem["total"] > 0 \
            and isinstance(mem.get("available"), int | float):
        out["memory_used_ratio"] = round(1 - mem["available"] / mem["total"], 4)
    out["disk_used_ratio"], out["disk_mountpoint"] = None, None
    for fs in _latest_result(latest, "filesystem.usage") or []:
        if not isinstance(fs, dict) or not isinstance(fs.get("total"), int | float) or not fs["total"] > 0:
            continue
        if not isinstance(fs.get("available"), int | float):
            continue
        used = round(1 - fs["available"] / fs["total"], 4)   # the share no longer available to users
        if out["disk_used_ratio"] is None or used > out["disk_used_ratio"]:
            out["disk_used_ratio"], out["disk_mountpoint"] = used, fs.get("mountpoint")
    info = _latest_result(latest, "system.info")
    out["hostname"] = info.get("hostname") if isinstance(info, dict) else None
    out["agent_version"] = info.get("agent_version") if isinstance(info, dict) else None
    out["errors"] = sorted(name for name, value in latest.items() if "error" in value)
    return out


def history_point(entry: dict) -> dict:
    """One report as a chart point: load averages, memory, and each filesystem's used share."""
    point = {"t": entry["received_at"], "status": entry["status"]}
    by_name = {item.get("name"): item.get("result") for item in entry["report"].get("operations") or []
               if isinstance(item, dict)}
    load = by_name.get("load.avg")
    if isinstance(load, dict):
        point.update({k: load.get(k) for k in ("load1", "load5", "load15")})
    mem = by_name.get("memory.info")
    if isinstance(mem, dict):
        point["memory_total"], point["memory_available"] = mem.get("total"), mem.get("available")
    disks = {}
    for fs in by_name.get("filesystem.usage") or []:
        if isinstance(fs, dict) and isinstance(fs.get("total"), int | float) and fs["total"] > 0 \
                and isinstance(fs.get("available"), int | float):
            disks[str(fs.get("mountpoint"))] = round(1 - fs["available"] / fs["total"], 4)
    if disks:
        point["disk_used_ratio"] = disks
    return point


class FleetHttp:
    """What the handler needs: the metrics collector (which owns the read connection), the token, the monitor."""

    def __init__(self, db: str, token: str | None, monitor: Callable[[], dict | None]):
        self.metrics = FleetMetrics(db, monitor)
        self.token = token.encode() if token else None
        self.monitor = monitor
        self.started = time.time()
        self._summaries: dict[str, tuple[int, dict]] = {}   # ip -> (reports then, its page row): summaries()

    def authorised(self, header: str | None) -> bool:
        if self.token is None:
            return True
        offered = b""
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer":
                offered = value.strip().encode()
            elif scheme.lower() == "basic":
                try:
                    offered = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
                except ValueError:
                    offered = b""
        return hmac.compare_digest(offered, self.token)

    def summaries(self) -> list[dict]:
        """Every machine's row of the fleet page, in address order.

        A machine's row follows from its latest values, which change only with its reports: so it
        is kept with the report count it was made at, and made again only for machines with new
        reports (the page polls every 2 s; a fleet of 10,000 reporting every 10 s has a fifth of
        them new). `up` is decided now, from the kept last_seen and interval.
        """
        now = time.time()
        with self.metrics.lock:
            reader = self.metrics.reader
            counts = dict(reader.conn.execute("SELECT ip, reports FROM machines").fetchall())
            kept = self._summaries
            changed = [ip for ip, reports in counts.items() if kept.get(ip, (None,))[0] != reports]
            for start in range(0, len(changed), SUMMARY_BATCH):
                for machine in reader.machines(ordered=False, ips=changed[start:start + SUMMARY_BATCH]):
                    kept[machine["ip"]] = (machine["reports"], machine_summary(machine))
            for ip in [ip for ip in kept if ip not in counts]:
                del kept[ip]
            out = []
            for ip in sorted(kept, key=reader.sort_key):
                row = dict(kept[ip][1])
                row["up"] = is_up(row["last_seen"], row["interval"], now)
                out.append(row)
            return out

    def api_machines(self) -> dict:
        monitor = {"started": self.started, **(self.monitor() or {})}
        return {"now": time.time(), "monitor": monitor, "machines": self.summaries()}

    def api_machine(self, ip: str) -> dict | None:
        with self.metrics.lock:
            found = self.metrics.reader.machines(ip=ip)
            events = self.metrics.reader.events(ip, limit=20) if found else []
        if not found:
            return None
        machine = found[0]
        return {"now": time.time(), "machine": dict(machine_summary(machine), latest=machine["latest"]),
                "events": events}

    def api_history(self, ip: str, query: dict) -> dict:
        now = time.time()
        since = now - _float(query, "seconds", HISTORY_DEFAULT_S)
        if "since" in query:
            since = _float(query, "since", since)
        limit = int(min(MAX_HISTORY_POINTS, max(1, _float(query, "limit", MAX_HISTORY_POINTS))))
        with self.metrics.lock:
            rows = self.metrics.reader.history(ip, since, now, limit=limit)
        return {"now": now, "ip": ip, "since": since, "points": [history_point(row) for row in rows]}


def _float(query: dict, name: str, default: float) -> float:
    try:
        value = float(query[name][0])
    except (KeyError, IndexError, ValueError):
        return default
    return value if value == value and abs(value) != float("inf") else default


class Handler(BaseHTTPRequestHandler):
    server_version = "mdp-monitor"
    sys_version = ""
    app: FleetHttp   # set on the subclass made by start()

    def log_message(self, format, *args):   # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head: bool = False):
        if not self.app.authorised(self.headers.get("Authorization")):
            self._send(HTTPStatus.UNAUTHORIZED, b"a token is required\n", "text/plain; charset=utf-8", head,
                       {"WWW-Authenticate": 'Basic realm="mdp monitor", charset="UTF-8"'})
            return
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        try:
            if path == "/metrics":
                self._send(HTTPStatus.OK, self.app.metrics.exposition(), METRICS_CONTENT_TYPE, head)
            elif path in ("/", "/index.html"):
                self._static("index.html", head)
            elif path.startswith("/static/") and path[len("/static/"):] in STATIC_FILES:
                self._static(path[len("/static/"):], head)
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8", head)
            elif path == "/api/machines":
                self._json(self.app.api_machines(), head)
            elif path.startswith("/api/machines/"):
                self._api_machine(path[len("/api/machines/"):], query, head)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _api_machine(self, rest: str, query: dict, head: bool):
        ip, _, tail = rest.partition("/")
        if tail == "history":
            self._json(self.app.api_history(ip, query), head)
            return
        found = self.app.api_machine(ip) if not tail else None
        if found is None:
            self._json({"error": f"no machine {ip} in the database"}, head, HTTPStatus.NOT_FOUND)
        else:
            self._json(found, head)

    def do_POST(self):
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only\n", "text/plain; charset=utf-8", False,
                   {"Allow": "GET, HEAD"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _static(self, name: str, head: bool):
        body = resources.files("mdp_controller").joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, body, STATIC_FILES[name], head)

    def _json(self, obj, head: bool, status=HTTPStatus.OK):
        body = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str).encode()
        self._send(status, body, "application/json", head)

    def _send(self, status, body: bytes, content_type: str, head: bool, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def start(listen: tuple[str, int], db: str, token: str | None,
          monitor: Callable[[], dict | None] = lambda: None) -> tuple[ThreadingHTTPServer, str]:
    """Serve in a daemon thread; returns (server, page URL). Refuses a non-loopback address without a token."""
    check_exposure(listen, token)
    host, port = listen
    app = FleetHttp(db, token, monitor)
    app.metrics.start_refresher()   # renders machines as they report, so a scrape only catches up
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = (_Server6 if ":" in host else _Server)((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="mdp-http", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_address[1]}/"
    return server, url


def process_alive(pid_text: str | None) -> bool:
    """Whether the monitor that recorded its page is still running (mdp status runs where the database is)."""
    try:
        os.kill(int(pid_text or ""), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


# --- Its own process, beside the collector -----------------------------------------------------------
# A scrape of a large fleet is seconds of Python: in the collector's process it would hold the GIL
# that the receive loop needs, and reports would overflow the socket buffer meanwhile. So the HTTP
# side runs in a child process with its own interpreter and read-only connection; the monitor's
# counters come from the parent over a pipe, asked for once per scrape or API call.

CHILD_READY_TIMEOUT_S = 30.0
SNAPSHOT_TIMEOUT_S = 2.0
# The HTTP process's cyclic garbage collector runs after this many net new objects, not CPython's 700:
# rendering a batch of machines (and /api/machines' rows) keeps its rows alive while it allocates,
# and at 700 the collections walking them again and again were a third of the rendering's CPU
# (10,000 machines, in-process: 240-260 -> 170-200 us a machine). Almost all of it is freed by
# reference counting anyway; cycles wait a little longer.
HTTP_GC_THRESHOLD = 10_000
PARENT_CHECK_S = 1.0   # the child exits this soon after the monitor dies, however it died


def start_process(listen: tuple[str, int], db: str, token: str | None, snapshot: Callable[[], dict]):
    """Start the HTTP side in a child process; returns (process, URL). Call from the monitor's running loop."""
    import asyncio
    import multiprocessing

    check_exposure(listen, token)
    context = multiprocessing.get_context("spawn")   # a fresh interpreter: nothing of the loop or its sockets
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_child, args=(listen, str(db), token, child_end, os.getpid()),
                              name="mdp-http", daemon=True)
    process.start()
    child_end.close()
    if not parent_end.poll(CHILD_READY_TIMEOUT_S):
        process.kill()
        raise OSError(f"the HTTP process did not start within {CHILD_READY_TIMEOUT_S:g} s")
    kind, detail = parent_end.recv()
    if kind != "ready":
        process.join(5)
        raise OSError(detail)   # cmd_monitor prints it as "cannot listen on ADDR:PORT (http): ..."
    loop = asyncio.get_running_loop()

    def answer():
        try:
            while parent_end.poll():
                parent_end.recv()
                parent_end.send(snapshot())
        except (EOFError, OSError):   # the child is gone: the monitor goes on collecting without a page
            loop.remove_reader(parent_end.fileno())
            log.error("the HTTP process exited (%s); /metrics and the page are down", process.exitcode)

    loop.add_reader(parent_end.fileno(), answer)
    log.info("monitor page and /metrics on %s%s (process %d)", detail, " (token required)" if token else "",
             process.pid)
    return process, detail


def _child(listen, db, token, conn, parent_pid):
    gc.set_threshold(HTTP_GC_THRESHOLD, *gc.get_threshold()[1:])
    lock = threading.Lock()

    def remote_snapshot():
        with lock:
            try:
                conn.send("snapshot")
                return conn.recv() if conn.poll(SNAPSHOT_TIMEOUT_S) else None
            except (EOFError, OSError):
                return None

    try:
        server, url = start(listen, db, token, monitor=remote_snapshot)
    except (OSError, HttpConfigError) as exc:
        conn.send(("error", getattr(exc, "strerror", None) or str(exc)))
        return
    conn.send(("ready", url))
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    server.shutdown()
    os._exit(0)
