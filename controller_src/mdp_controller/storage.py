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
    """Each machine (reported or known): last report time, status, whether it is up, and its latest values."""
    reader = FleetReader(path)
    try:
        return reader.machines(known_ips)
    finally:
        reader.close()


def _ip_sort_key(ip: str):
    import ipaddress
    try:
        return (0, ipaddress.ip_address(ip))
    except ValueError:
        return (1, ip)


# --- Reading for the page, /api, /metrics and `mdp status --since` ---------------------------------

# The agent's default `interval`: assumed for a machine until two reports show its own.
DEFAULT_INTERVAL_S = 60.0
# A machine is up while its newest report is younger than this many of its intervals.
UP_INTERVALS = 3
# Reports read to estimate a machine's interval (median of the gaps between them).
INTERVAL_SAMPLE = 5


def estimate_interval(times: list[float]) -> float:
    """A machine's report interval from its newest receive times: the median gap (lost reports skew it less)."""
    gaps = sorted(a - b for a, b in zip(times, times[1:]) if a > b)
    if not gaps:
        return DEFAULT_INTERVAL_S
    return gaps[len(gaps) // 2]


def is_up(last_seen: float | None, interval: float, now: float) -> bool:
    return last_seen is not None and now - last_seen <= UP_INTERVALS * interval


class FleetReader:
    """Read-only view of a monitor's database for the page, /api, /metrics and `mdp status`.

    Each machine's interval is cached and re-estimated only when it has sent INTERVAL_SAMPLE more
    reports, so a scrape of 10,000 machines costs a few queries, not 10,000.
    """

    def __init__(self, path: str | Path):
        self.path = path
        if not Path(path).exists():
            raise FileNotFoundError(f"no database at {path} (start `mdp monitor --db {path}` first)")
        # Shared by the HTTP threads under the caller's lock; read-only, so it never blocks the writer.
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self._intervals: dict[str, tuple[int, float]] = {}   # ip -> (report count when estimated, interval)

    def close(self):
        self.conn.close()

    def interval(self, ip: str, reports: int) -> float:
        cached = self._intervals.get(ip)
        if cached is not None and reports - cached[0] < INTERVAL_SAMPLE:
            return cached[1]
        times = [row[0] for row in self.conn.execute(
            "SELECT received_at FROM reports WHERE ip = ? ORDER BY received_at DESC LIMIT ?", (ip, INTERVAL_SAMPLE))]
        value = estimate_interval(times) if len(times) >= 2 else (cached[1] if cached else DEFAULT_INTERVAL_S)
        self._intervals[ip] = (reports, value)
        return value

    def machines(self, known_ips: list[str] | None = None, now: float | None = None,
                 with_latest: bool = True, ordered: bool = True, ip: str | None = None) -> list[dict]:
        """Every machine that reported (or is known): last_seen, reports, status, interval, up, latest values.

        ordered=False skips sorting by address (Prometheus does not care; 10,000 ipaddress objects cost);
        ip reads only that machine (one page of the fleet's, not all of it).
        """
        now = time.time() if now is None else now
        where, params = (" WHERE ip = ?", (ip,)) if ip is not None else ("", ())
        rows = {row["ip"]: row for row in self.conn.execute("SELECT * FROM machines" + where, params)}
        latest: dict[str, dict] = {}
        if with_latest:
            for row in self.conn.execute("SELECT ip, name, received_at, result, error FROM latest" + where, params):
                value = {"received_at": row[2]}
                if row[3] is not None:
                    value["result"] = json.loads(row[3])
                if row[4] is not None:
                    value["error"] = json.loads(row[4])
                latest.setdefault(row[0], {})[row[1]] = value
        out = []
        ips = set(rows) | (set(known_ips or []) if ip is None else set())
        for address in sorted(ips, key=_ip_sort_key) if ordered else ips:
            row = rows.get(address)
            if row is None:
                out.append({"ip": address, "first_seen": None, "last_seen": None, "reports": 0, "status": None,
                            "interval": None, "up": False, "latest": {}})
                continue
            interval = self.interval(address, row["reports"])
            out.append({"ip": address, "first_seen": row["first_seen"], "last_seen": row["last_seen"],
                        "reports": row["reports"],
                        "status": None if row["last_status"] is None else bool(row["last_status"]),
                        "interval": interval, "up": is_up(row["last_seen"], interval, now),
                        "latest": latest.get(address, {})})
        return out

    def history(self, ip: str, since: float, until: float | None = None, limit: int = 5000) -> list[dict]:
        """One machine's stored reports since a time, oldest first: [{received_at, reported_at, status, report}].

        At most `limit` rows: when more are stored in the range, every k-th is returned (spread over
        the whole range, so a chart of a week stays one page's worth).
        """
        until = time.time() if until is None else until
        count = self.conn.execute("SELECT COUNT(*) FROM reports WHERE ip = ? AND received_at BETWEEN ? AND ?",
                                  (ip, since, until)).fetchone()[0]
        step = max(1, -(-count // max(1, limit)))
        out = []
        cursor = self.conn.execute(
            "SELECT received_at, reported_at, status, body FROM reports WHERE ip = ? AND received_at BETWEEN ? AND ? "
            "ORDER BY received_at", (ip, since, until))
        for index, row in enumerate(cursor):
            if index % step:
                continue
            try:
                report = json.loads(row[3])
            except ValueError:   # stored as received; a body that is not JSON is skipped, not fatal
                continue
            out.append({"received_at": row[0], "reported_at": row[1], "status": bool(row[2]), "report": report})
        return out

    def events(self, ip: str | None = None, limit: int = 50) -> list[dict]:
        sql = "SELECT at, ip, kind, message FROM events" + (" WHERE ip = ?" if ip else "") + " ORDER BY id DESC LIMIT ?"
        return [dict(row) for row in self.conn.execute(sql, (ip, limit) if ip else (limit,))]

    def database_bytes(self) -> int:
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += Path(str(self.path) + suffix).stat().st_size
            except OSError:
                pass
        return size


# --- Retention ------------------------------------------------------------------------------------

DEFAULT_RETENTION_S = 7 * 86400
# Rows deleted per transaction: small enough that a batch (a few ms) never holds up a flush for long.
PRUNE_BATCH = 2000


def prune_reports(conn: sqlite3.Connection, older_than: float, batch: int = PRUNE_BATCH) -> int:
    """Delete up to `batch` of the oldest reports received before `older_than`; returns rows deleted.

    Reports are inserted in the order they are received, so the lowest ids are the oldest: the scan
    walks the rowid from the start and stops after `batch` rows, whatever the table's size.
    Freed pages are reused by later inserts, so the file stops growing once retention is reached.
    """
    with conn:
        cursor = conn.execute(
            "DELETE FROM reports WHERE id IN (SELECT id FROM reports ORDER BY id LIMIT ?) AND received_at < ?",
            (batch, older_than))
    return cursor.rowcount


# --- What a running monitor tells `mdp status` about itself (its page's address) -------------------

MONITOR_INFO_SCHEMA = "CREATE TABLE IF NOT EXISTS monitor_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def set_monitor_info(conn: sqlite3.Connection, values: dict[str, str | None]):
    """Record (or, for None, forget) facts about the running monitor, e.g. {"url": ..., "pid": ...}."""
    with conn:
        conn.execute(MONITOR_INFO_SCHEMA)
        for key, value in values.items():
            if value is None:
                conn.execute("DELETE FROM monitor_info WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO monitor_info VALUES (?, ?)", (key, str(value)))


def monitor_info(path: str | Path) -> dict[str, str]:
    conn = connect(path, readonly=True)
    try:
        return {row[0]: row[1] for row in conn.execute("SELECT key, value FROM monitor_info")}
    except sqlite3.OperationalError:   # a database from a monitor that never served HTTP
        return {}
    finally:
        conn.close()
