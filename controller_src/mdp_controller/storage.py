"""SQLite storage for reports (WAL mode): every report kept, plus the latest value of each operation."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS machines (
    ip TEXT PRIMARY KEY, first_seen REAL NOT NULL, last_seen REAL NOT NULL, reports INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY, ip TEXT NOT NULL, received_at REAL NOT NULL, reported_at REAL, status INTEGER,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reports_ip_time ON reports (ip, received_at);
CREATE TABLE IF NOT EXISTS latest (
    ip TEXT NOT NULL, name TEXT NOT NULL, received_at REAL NOT NULL, result TEXT, error TEXT,
    PRIMARY KEY (ip, name));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, ip TEXT, kind TEXT NOT NULL, message TEXT NOT NULL);
"""


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not Path(path).exists():
            raise FileNotFoundError(f"no database at {path} (start `mdp monitor --db {path}` first)")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    else:
        conn = sqlite3.connect(str(path))
        conn.execute("PRAGMA journal_mode=WAL")      # readers (mdp status) never block the collector
        conn.execute("PRAGMA synchronous=NORMAL")    # WAL + NORMAL: durable at checkpoints, fast commits
        conn.executescript(SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


class ReportStore:
    """Buffers verified reports and writes them in one transaction per flush (thousands per second)."""

    # Reports held in memory while the disk refuses writes (full disk, locked db). Past this the oldest
    # are dropped and counted, so a long outage costs samples, not the collector.
    MAX_BUFFERED = 100_000

    def __init__(self, path: str | Path):
        self.path = path
        self.conn = connect(path)
        self.buffer: list[tuple[str, float, dict, str | None]] = []
        self.dropped = 0
        self.stored = 0
        self.last_error: str | None = None

    def add(self, ip: str, report: dict, received_at: float | None = None, text: str | None = None):
        """Queue a report; text is its JSON as received (stored as is, not encoded again)."""
        self.buffer.append((ip, received_at or time.time(), report, text))
        if len(self.buffer) > self.MAX_BUFFERED:
            del self.buffer[0]
            self.dropped += 1

    def event(self, ip: str | None, kind: str, message: str):
        try:
            with self.conn:
                self.conn.execute("INSERT INTO events (at, ip, kind, message) VALUES (?,?,?,?)",
                                  (time.time(), ip, kind, message))
        except sqlite3.Error as exc:
            self.last_error = str(exc)

    def flush(self) -> int:
        """Write buffered reports; on a disk error keep them for the next flush. Returns rows written."""
        if not self.buffer:
            return 0
        batch = self.buffer
        reports, newest, machines = [], {}, {}
        for ip, received_at, report, text in batch:
            status = 1 if report.get("status") else 0
            reports.append((ip, received_at, report.get("reported_at"), status, text or json.dumps(report)))
            for item in report.get("operations") or []:
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    newest[(ip, item["name"])] = (received_at, item)   # only the newest is encoded
            count = machines.get(ip, (0, 0, 0))[0] + 1
            machines[ip] = (count, received_at, status)
        latest = [(ip, name, at, json.dumps(item["result"]) if "result" in item else None,
                   json.dumps(item["error"]) if "error" in item else None)
                  for (ip, name), (at, item) in newest.items()]
        try:
            with self.conn:
                self.conn.executemany(
                    "INSERT INTO reports (ip, received_at, reported_at, status, body) VALUES (?,?,?,?,?)", reports)
                self.conn.executemany("INSERT OR REPLACE INTO latest VALUES (?,?,?,?,?)", latest)
                self.conn.executemany(
                    "INSERT INTO machines (ip, first_seen, last_seen, reports, last_status) VALUES (?,?,?,?,?) "
                    "ON CONFLICT(ip) DO UPDATE SET last_seen=excluded.last_seen, "
                    "reports=reports+excluded.reports, last_status=excluded.last_status",
                    [(ip, at, at, n, st) for ip, (n, at, st) in machines.items()])
        except sqlite3.Error as exc:
            self.last_error = str(exc)
            return 0
        self.buffer = self.buffer[len(batch):]
        self.last_error = None
        self.stored += len(batch)
        return len(batch)

    def close(self):
        self.flush()
        self.conn.close()


def machine_status(path: str | Path, known_ips: list[str] | None = None) -> list[dict]:
    """Each machine (reported or known): last report time, status, and its latest values."""
    conn = connect(path, readonly=True)
    try:
        machines = {row["ip"]: dict(row) for row in conn.execute("SELECT * FROM machines")}
        latest: dict[str, dict] = {}
        for row in conn.execute("SELECT * FROM latest ORDER BY name"):
            value = {"received_at": row["received_at"]}
            if row["result"] is not None:
                value["result"] = json.loads(row["result"])
            if row["error"] is not None:
                value["error"] = json.loads(row["error"])
            latest.setdefault(row["ip"], {})[row["name"]] = value
    finally:
        conn.close()
    out = []
    for ip in sorted(set(machines) | set(known_ips or []), key=_ip_sort_key):
        m = machines.get(ip, {})
        out.append({"ip": ip, "last_seen": m.get("last_seen"), "reports": m.get("reports", 0),
                    "status": None if m.get("last_status") is None else bool(m["last_status"]),
                    "latest": latest.get(ip, {})})
    return out


def _ip_sort_key(ip: str):
    import ipaddress
    try:
        return (0, ipaddress.ip_address(ip))
    except ValueError:
        return (1, ip)
