"""SQLite report storage: batches, latest values, machine status, exactly-once storage, a failing disk."""

import os
import sqlite3
import stat
import threading

from integration.harness import wait_for

from mdp_controller.storage import ReportStore, connect, machine_status


def report(load1, status=True):
    ops = [{"name": "load.avg", "result": {"load1": load1}}]
    if not status:
        ops.append({"name": "service.status", "error": {"code": "failed", "message": "boom"}})
    return {"status": status, "version": "2.0", "operations": ops, "cluster_info": {}}


def test_reports_are_stored_and_latest_values_kept(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.add("10.0.0.5", report(0.5), received_at=100.0, msg_id="01", ack="a")
    store.add("10.0.0.5", report(0.7, status=False), received_at=101.0, msg_id="02", ack="b")
    store.add("10.0.0.6", report(1.5), received_at=102.0, msg_id="03", ack="c")
    assert store.flush() == ["a", "b", "c"] and store.stored == 3
    assert connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = {r["ip"]: r for r in machine_status(db, known_ips=["10.0.0.7"])}
    assert rows["10.0.0.5"]["reports"] == 2 and rows["10.0.0.5"]["status"] is False
    assert rows["10.0.0.5"]["latest"]["load.avg"]["result"] == {"load1": 0.7}
    assert rows["10.0.0.5"]["latest"]["service.status"]["error"]["code"] == "failed"
    assert rows["10.0.0.6"]["last_seen"] == 102.0
    assert rows["10.0.0.7"] == {"ip": "10.0.0.7", "first_seen": None, "last_seen": None, "reports": 0, "status": None,
                                "interval": None, "up": False, "latest": {}}
    store.close()


def test_a_report_sent_again_is_acknowledged_again_but_stored_once_even_across_restarts(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.add("10.0.0.5", report(0.5), msg_id="aa", ack="first")
    assert store.flush() == ["first"]
    store.close()
    again = ReportStore(db)   # the monitor restarted: nothing in memory remembers "aa"
    again.add("10.0.0.5", report(0.5), msg_id="aa", ack="second")
    again.add("10.0.0.5", report(0.6), msg_id="bb", ack="third")
    assert again.flush() == ["second", "third"]
    assert (again.stored, again.duplicates) == (1, 1)
    assert connect(db).execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 2
    assert machine_status(db)[0]["reports"] == 2


def test_a_failing_disk_keeps_reports_for_the_next_flush_and_acknowledges_nothing(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.add("10.0.0.5", report(0.1), msg_id="01", ack="x")
    blocker = sqlite3.connect(str(db), timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")          # the database refuses writes, as a full disk would
    store.conn.execute("PRAGMA busy_timeout=0")
    assert store.flush() == [] and store.last_error and len(store.buffer) == 1
    assert "01" in store.pending
    blocker.rollback()
    blocker.close()
    assert store.flush() == ["x"] and store.last_error is None and not store.pending
    assert machine_status(db)[0]["reports"] == 1


def test_a_full_buffer_refuses_new_reports_instead_of_dropping_acknowledgeable_ones(tmp_path, monkeypatch):
    store = ReportStore(tmp_path / "mdp.db")
    monkeypatch.setattr(ReportStore, "MAX_BUFFERED", 3)
    accepted = [store.add("10.0.0.5", report(i), msg_id="%02d" % i, ack=i) for i in range(5)]
    assert accepted == [True, True, True, False, False] and store.refused == 2
    assert store.flush() == [0, 1, 2]


def test_the_database_is_private_to_its_owner(tmp_path):
    old = os.umask(0o022)
    try:
        db = tmp_path / "mdp.db"
        store = ReportStore(db)
        store.add("10.0.0.5", report(1), msg_id="01")
        store.flush()
    finally:
        os.umask(old)
    for path in tmp_path.glob("mdp.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_events_are_a_capped_table(tmp_path, monkeypatch):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    monkeypatch.setattr(ReportStore, "MAX_EVENTS", 10)
    for i in range(50):
        store.event("10.0.0.5", "pending", "offer %d" % i)
    rows = [r[0] for r in connect(db).execute("SELECT message FROM events ORDER BY id")]
    assert len(rows) == 10 and rows[-1] == "offer 49"


def test_an_old_database_without_msg_ids_is_migrated(tmp_path):
    db = tmp_path / "mdp.db"
    old = sqlite3.connect(str(db))
    old.execute("CREATE TABLE reports (id INTEGER PRIMARY KEY, ip TEXT NOT NULL, received_at REAL NOT NULL, "
                "reported_at REAL, status INTEGER, body TEXT NOT NULL)")
    old.execute("INSERT INTO reports (ip, received_at, status, body) VALUES ('10.0.0.5', 1, 1, '{}')")
    old.commit()
    old.close()
    store = ReportStore(db)
    store.add("10.0.0.5", report(1), msg_id="01", ack="ok")
    assert store.flush() == ["ok"]
    assert connect(db).execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 2


def test_reports_that_are_not_version_2_objects_are_refused_without_spoiling_the_batch(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.add("10.0.0.5", None, text="not json", msg_id="01", ack="bad1")
    store.add("10.0.0.5", None, text='{"version": "1.0", "operations": []}', msg_id="02", ack="bad2")
    store.add("10.0.0.5", None, text="[1, 2]", msg_id="03", ack="bad3")
    store.add("10.0.0.5", None, text='{"status": true, "version": "2.7", "operations": '
              '[{"name": "ping", "result": "pong"}, 7, {"name": 3}]}', msg_id="04", ack="good")
    assert store.flush() == ["good"] and (store.stored, store.refused) == (1, 3)
    [row] = machine_status(db)
    assert row["reports"] == 1 and row["status"] is True and row["latest"] == {
        "ping": {"received_at": row["last_seen"], "result": "pong"}}


def test_a_monitor_checkpoints_on_its_own_thread_not_inside_the_writers_commits(tmp_path):
    """With checkpoint_in_background the writer's commits only append to the WAL; the checkpointer
    thread copies it into the database file on its interval; close() stops it."""
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.checkpoint_in_background(interval_s=3600)   # not yet: first show that commits leave the file alone
    assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    size_before = db.stat().st_size
    for batch in range(30):   # ~2,000 WAL pages, twice SQLite's own checkpoint threshold
        for i in range(40):
            store.add("10.0.%d.%d" % (batch, i), report(i), msg_id="%02d-%02d" % (batch, i), ack=i)
        store.flush()
    assert db.stat().st_size == size_before, "a commit checkpointed by itself"
    store.close()
    assert not [t for t in threading.enumerate() if t.name == "mdp-checkpoint"]

    store = ReportStore(db)
    for i in range(200):
        store.add("10.1.0.%d" % i, report(i), msg_id="again-%d" % i, ack=i)
    store.conn.execute("PRAGMA wal_autocheckpoint=0")
    store.flush()
    size_before = db.stat().st_size
    store.checkpoint_in_background(interval_s=0.05)
    wait_for(lambda: db.stat().st_size > size_before, "the checkpointer to copy the WAL into the database",
             timeout=20)
    assert store.checkpoint_error is None
    store.close()
    assert machine_status(db) and connect(db).execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 1400


def test_an_event_is_not_recorded_rather_than_waited_for_while_the_database_is_locked(tmp_path):
    """Events run on the receive loop and strangers can trigger them: a lock must not hold them up."""
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    blocker = sqlite3.connect(str(db))
    blocker.execute("BEGIN EXCLUSIVE")
    store.event("10.0.0.5", "pending", "while locked")
    assert "locked" in (store.last_error or "")
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 250   # reports still wait 0.25 s
    blocker.rollback()
    blocker.close()
    store.event("10.0.0.5", "pending", "after")
    assert [r[0] for r in connect(db).execute("SELECT message FROM events")] == ["after"]
