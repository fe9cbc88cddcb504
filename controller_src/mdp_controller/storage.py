"""SQLite storage for reports (WAL mode): every report kept, plus the latest value of each operation."""

from __future__ import annotations

import json
import os
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


# Each report's msg_id, stored once: a report an agent sends again (its ACK was lost, or the monitor
# restarted before answering) is acknowledged again but never stored twice.
MIGRATIONS = [
    ("reports", "msg_id", "ALTER TABLE reports ADD COLUMN msg_id TEXT"),
]
INDEXES = "CREATE UNIQUE INDEX IF NOT EXISTS reports_msg_id ON reports (msg_id);"
# A storable report: a JSON object whose payload version has major number 1 (missing means 1). The
# CASE keeps SQLite from reading an invalid body as JSON at all.
VALID_REPORT = ("CASE WHEN json_valid(body) THEN json_type(body) = 'object' AND "
                "(COALESCE(CAST(json_extract(body, '$.version') AS TEXT), '1') GLOB '1' "
                "OR CAST(json_extract(body, '$.version') AS TEXT) GLOB '1.*') ELSE 0 END")


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not Path(path).exists():
            raise FileNotFoundError(f"no database at {path} (start `mdp monitor --db {path}` first)")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    else:
        # Reports reveal processes, ports and users: the file is the owner's alone (0600); SQLite
        # gives its -wal and -shm files the same mode.
        try:
            os.close(os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise sqlite3.OperationalError(f"unable to open database file: {exc.strerror}") from None
        # A locked database is waited on for 0.25 s, not sqlite3's 5 s: the receive loop must not stall;
        # the collector retries with backoff and keeps reports unacknowledged meanwhile.
        conn = sqlite3.connect(str(path), timeout=0.25, check_same_thread=False)   # used by one writer thread
        conn.execute("PRAGMA journal_mode=WAL")      # readers (mdp status) never block the collector
        conn.execute("PRAGMA synchronous=NORMAL")    # WAL + NORMAL: durable at checkpoints, fast commits
        conn.executescript(SCHEMA)
        for table, column, statement in MIGRATIONS:
            if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(statement)
        conn.executescript(INDEXES)
    conn.row_factory = sqlite3.Row
    return conn


class ReportStore:
    """Buffers verified reports and writes them in one transaction per flush (thousands per second).

    flush() returns the acknowledgement tokens of the reports its committed transaction holds: the
    collector ACKs exactly those, so an ACK always means "stored". While the disk refuses writes
    (full, locked), nothing is acknowledged and agents keep their reports spooled.
    """

    # Reports held in memory while the disk refuses writes. Past this, new reports are refused
    # unacknowledged (the agents keep them and send them again), so an outage loses nothing here.
    MAX_BUFFERED = 100_000
    # Events kept (enrolments, key mismatches): a capped table, since strangers can trigger them.
    MAX_EVENTS = 1000

    def __init__(self, path: str | Path):
        self.path = path
        self.conn = connect(path)
        self.buffer: list[tuple] = []
        self.pending: set[str] = set()   # msg_ids buffered, not yet committed
        self.refused = 0
        self.stored = 0
        self.duplicates = 0
        self.last_error: str | None = None
        self.dropped = 0                 # kept for callers that read it: nothing is dropped any more

    def add(self, ip: str, report: dict, received_at: float | None = None, text: str | None = None,
            msg_id: str | None = None, ack=None) -> bool:
        """Queue a report (text: its JSON as received, stored as is). False when the buffer is full."""
        if len(self.buffer) >= self.MAX_BUFFERED:
            self.refused += 1
            return False
        self.buffer.append((ip, received_at or time.time(), report, text, msg_id, ack))
        if msg_id is not None:
            self.pending.add(msg_id)
        return True

    def event(self, ip: str | None, kind: str, message: str):
        try:
            with self.conn:
                self.conn.execute("INSERT INTO events (at, ip, kind, message) VALUES (?,?,?,?)",
                                  (time.time(), ip, kind, message))
                self.conn.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                                  (self.MAX_EVENTS,))
        except sqlite3.Error as exc:
            self.last_error = str(exc)

    def _already_stored(self, msg_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(msg_ids), 500):
            part = msg_ids[start:start + 500]
            found.update(row[0] for row in self.conn.execute(
                f"SELECT msg_id FROM reports WHERE msg_id IN ({','.join('?' * len(part))})", part))
        return found

    def take(self) -> list:
        """The buffered reports, handed to write() (on the writer thread); the buffer starts anew."""
        batch, self.buffer = self.buffer, []
        return batch

    def restore(self, batch: list):
        """A batch write() could not store goes back in front, to be written on the next try."""
        self.buffer[:0] = batch

    def committed(self, batch: list, outcome: tuple[int, int, list]):
        """Bookkeeping after write() succeeded (on the thread that owns the buffer)."""
        stored, refused, _ = outcome
        self.pending.difference_update(row[4] for row in batch)
        self.stored += stored
        self.refused += refused
        self.duplicates += len(batch) - stored - refused
        self.last_error = None

    def write(self, batch: list) -> tuple[int, int, list]:
        """Store a batch in one transaction: (stored, refused, ack tokens of every report now held).

        The JSON of each report is read by SQLite itself (json_each, in C, without the GIL): its
        status, its time, and the newest result of each operation for `latest`. A report that is not
        a JSON object of payload major version 1 is refused (not stored, not acknowledged). Raises
        sqlite3.Error when the disk refuses; nothing is half-written (one transaction).
        """
        if not batch:
            return 0, 0, []
        known = self._already_stored([row[4] for row in batch if row[4] is not None])
        rows, seen = [], set()
        for ip, received_at, report, text, msg_id, _ in batch:
            if msg_id in known or (msg_id is not None and msg_id in seen):
                continue
            seen.add(msg_id)
            rows.append((ip, received_at, text if text is not None else json.dumps(report), msg_id))
        with self.conn:
            last = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM reports").fetchone()[0]
            self.conn.executemany(
                "INSERT INTO reports (ip, received_at, reported_at, status, body, msg_id) VALUES "
                "(?1, ?2, CASE WHEN json_valid(?3) THEN json_extract(?3, '$.reported_at') END, "
                "CASE WHEN json_valid(?3) THEN COALESCE(json_extract(?3, '$.status') = 1, 0) ELSE 0 END, ?3, ?4)",
                rows)
            bad = {row[0] for row in self.conn.execute(
                f"SELECT msg_id FROM reports WHERE id > ? AND NOT ({VALID_REPORT})", (last,))}
            if bad:
                self.conn.execute(f"DELETE FROM reports WHERE id > ? AND NOT ({VALID_REPORT})", (last,))
            self.conn.execute(
                "INSERT OR REPLACE INTO latest (ip, name, received_at, result, error) "
                "SELECT r.ip, json_extract(o.value, '$.name'), r.received_at, "
                "CASE WHEN json_type(o.value, '$.result') IS NULL THEN NULL "
                "ELSE json_quote(json_extract(o.value, '$.result')) END, "
                "CASE WHEN json_type(o.value, '$.error') IS NULL THEN NULL "
                "ELSE json_quote(json_extract(o.value, '$.error')) END "
                "FROM reports r, json_each(r.body, '$.operations') o "
                "WHERE r.id > ? AND o.type = 'object' AND json_type(o.value, '$.name') = 'text' "
                "ORDER BY r.id, o.id", (last,))
            self.conn.execute(
                "INSERT INTO machines (ip, first_seen, last_seen, reports, last_status) "
                "SELECT r.ip, MIN(r.received_at), MAX(r.received_at), COUNT(*), "
                "(SELECT r2.status FROM reports r2 WHERE r2.ip = r.ip AND r2.id > ?1 ORDER BY r2.id DESC LIMIT 1) "
                "FROM reports r WHERE r.id > ?1 GROUP BY r.ip "
                "ON CONFLICT(ip) DO UPDATE SET last_seen=excluded.last_seen, "
                "reports=reports+excluded.reports, last_status=excluded.last_status", (last,))
        acks = [row[5] for row in batch if row[5] is not None and row[4] not in bad]
        return len(rows) - len(bad), len(bad), acks

    def flush(self) -> list:
        """Write buffered reports in one transaction, here and now. Returns the ack tokens of every
        report now stored (including ones stored before, sent again); on a disk error keeps them all
        for the next flush and returns []."""
        batch = self.take()
        try:
            outcome = self.write(batch)
        except sqlite3.Error as exc:
            self.restore(batch)
            self.last_error = str(exc)
            return []
        self.committed(batch, outcome)
        return outcome[2]

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
    from .keystore import ip_sort_key
    for ip in sorted(set(machines) | set(known_ips or []), key=ip_sort_key):
        m = machines.get(ip, {})
        out.append({"ip": ip, "last_seen": m.get("last_seen"), "reports": m.get("reports", 0),
                    "status": None if m.get("last_status") is None else bool(m["last_status"]),
                    "latest": latest.get(ip, {})})
    return out
