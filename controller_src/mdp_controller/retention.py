"""Retention: reports older than the configured period are deleted a small batch at a time.

Runs with the collector's own connection on its loop (between commits of reports), so it never
waits for a write lock and never holds one, or the loop, for more than one batch (a few milliseconds).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

from .storage import DEFAULT_RETENTION_S, PRUNE_BATCH, ReportStore, prune_reports

log = logging.getLogger("mdp.retention")

BUSY_PAUSE_S = 0.05   # between full batches while a backlog is deleted: ingest runs in the gaps
IDLE_PAUSE_S = 30.0   # once caught up: a report crosses the retention line at most this late


class Pruner:
    def __init__(self, store: ReportStore, retention_s: float = DEFAULT_RETENTION_S, batch: int = PRUNE_BATCH):
        self.store = store
        self.retention_s = retention_s
        self.batch = batch
        self.pruned = 0

    def step(self, now: float | None = None) -> int:
        """Delete one batch of expired reports; returns how many."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        deleted = prune_reports(self.store.conn, cutoff, self.batch)
        self.pruned += deleted
        return deleted

    async def run(self):
        while True:
            try:
                deleted = self.step()
            except sqlite3.Error as exc:   # a locked or full disk: try again later, ingest goes on
                log.warning("cannot prune old reports: %s", exc)
                deleted = 0
            await asyncio.sleep(BUSY_PAUSE_S if deleted >= self.batch else IDLE_PAUSE_S)
