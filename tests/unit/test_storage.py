"""SQLite report storage: batches, latest values, machine status, and surviving a failing disk."""

import sqlite3

from mdp_controller.storage import ReportStore, connect, machine_status


def report(load1, status=True):
    ops = [{"name": "load.avg", "result": {"load1": load1}}]
    if not status:
        ops.append({"name": "service.status", "error": {"code": "failed", "message": "boom"}})
    return {"status": status, "version": "1.0", "operations": ops, "cluster_info": {}}


def test_reports_are_stored_and_latest_values_kept(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.add("10.0.0.5", report(0.5), received_at=100.0)
    store.add("10.0.0.5", report(0.7, status=False), received_at=101.0)
    store.add("10.0.0.6", report(1.5), received_at=102.0)
    assert store.flush() == 3
    assert connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = {r["ip"]: r for r in machine_status(db, known_ips=["10.0.0.7"])}
    assert rows["10.0.0.5"]["reports"] == 2 and rows["10.0.0.5"]["status"] is False
    assert rows["10.0.0.5"]["latest"]["load.avg"]["result"] == {"load1": 0.7}
    assert rows["10.0.0.5"]["latest"]["service.status"]["error"]["code"] == "failed"
    assert rows["10.0.0.6"]["last_seen"] == 102.0
    assert rows["10.0.0.7"] == {"ip": "10.0.0.7", "first_seen": None, "last_seen": None, "reports": 0, "status": None,
                                "interval": None, "up": False, "latest": {}}
    store.close()


def test_a_failing_disk_keeps_reports_for_the_next_flush(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.add("10.0.0.5", report(0.1))
    blocker = sqlite3.connect(str(db), timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")          # the database refuses writes, as a full disk would
    store.conn.execute("PRAGMA busy_timeout=0")
    assert store.flush() == 0 and store.last_error and len(store.buffer) == 1
    blocker.rollback()
    blocker.close()
    assert store.flush() == 1 and store.last_error is None
    assert machine_status(db)[0]["reports"] == 1


def test_buffer_is_bounded(tmp_path, monkeypatch):
    store = ReportStore(tmp_path / "mdp.db")
    monkeypatch.setattr(ReportStore, "MAX_BUFFERED", 3)
    for i in range(5):
        store.add("10.0.0.5", report(i))
    assert len(store.buffer) == 3 and store.dropped == 2
