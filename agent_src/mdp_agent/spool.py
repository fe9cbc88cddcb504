"""The agent's report spool: every report stays here until the monitor acknowledges it.

Reports are delivered at least once: a report is kept (in memory and as a file in the state dir,
so a restarted agent still has it) until the monitor's ACK says a committed transaction holds it,
and is sent again with backoff until then. The monitor stores each msg_id once, so a report sent
twice is stored once.

Files are written without fsync: they survive the agent being killed, not the machine losing power
(a report is a sample, not a transaction; the disk is not worth waiting on every interval).

Must run on Python 3.4, standard library only.
"""

import binascii
import errno
import logging
import os
import random
from collections import OrderedDict

log = logging.getLogger("mdp_agent")

SPOOL_DIR = "spool"
# 4 MiB of unacknowledged reports: at the default 60 s interval (about 1.5 KiB a report) that is two
# days of monitor outage, at 1 s about 45 minutes. Beyond it, and beyond a day, the oldest fall off
# (counted in agent.stats): a report that old describes a machine as it no longer is.
SPOOL_MAX_BYTES = 4 * 1024 * 1024
SPOOL_MAX_AGE_S = 24 * 3600
# Resend an unacknowledged report after 2 s (CoAP's ACK_TIMEOUT), doubling to at most 30 s, each
# wait stretched by up to 1.5x at random so a fleet does not resend in step.
REPORT_RETRY_FIRST_S = 2.0
REPORT_RETRY_MAX_S = 30.0
REPORT_RETRY_RANDOM = 1.5
# Reports resent per second at most, so a backlog drains at a pace the monitor can take when it comes
# back to a whole fleet at once (10,000 agents x 20/s is still only a burst of the backlog).
SPOOL_RESENDS_PER_S = 20


class _Spooled(object):
    __slots__ = ("msg_id", "payload", "created_s", "attempts", "due", "path")

    def __init__(self, msg_id, payload, created_s, due, path):
        self.msg_id, self.payload, self.created_s, self.due, self.path = msg_id, payload, created_s, due, path
        self.attempts = 0


class ReportSpool(object):
    def __init__(self, directory, max_bytes=SPOOL_MAX_BYTES, max_age_s=SPOOL_MAX_AGE_S, rng=None):
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.rng = rng or random.Random()
        self.size = 0
        self.dropped = 0          # fell off (too old, or over the byte bound)
        self.write_errors = 0
        self._items = OrderedDict()   # msg_id -> _Spooled, oldest first

    def __len__(self):
        return len(self._items)

    # --- persistence ------------------------------------------------------------------------------

    def load(self, wall_s, now):
        """Read reports a previous run left unacknowledged; they are due at once."""
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.error("report spool %s is unreadable: %s", self.directory, exc)
            return 0
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                created_ms, msg_hex = name[:-len(".json")].split("-")
                msg_id = binascii.unhexlify(msg_hex)
                if not name.endswith(".json") or len(msg_id) != 8:
                    raise ValueError(name)
                with open(path, "rb") as handle:
                    payload = handle.read(self.max_bytes + 1)
            except (ValueError, TypeError, binascii.Error, OSError):
                continue   # temporary files of an interrupted write, or not ours
            self._add(_Spooled(msg_id, payload, int(created_ms) / 1000.0, now, path))
        self._trim(wall_s)
        return len(self._items)

    def _write(self, entry):
        name = "%013d-%s.json" % (int(entry.created_s * 1000), binascii.hexlify(entry.msg_id).decode("ascii"))
        path = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, ".tmp-" + name)
        try:
            if not os.path.isdir(self.directory):
                os.makedirs(self.directory, 0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, entry.payload)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            entry.path = path
        except OSError as exc:   # a full or read-only disk: the report is still kept in memory
            self.write_errors += 1
            if self.write_errors == 1 or self.write_errors % 100 == 0:
                log.error("cannot write the report spool in %s (%s); reports are kept in memory only",
                          self.directory, exc)

    def _unlink(self, entry):
        if entry.path:
            try:
                os.unlink(entry.path)
            except OSError:
                pass

    # --- the queue --------------------------------------------------------------------------------

    def add(self, msg_id, payload, wall_s, now):
        """Keep a report just sent (first attempt done); it is due again after the first retry wait."""
        entry = _Spooled(msg_id, payload, wall_s, now, None)
        self._backoff(entry, now)
        self._write(entry)
        self._add(entry)
        self._trim(wall_s)

    def _add(self, entry):
        self._items[entry.msg_id] = entry
        self.size += len(entry.payload)

    def _remove(self, entry):
        del self._items[entry.msg_id]
        self.size -= len(entry.payload)
        self._unlink(entry)

    def _trim(self, wall_s):
        while self._items:
            entry = next(iter(self._items.values()))
            if self.size <= self.max_bytes and wall_s - entry.created_s <= self.max_age_s:
                break
            self._remove(entry)
            self.dropped += 1

    def ack(self, msg_id):
        """The monitor stored it: forget it. False when it was not (or no longer) spooled."""
        entry = self._items.get(msg_id)
        if entry is None:
            return False
        self._remove(entry)
        return True

    def _backoff(self, entry, now):
        wait = min(REPORT_RETRY_MAX_S, REPORT_RETRY_FIRST_S * (2 ** entry.attempts))
        entry.due = now + wait * self.rng.uniform(1.0, REPORT_RETRY_RANDOM)
        entry.attempts += 1

    def due(self, wall_s, now, limit=SPOOL_RESENDS_PER_S):
        """Up to `limit` reports to send again now (oldest first); each gets its next wait."""
        self._trim(wall_s)
        ready = []
        for entry in self._items.values():
            if entry.due <= now:
                ready.append(entry)
                if len(ready) >= limit:
                    break
        for entry in ready:
            self._backoff(entry, now)
        return [(e.msg_id, e.payload) for e in ready]

    def hurry(self, now):
        """The monitor answers again: everything waiting is due now (still at SPOOL_RESENDS_PER_S)."""
        for entry in self._items.values():
            entry.due = min(entry.due, now)
