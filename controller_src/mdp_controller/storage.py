"""SQLite storage for reports (WAL mode): every report kept, plus the latest value of each operation."""

from __future__ import annotations

import json
import json.scanner
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from mdp_agent import protocol

from .keystore import ip_sort_key

log = logging.getLogger("mdp.monitor")

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
# A storable report: a JSON object whose payload version has this protocol's major number (missing
# means ours, as protocol.check_payload_version says). The CASE keeps SQLite from reading an invalid
# body as JSON at all. ?3 is the body: the parameter of ReportStore.write's INSERT that uses it.
_MAJOR = str(protocol.PROTOCOL_VERSION)
VALID_REPORT = ("CASE WHEN json_valid(?3) THEN json_type(?3) = 'object' AND "
                f"(COALESCE(CAST(json_extract(?3, '$.version') AS TEXT), '{_MAJOR}') GLOB '{_MAJOR}' "
                f"OR CAST(json_extract(?3, '$.version') AS TEXT) GLOB '{_MAJOR}.*') ELSE 0 END")


# Checkpoints (copying the WAL back into the database file) cost the writer more than its inserts at
# high rates: SQLite runs one inside whichever commit crosses 1,000 WAL pages, and that commit waits
# for its random writes and two fsyncs (~50 us per report here at 3,000 reports/s, mostly I/O wait).
# The monitor checkpoints on a thread of its own instead, every CHECKPOINT_INTERVAL_S and PASSIVE (it
# never waits for the writer), and a page rewritten many times in an interval is copied once.
CHECKPOINT_INTERVAL_S = 1.0
# A locked database is waited on this long, not sqlite3's 5 s: the receive loop waits with it (commits
# run there); the collector retries with backoff and keeps reports unacknowledged meanwhile.
BUSY_TIMEOUT_S = 0.25
CHECKPOINT_WARN_S = 60.0   # a failing checkpoint is logged at most this often
# The WAL file is cut back to this size once a checkpoint lets SQLite start it again from the top.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


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
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)   # one thread at a time
        conn.execute("PRAGMA journal_mode=WAL")      # readers (mdp status) never block the collector
        conn.execute("PRAGMA synchronous=NORMAL")    # WAL + NORMAL: durable at checkpoints, fast commits
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
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

    def __init__(self, path: str | Path, share_intervals_with: FleetReader | None = None):
        """share_intervals_with: another reader of the same database whose interval estimates this one
        uses and adds to (one estimate per machine for both; dict operations hold the GIL)."""
        self.path = path
        self.conn = connect(path)
        self.buffer: list[tuple] = []
        self.pending: set[str] = set()   # msg_ids buffered, not yet committed
        self.refused = 0
        self.stored = 0
        self.duplicates = 0
        self.last_error: str | None = None
        self.dropped = 0                 # kept for callers that read it: nothing is dropped any more
        self.checkpoint_error: str | None = None
        self._checkpointer: tuple[threading.Thread, threading.Event] | None = None

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
        """Record an event, or nothing when the database is busy: events are the log's lines kept for
        `mdp status`, and strangers can trigger them, so they never wait for a lock (the receive
        loop would wait with them)."""
        try:
            self.conn.execute("PRAGMA busy_timeout = 0")
            with self.conn:
                self.conn.execute("INSERT INTO events (at, ip, kind, message) VALUES (?,?,?,?)",
                                  (time.time(), ip, kind, message))
                self.conn.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                                  (self.MAX_EVENTS,))
        except sqlite3.Error as exc:
            self.last_error = str(exc)
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def _already_stored(self, msg_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(msg_ids), 500):
            part = msg_ids[start:start + 500]
            found.update(row[0] for row in self.conn.execute(
                f"SELECT msg_id FROM reports WHERE msg_id IN ({','.join('?' * len(part))})", part))
        return found

    def take(self, limit: int | None = None) -> list:
        """The oldest buffered reports (all, or at most limit), handed to write(); the rest stay."""
        if limit is None or len(self.buffer) <= limit:
            batch, self.buffer = self.buffer, []
        else:
            batch, self.buffer = self.buffer[:limit], self.buffer[limit:]
        return batch

    def restore(self, batch: list):
        """A batch write() could not store goes back in front, to be written on the next try."""
        self.buffer[:0] = batch

    def committed(self, batch: list, outcome: tuple[int, int, list]):
        """Bookkeeping after write() succeeded."""
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
        a JSON object of this protocol's payload major version is refused (not stored, not acknowledged). Raises
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
            # A report that is not storable is not inserted (one statement reads the body's JSON once;
            # a second pass over the new rows to find and delete those parsed every body again).
            self.conn.executemany(
                "INSERT INTO reports (ip, received_at, reported_at, status, body, msg_id) SELECT "
                "?1, ?2, json_extract(?3, '$.reported_at'), COALESCE(json_extract(?3, '$.status') = 1, 0), ?3, ?4 "
                f"WHERE {VALID_REPORT}", rows)
            # The operations are addressed by their path in the report (o.fullkey, '$.operations[N]'),
            # not through o.value: that is each operation's JSON rendered as new text, parsed again by
            # each function reading it (41 us a report here); the body's own parse is cached.
            # An upsert rewrites the row in place; REPLACE deleted it and inserted it anew (table and
            # index pages both).
            self.conn.execute(
                "INSERT INTO latest (ip, name, received_at, result, error) "
                "SELECT r.ip, json_extract(r.body, o.fullkey || '.name'), r.received_at, "
                "CASE WHEN json_type(r.body, o.fullkey || '.result') IS NULL THEN NULL "
                "ELSE json_quote(json_extract(r.body, o.fullkey || '.result')) END, "
                "CASE WHEN json_type(r.body, o.fullkey || '.error') IS NULL THEN NULL "
                "ELSE json_quote(json_extract(r.body, o.fullkey || '.error')) END "
                "FROM reports r, json_each(r.body, '$.operations') o "
                "WHERE r.id > ? AND o.type = 'object' AND json_type(r.body, o.fullkey || '.name') = 'text' "
                "ORDER BY r.id, o.id "
                "ON CONFLICT (ip, name) DO UPDATE SET received_at = excluded.received_at, "
                "result = excluded.result, error = excluded.error", (last,))
            # Each machine's row from the new reports alone (the rowid range, in Python): a GROUP BY in
            # SQL walked the whole reports_ip_time index for it, and its last status all of a machine's
            # reports, at every flush (70 us a report at 65,000 rows, growing with the table).
            counts: dict[str, list] = {}
            stored = 0
            kept: set[str | None] = set()
            for ip, received_at, status, msg_id in self.conn.execute(
                    "SELECT ip, received_at, status, msg_id FROM reports WHERE id > ? ORDER BY id", (last,)):
                stored += 1
                kept.add(msg_id)
                machine = counts.get(ip)
                if machine is None:
                    counts[ip] = [ip, received_at, received_at, 1, status]
                else:
                    machine[1], machine[2] = min(machine[1], received_at), max(machine[2], received_at)
                    machine[3] += 1
                    machine[4] = status
            self.conn.executemany(
                "INSERT INTO machines (ip, first_seen, last_seen, reports, last_status) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(ip) DO UPDATE SET last_seen = excluded.last_seen, "
                "reports = reports + excluded.reports, last_status = excluded.last_status", counts.values())
        # Acknowledged: what is now held, stored by this batch or before it (a report sent again).
        acks = [row[5] for row in batch if row[5] is not None and (row[4] in kept or row[4] in known)]
        return stored, len(rows) - stored, acks

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

    def checkpoint_in_background(self, interval_s: float = CHECKPOINT_INTERVAL_S):
        """From now on checkpoint on a thread of its own every interval_s, not inside the writer's commits.

        A checkpoint that fails (disk full, a reader in the way) leaves the WAL as it is, complete and
        readable, and is tried again at the next interval; checkpoint_error says why meanwhile.
        """
        if self._checkpointer is not None:
            return
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        stop = threading.Event()

        def run():
            warned_at = -CHECKPOINT_WARN_S
            try:
                while not stop.wait(interval_s):
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    except Exception as exc:   # sqlite3.Error, or anything: the thread must go on
                        self.checkpoint_error = str(exc)
                        if time.monotonic() - warned_at >= CHECKPOINT_WARN_S:
                            warned_at = time.monotonic()
                            log.warning("cannot checkpoint the database's WAL (%s); it grows until a "
                                        "checkpoint succeeds, retrying every %g s", exc, interval_s)
                    else:
                        if self.checkpoint_error is not None:
                            log.info("the database's WAL is checkpointed again")
                        self.checkpoint_error = None
            finally:
                conn.close()

        thread = threading.Thread(target=run, name="mdp-checkpoint", daemon=True)
        thread.start()
        self._checkpointer = (thread, stop)

    def close(self):
        """Write what is buffered, stop the checkpointer; closing the last connection checkpoints."""
        self.flush()
        if self._checkpointer is not None:
            thread, stop = self._checkpointer
            stop.set()
            thread.join()
            self._checkpointer = None
        self.conn.close()


