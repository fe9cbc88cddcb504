"""A backlog (reports buffered while the database refused writes) is committed a batch at a time.

A real Collector, key store and SQLite file; signed reports fed by hand; the transport is a list.
"""

import asyncio
import os
import sqlite3
import time

from mdp_agent import protocol
from mdp_controller import collector as collector_module
from mdp_controller.collector import Collector
from mdp_controller.keystore import KeyStore
from mdp_controller.storage import ReportStore, connect

AGENT = ("192.0.2.7", 5000)
BODY = protocol.dump_json({"status": True, "version": "2.0", "operations": [{"name": "ping", "result": "pong"}]})


class Sent(list):
    def sendto(self, data, addr):
        self.append((addr, data))


def backlog(tmp_path, reports):
    """A collector holding `reports` verified reports that a locked database refused, unacknowledged."""
    key_text = protocol.generate_key_text()
    keystore = KeyStore(tmp_path / "km")
    keystore.put(AGENT[0], key_text)
    keys = protocol.KeyPair.from_text(key_text)
    db = tmp_path / "mdp.db"
    monitor = Collector(keystore, ReportStore(str(db)))
    sent = Sent()
    monitor.connection_made(sent)
    blocker = sqlite3.connect(str(db))
    blocker.execute("BEGIN EXCLUSIVE")
    for _ in range(reports):
        [datagram] = protocol.encode_message(protocol.REPORT, BODY, keys.to_controller, os.urandom(8),
                                             int(time.time() * 1000))
        monitor.handle(datagram, AGENT)
    monitor.flush()
    assert len(monitor.store.buffer) == reports and not sent   # refused: nothing stored, nothing ACKed
    blocker.rollback()
    blocker.close()
    monitor._next_flush = 0.0   # the retry is due
    return monitor, sent, db


def rows(db):
    return connect(db).execute("SELECT COUNT(*) FROM reports").fetchone()[0]


def test_a_backlog_is_committed_a_batch_at_a_time_with_the_loop_running_between(tmp_path, monkeypatch):
    monkeypatch.setattr(collector_module, "FLUSH_BATCH", 10)
    monitor, sent, db = backlog(tmp_path, 25)
    sizes = []
    write = monitor.store.write
    monkeypatch.setattr(monitor.store, "write", lambda batch: sizes.append(len(batch)) or write(batch))
    seen = []   # rows stored, as another task on the loop sees them

    async def recover():
        async def probe():
            while True:
                seen.append(rows(db))
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(probe())
        await asyncio.sleep(0)
        monitor.flush()
        deadline = time.monotonic() + 10
        while monitor.store.buffer and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(recover())
    assert sizes == [10, 10, 5] and {10, 20} <= set(seen)   # the loop ran between the transactions
    assert rows(db) == 25 and len(sent) == 25 and not monitor.store.buffer


def test_close_writes_the_whole_backlog(tmp_path, monkeypatch):
    monkeypatch.setattr(collector_module, "FLUSH_BATCH", 10)
    monitor, sent, db = backlog(tmp_path, 25)
    monitor.close()
    assert rows(db) == 25 and len(sent) == 25 and not monitor.store.buffer