_SCAN = json.scanner.make_scanner(json.JSONDecoder())


def _loads(text: str):
    """json.loads of stored JSON (SQLite's json_quote: compact, valid), by the decoder's C scanner
    directly: json.loads' own layers (two regex matches, two calls) cost as much again for short text."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return json.loads(text)   # raises json's own error
    return value if end == len(text) else json.loads(text)


def machine_status(path: str | Path, known_ips: list[str] | None = None) -> list[dict]:
    """Each machine (reported or known): last report time, status, whether it is up, and its latest values."""
    reader = FleetReader(path)
    try:
        return reader.machines(known_ips)
    finally:
        reader.close()


# --- Reading for the page, /api, /metrics and `mdp status --since` ---------------------------------

# The agent's default `interval`: assumed for a machine until two reports show its own.
DEFAULT_INTERVAL_S = 60.0
# A machine is up while its newest report is younger than this many of its intervals.
UP_INTERVALS = 3
# Reports read to estimate a machine's interval (median of the gaps between them).
INTERVAL_SAMPLE = 5
# Once estimated, a machine's interval stands while its reports keep arriving this close to one
# interval apart on average (a lost report in a sample moves the average by a fifth): a query per
# machine every INTERVAL_SAMPLE reports was a tenth of the HTTP process's CPU at 10,000 machines.
INTERVAL_TOLERANCE = 0.25


def estimate_interval(times: list[float]) -> float:
    """A machine's report interval from the times of its newest reports: the median gap (lost reports skew
    it less). The times are when the agent made them (reported_at): a spooled backlog drained in one
    burst arrives at once, but was made an interval apart."""
    times = sorted(times, reverse=True)
    gaps = sorted(a - b for a, b in zip(times, times[1:]) if a > b)
    if not gaps:
        return DEFAULT_INTERVAL_S
    return gaps[len(gaps) // 2]


def is_up(last_seen: float | None, interval: float, now: float) -> bool:
    return last_seen is not None and now - last_seen <= UP_INTERVALS * interval


class FleetReader:
    """Read-only view of a monitor's database for the page, /api, /metrics and `mdp status`.

    Each machine's interval is cached and looked at again only when it has sent INTERVAL_SAMPLE more
    reports, and then estimated again only if those arrived more or less than about one interval
    apart (INTERVAL_TOLERANCE), so a scrape of 10,000 machines costs a few queries, not 10,000.
    """

    def __init__(self, path: str | Path, share_intervals_with: FleetReader | None = None):
        """share_intervals_with: another reader of the same database whose interval estimates this one
        uses and adds to (one estimate per machine for both; dict operations hold the GIL)."""
        self.path = path
        if not Path(path).exists():
            raise FileNotFoundError(f"no database at {path} (start `mdp monitor --db {path}` first)")
        # Shared by the HTTP threads under the caller's lock; read-only, so it never blocks the writer.
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        # ip -> (report count when estimated or confirmed, interval, newest report's receive time then)
        self._intervals: dict[str, tuple[int, float, float | None]] = (
            share_intervals_with._intervals if share_intervals_with is not None else {})
        self._sort_keys: dict[str, tuple] = {}               # ip -> ip_sort_key(ip): no ipaddress per request

    def close(self):
        self.conn.close()

    def interval(self, ip: str, reports: int, last_seen: float | None = None) -> float:
        """The machine's report interval (estimate_interval of its newest reports), cached (see the class).

        last_seen: its newest report's receive time, which lets a steady machine keep its estimate
        without a query."""
        cached = self._intervals.get(ip)
        # A new machine's estimate is redone at each report until it rests on a full sample: one
        # cached at its first report (the 60 s default) kept it "up" for 3 minutes after it stopped.
        if cached is not None and cached[0] >= INTERVAL_SAMPLE:
            count, value, seen = cached
            if reports - count < INTERVAL_SAMPLE:
                return value
            # The reports since arrived about one interval apart: the estimate stands. A backlog
            # drained in a burst or a new interval fall outside and are estimated again.
            if last_seen is not None and seen is not None and \
                    abs((last_seen - seen) / (reports - count) - value) <= INTERVAL_TOLERANCE * value:
                self._intervals[ip] = (reports, value, last_seen)
                return value
        times = [row[0] for row in self.conn.execute(
            "SELECT COALESCE(reported_at, received_at) FROM reports WHERE ip = ? ORDER BY received_at DESC LIMIT ?",
            (ip, INTERVAL_SAMPLE))]
        value = estimate_interval(times) if len(times) >= 2 else (cached[1] if cached else DEFAULT_INTERVAL_S)
        self._intervals[ip] = (reports, value, last_seen)
        return value

    def machines(self, known_ips: list[str] | None = None, now: float | None = None,
                 with_latest: bool = True, ordered: bool = True, ip: str | None = None,
                 ips: list[str] | None = None) -> list[dict]:
        """Every machine that reported (or is known): last_seen, reports, status, interval, up, latest values.

        ordered=False skips sorting by address (Prometheus does not care; 10,000 ipaddress objects cost);
        ip reads only that machine (one page of the fleet's, not all of it), ips only those (/metrics' batches).
        """
        now = time.time() if now is None else now
        where, params = (" WHERE ip = ?", (ip,)) if ip is not None else ("", ())
        if ips is not None:
            where, params = " WHERE ip IN (SELECT value FROM json_each(?))", (json.dumps(ips),)
        # Plain tuples (not sqlite3.Row, whose access by name costs) and the JSON decoder's own scanner:
        # 10,000 machines' rows are read for every page poll and, per scrape, for /metrics.
        cursor = self.conn.cursor()
        cursor.row_factory = None
        rows = {row[0]: row for row in cursor.execute(
            "SELECT ip, first_seen, last_seen, reports, last_status FROM machines" + where, params)}
        latest: dict[str, dict] = {}
        if with_latest:
            for address, name, received_at, result, error in cursor.execute(
                    "SELECT ip, name, received_at, result, error FROM latest" + where, params):
                value = {"received_at": received_at}
                if result is not None:
                    value["result"] = _loads(result)
                if error is not None:
                    value["error"] = _loads(error)
                by_name = latest.get(address)
                if by_name is None:
                    by_name = latest[address] = {}
                by_name[name] = value
        out = []
        addresses = set(rows) | (set(known_ips or []) if ip is None and ips is None else set())
        for address in sorted(addresses, key=self.sort_key) if ordered else addresses:
            row = rows.get(address)
            if row is None:
                out.append({"ip": address, "first_seen": None, "last_seen": None, "reports": 0, "status": None,
                            "interval": None, "up": False, "latest": {}})
                continue
            _, first_seen, last_seen, reports, last_status = row
            interval = self.interval(address, reports, last_seen)
            out.append({"ip": address, "first_seen": first_seen, "last_seen": last_seen, "reports": reports,
                        "status": None if last_status is None else bool(last_status),
                        "interval": interval, "up": is_up(last_seen, interval, now),
                        "latest": latest.get(address, {})})
        return out

    def metric_rows(self, ips: list[str], operations: list[str]) -> list[tuple]:
        """(ip, last_seen, interval, last_status, reports, {operation: latest result}) of those of these
        machines that reported: what /metrics renders, and only that (the latest results of these
        operations, errors left out), read in two queries."""
        cursor = self.conn.cursor()
        cursor.row_factory = None
        chosen = json.dumps(ips)
        results: dict[str, dict] = {}
        for address, name, result in cursor.execute(
                "SELECT ip, name, result FROM latest WHERE ip IN (SELECT value FROM json_each(?)) "
                "AND name IN (SELECT value FROM json_each(?)) AND result IS NOT NULL", (chosen, json.dumps(operations))):
            by_name = results.get(address)
            if by_name is None:
                by_name = results[address] = {}
            by_name[name] = _loads(result)
        return [(address, last_seen, self.interval(address, reports, last_seen), last_status, reports,
                 results.get(address, {}))
                for address, last_seen, reports, last_status in cursor.execute(
                    "SELECT ip, last_seen, reports, last_status FROM machines WHERE ip IN (SELECT value FROM json_each(?))",
                    (chosen,)).fetchall()]

    def sort_key(self, ip: str):
        """ip_sort_key(ip), remembered."""
        key = self._sort_keys.get(ip)
        if key is None:
            if len(self._sort_keys) > 100_000:   # bounded: known_ips come from the key store
                self._sort_keys.clear()
            key = self._sort_keys[ip] = ip_sort_key(ip)
        return key

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
