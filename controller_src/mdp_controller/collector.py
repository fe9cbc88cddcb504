"""The collector behind `mdp monitor`: receives agents' reports and HELLOs on UDP and stores reports.

Every datagram goes through the protocol's Endpoint (verify, skew, de-duplicate, reassemble, decode).
Reports are stored in SQLite and acknowledged only once a committed transaction holds them, so an
ACK always means "stored"; a report sent again is acknowledged again and stored once (its msg_id
is unique in the database, across restarts of the monitor).

HELLO (enrolment by key agreement, docs/protocol.md): an unknown address's HELLO carries an
ffdhe3072 public value; the collector validates it, agrees a key, files key and fingerprint under
pending/ (or trusts it at once with --accept-new: trust on first use) and answers with a WELCOME.
One enrolment per address: the same HELLO again gets the same WELCOME (its answer was lost), a new
one replaces the pending key (the operator's fingerprint check decides). A HELLO from a machine
with a trusted key is refused and reported, never trusted. The path for strangers is cheap: a shape
check and token buckets before any key agreement (~19 ms) or disk write, every log line rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable

from mdp_agent import protocol

from .keystore import KeyStore, KeyStoreError, unmap_ip
from .storage import ReportStore

log = logging.getLogger("mdp.monitor")

# Reports are committed (and then ACKed) as soon as the socket is drained, but at most every
# FLUSH_GAP_S: one transaction per burst. A transaction's own cost (its pages of reports, latest,
# machines and the indexes, written again to the WAL) is shared by the reports it holds: at 1,000
# reports/s, 10 ms made batches of ~10 at ~250 us of CPU per report, 100 ms makes ~100 at ~150.
# Agents wait up to ACK_TIMEOUT_S (2 s) for the ACK, so 0.1 s more before it costs them nothing.
# A burst that already holds FLUSH_EARLY reports is committed at once: senders that wait for their
# ACK before the next report (a spool draining, a benchmark's window) would otherwise be held to
# FLUSH_EARLY per gap.
FLUSH_GAP_S = 0.1
FLUSH_EARLY = 32
FLUSH_INTERVAL_S = 0.2         # the background tick: RESENDs for partial reports, leftovers, retries
# A transaction holds at most FLUSH_BATCH reports (and a drain that gathers that many commits
# mid-way): the loop waits while it commits (~80 us a report), so a backlog left by a disk that
# refused writes goes out a batch at a time, with the socket read between batches.
FLUSH_BATCH = 2000
# A failed flush (disk full, database locked) is retried after 0.2 s, doubling to at most 5 s: not
# once per datagram, which turned an outage into a storm of failing transactions.
FLUSH_RETRY_MAX_S = 5.0
# Keys offered by strangers and waiting for `mdp keys accept`. Anyone can send a HELLO from any
# (forged) address; past this many, new offers are refused until the operator clears pending/.
MAX_PENDING_KEYS = 256
# Key agreements per second, whatever their source: each costs ~19 ms of CPU (our keygen, and the
# shared secret with the peer value's validation; docs/mdp2-design.md) plus two files and fsyncs,
# and forged sources make a per-address limit alone worthless. Five a second is a tenth of a core
# and enrols 300 machines in a minute; a flood gets no more.
KEY_AGREEMENTS_PER_S = 5.0
# Answered enrolments remembered (address -> its HELLO's public value and our WELCOME), so a repeated
# HELLO gets the same answer without a new key agreement; LRU, so forged sources cannot grow it.
ENROLMENT_TABLE_ENTRIES = 4 * MAX_PENDING_KEYS
# HELLOs from strangers examined per second per source IP (a token bucket, burst 5); past the rate
# they are dropped before any work.
STRANGER_HELLOS_PER_S = 2.0
STRANGER_BURST = 5.0
STRANGER_TABLE_ENTRIES = 4096  # sources tracked for that limit (LRU: forged sources cannot grow it)
# HELLOs from strangers examined per second in all: forged sources defeat a per-source limit, so
# past this the rest are dropped before any key is derived or file looked at. A fleet enrolling at
# once is a few hundred machines that repeat their HELLO every interval: 200 a second takes them in.
STRANGERS_PER_S = 200.0
WARN_INTERVAL_S = 60.0         # one log line per cause per minute
RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024


class _Bucket:
    """A token bucket: rate per second, burst."""

    __slots__ = ("credit", "at")

    def __init__(self, burst: float, now: float):
        self.credit, self.at = burst, now

    def take(self, rate: float, burst: float, now: float) -> bool:
        self.credit = min(burst, self.credit + (now - self.at) * rate)
        self.at = now
        if self.credit < 1.0:
            return False
        self.credit -= 1.0
        return True


class Collector(asyncio.DatagramProtocol):
    def __init__(self, keystore: KeyStore, store: ReportStore, accept_new: bool = False):
        self.keystore = keystore
        self.store = store
        self.accept_new = accept_new
        self.endpoint = protocol.Endpoint(protocol.TO_CONTROLLER, self._keys_for, dedup={protocol.REPORT: True},
                                          text_only=(protocol.REPORT,),
                                          alternate_keys=lambda ip: keystore.alternates(unmap_ip(ip)))
        self.transport: asyncio.DatagramTransport | None = None
        self.stats = {"received": 0, "reports": 0, "acked": 0, "hellos": 0, "dropped": {}}
        self._warned: dict[str, float] = {}
        self._strangers: OrderedDict[str, _Bucket] = OrderedDict()
        self._agreements = _Bucket(KEY_AGREEMENTS_PER_S, time.monotonic())
        self._all_strangers = _Bucket(STRANGERS_PER_S, time.monotonic())
        self._pending_count: int | None = None
        self._enrolments: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()   # ip -> (Y_agent, WELCOME)
        self._flush_failures = 0
        self._next_flush = 0.0
        self._last_flush = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None

    # --- asyncio plumbing -------------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr):
        self.stats["received"] += 1
        try:
            self.handle(data, addr[:2])
        except Exception:   # one bad datagram must never stop collection (and never floods the log)
            self._drop(addr[0], "internal_error")
            if self._may_warn("internal_error"):
                log.exception("unexpected error handling a datagram from %s", addr[0])
        if len(self.store.buffer) >= FLUSH_BATCH:
            self.flush()

    def error_received(self, exc):
        pass

    def drained(self, loop: asyncio.AbstractEventLoop):
        """The socket has nothing more to read: commit now, or at the end of the gap."""
        if len(self.store.buffer) >= FLUSH_EARLY:
            self.flush()
            return
        if not self.store.buffer or self._flush_timer is not None:
            return
        wait = self._last_flush + FLUSH_GAP_S - time.monotonic()
        if wait <= 0:
            self.flush()
        else:
            self._flush_timer = loop.call_later(wait, self._timed_flush)

    def _timed_flush(self):
        self._flush_timer = None
        self.flush()

    def close(self):
        """Write what is buffered and ACK it (batch after batch, until the disk refuses)."""
        self._next_flush = 0.0
        while self.store.buffer:
            waiting = len(self.store.buffer)
            self.flush()
            if len(self.store.buffer) >= waiting:
                break

    def flush(self):
        """Commit buffered reports and ACK what the transaction holds; back off while the disk refuses.

        On the receive loop itself: a writer thread (SQLite releases the GIL while it works) cost more
        than it overlapped, each of the loop's syscalls handing the GIL over and waiting to get it
        back (bench_ingest: 5,426 -> 7,306 reports/s and 207 -> 139 us of CPU each without it, now
        that checkpoints, the slow part, run on a thread of their own: ReportStore.checkpoint_in_background).
        """
        now = time.monotonic()
        if now < self._next_flush or not self.store.buffer:
            return
        self._last_flush = now
        batch = self.store.take(FLUSH_BATCH)
        try:
            outcome = self.store.write(batch)
        except sqlite3.Error as exc:
            self._written(batch, None, exc)
        else:
            self._written(batch, outcome, None)

    def _written(self, batch: list, outcome, error):
        now = time.monotonic()
        if error is not None:
            self.store.restore(batch)
            self.store.last_error = str(error)
            self._flush_failures += 1
            delay = min(FLUSH_RETRY_MAX_S, FLUSH_INTERVAL_S * 2 ** self._flush_failures)
            self._next_flush = now + delay
            self._warn("storage", f"cannot write to the database ({error}); "
                       f"{len(self.store.buffer)} reports wait, unacknowledged; retrying in {delay:.1f} s")
            return
        self.store.committed(batch, outcome)
        if self._flush_failures:
            log.info("the database takes writes again; %d reports stored", outcome[0])
        self._flush_failures = 0
        if outcome[1]:
            self._drop("-", "bad_payload", f"{outcome[1]} reports were not JSON objects of version 1")
        wall = _now_ms()
        for addr, keys, msg_id in outcome[2]:
            self.endpoint.send(addr, protocol.ACK, _ACK_BODY, keys, wall, now, msg_id, cache=False)
        self.stats["acked"] += len(outcome[2])
        self._transmit()
        if self.store.buffer:   # a backlog (more than FLUSH_BATCH): its next batch once the loop has read
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:   # no loop (in-process use): the caller flushes again
                pass

    async def run_flusher(self):
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()
            self.endpoint.tick(_now_ms(), time.monotonic())
            self._transmit()

    # --- handling ---------------------------------------------------------------------------------

    def _keys_for(self, ip: str, msg_id: bytes):
        return self.keystore.lookup(unmap_ip(ip))

    def handle(self, data: bytes, addr):
        for event in self.endpoint.feed(data, addr, _now_ms(), time.monotonic()):
            ip = unmap_ip(addr[0])
            if isinstance(event, protocol.Message):
                if event.kind == protocol.REPORT:
                    self._store(ip, event)
                else:
                    self._drop(ip, "unexpected_kind")
            elif isinstance(event, protocol.Duplicate):
                # Sent again: its ACK was lost. ACK again once stored (still buffered: the flush will).
                self._drop(ip, "duplicate")
                if event.kind == protocol.REPORT and protocol.hexlify(event.msg_id) not in self.store.pending:
                    self.endpoint.send(addr, protocol.ACK, _ACK_BODY, event.keys, _now_ms(),
                                       time.monotonic(), event.msg_id, cache=False)
            elif event.code == "no_key":
                self._hello_from_stranger(data, ip, addr)
            elif event.code == "bad_signature" and data[3:4] == _HELLO_KIND:
                self._hello_from_known(data, ip)
            else:
                self._drop(ip, event.code, event.message)
        self._transmit()

    def _store(self, ip: str, message: protocol.Message):
        msg_id = protocol.hexlify(message.msg_id)
        if not self.store.add(ip, None, text=message.text, msg_id=msg_id,
                              ack=(message.addr, message.keys, message.msg_id)):
            # Full: refuse it unacknowledged, and un-see it, so the agent's next try is taken.
            self.endpoint.guard.forget(ip, message.msg_id)
            self._drop(ip, "buffer_full")
            return
        self.stats["reports"] += 1

    def _transmit(self):
        if self.transport is None:
            self.endpoint.datagrams_to_send()
            return
        for addr, datagram in self.endpoint.datagrams_to_send():
            self.transport.sendto(datagram, addr)

    # --- strangers --------------------------------------------------------------------------------

    def _stranger_allowed(self, ip: str, now: float) -> bool:
        if not self._all_strangers.take(STRANGERS_PER_S, STRANGERS_PER_S, now):
            return False
        bucket = self._strangers.get(ip)
        if bucket is None:
            bucket = self._strangers[ip] = _Bucket(STRANGER_BURST, now)
            if len(self._strangers) > STRANGER_TABLE_ENTRIES:
                self._strangers.popitem(last=False)
        else:
            self._strangers.move_to_end(ip)
        return bucket.take(STRANGER_HELLOS_PER_S, STRANGER_BURST, now)

    def _pending_keys(self) -> int:
        if self._pending_count is None:   # counted once, then kept up to date as offers are filed
            self._pending_count = self.keystore.count("pending")
        return self._pending_count

    def _hello_from_stranger(self, data: bytes, ip: str, addr):
        """An unknown address may only say HELLO: agree a key with it, file it, answer WELCOME."""
        now = time.monotonic()
        hello = protocol.parse_hello(data)
        if hello is None:
            self._drop(ip, "unknown_machine")
            return
        if not self._stranger_allowed(ip, now):
            self._drop(ip, "rate_limited")
            return
        self.stats["hellos"] += 1
        msg_id, agent_public = hello
        answered = self._enrolments.get(ip)
        if answered is not None and answered[0] == agent_public:
            self._send_raw(addr, answered[1])   # the same HELLO again: our WELCOME was lost
            return
        if not self._agreements.take(KEY_AGREEMENTS_PER_S, KEY_AGREEMENTS_PER_S, now):
            self._drop(ip, "rate_limited")
            return
        try:
            replaced = self.keystore.fingerprint(ip, "pending")
        except KeyStoreError:
            self._drop(ip, "unknown_machine")
            return
        if replaced is None and not self.accept_new and self._pending_keys() >= MAX_PENDING_KEYS:
            self._warn("pending_full", f"{self._pending_keys()} keys already wait in pending/; refusing more "
                       "enrolments until `mdp keys accept|reject` clears some")
            return
        try:
            enrolment = protocol.answer_hello(agent_public, ip, msg_id, _now_ms())
        except protocol.ProtocolError as exc:
            self._drop(ip, exc.code, exc.message)
            return
        key_text, fingerprint = protocol.hexlify(enrolment.keys.key), enrolment.fingerprint
        if self.accept_new:
            try:
                self.keystore.put(ip, key_text)
            except KeyStoreError as exc:   # trusted meanwhile (by hand): never replaced
                self._drop(ip, exc.code, exc.message)
                return
            self.store.event(ip, "enrolled", f"enrolment {fingerprint} accepted on first use (--accept-new)")
            log.info("enrolled %s, enrolment fingerprint %s (accepted on first use)", ip, fingerprint)
        else:
            self.keystore.put_pending(ip, key_text, fingerprint)
            if replaced is None:
                self._pending_count = self._pending_keys() + 1
            else:   # one pending enrolment per address, the latest: a re-started agent, or a forgery
                self._warn("pending_replaced", f"{ip} enrolled again ({fingerprint}); it replaces the pending "
                           f"enrolment {replaced}. Accept only the fingerprint the machine itself logs.")
            self.store.event(ip, "pending", f"enrolment {fingerprint}; accept with "
                     f"`mdp keys accept {ip} --fingerprint {fingerprint}`")
            self._warn("pending", f"{ip} enrolled with fingerprint {fingerprint}; its key waits in pending/ until "
                       f"`mdp keys accept {ip} --fingerprint {fingerprint}`")
        self._enrolments[ip] = (agent_public, enrolment.datagram)
        self._enrolments.move_to_end(ip)
        if len(self._enrolments) > ENROLMENT_TABLE_ENTRIES:
            self._enrolments.popitem(last=False)
        self._send_raw(addr, enrolment.datagram)

    def _hello_from_known(self, data: bytes, ip: str):
        """A HELLO from a machine we hold a trusted key for: never a new key (like SSH known_hosts)."""
        if not self._stranger_allowed(ip, time.monotonic()):
            self._drop(ip, "rate_limited")
            return
        hello, answered = protocol.parse_hello(data), self._enrolments.get(ip)
        if hello is not None and answered is not None and answered[0] == hello[1]:
            self._drop(ip, "duplicate")   # a late copy of the HELLO whose key was since accepted
            return
        message = (f"{ip} sent a HELLO (a new enrolment) but has a trusted key in {self.keystore.file(ip)}; "
                   "refused. If the machine was re-installed, check it, then `mdp keys revoke` it and let it "
                   "enrol again, or re-deploy.")
        if self._may_warn("known_machine_hello"):
            log.warning("%s", message)
            self.store.event(ip, "key_mismatch", message)
        self._drop(ip, "known_machine_hello")

    def _send_raw(self, addr, datagram: bytes):
        if self.transport is not None:
            self.transport.sendto(datagram, addr)

    # --- counting and logging ---------------------------------------------------------------------

    def _drop(self, ip: str, reason: str, detail: str = ""):
        dropped = self.stats["dropped"]
        dropped[reason] = dropped.get(reason, 0) + 1
        if reason not in ("duplicate", "rate_limited"):
            self._warn(reason, f"dropped a datagram from {ip}: {reason}" + (f" ({detail})" if detail else ""))

    def _may_warn(self, reason: str) -> bool:
        # One line per cause per minute; keyed by reason only, so forged addresses cannot grow it.
        now = time.monotonic()
        if now - self._warned.get(reason, -WARN_INTERVAL_S) < WARN_INTERVAL_S:
            return False
        self._warned[reason] = now
        return True

    def _warn(self, reason: str, message: str, level: int = logging.WARNING):
        if self._may_warn(reason):
            log.log(level, "%s", message)


_HELLO_KIND = bytes([protocol.HELLO])
_ACK_BODY = protocol.dump_json({"ack": "report"})   # encoded once, not for each ACK


def _now_ms() -> int:
    return int(time.time() * 1000)


class _SocketSender:
    """The one transport method the Collector uses, on a plain non-blocking socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def sendto(self, data: bytes, addr):
        try:
            self.sock.sendto(data, addr)
        except OSError:   # a full buffer or an unreachable agent: the agent sends its report again
            pass


RECV_BATCH = 256   # datagrams read per wake-up: asyncio's datagram transport reads one per select()


def open_socket(listen: tuple[str, int]) -> socket.socket:
    """A bound, non-blocking UDP socket; an IPv6 wildcard also takes IPv4 (seen as ::ffff:a.b.c.d)."""
    family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        try:   # a fleet reporting at once arrives as a burst; the default ~200 KiB drops it
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER_BYTES)
            break
        except (OSError, TypeError):
            continue
    sock.bind(listen)
    sock.setblocking(False)
    return sock


async def serve(listen: tuple[str, int], keystore: KeyStore, db: str, accept_new: bool = False,
                ready: asyncio.Event | None = None, on_start: Callable[[Collector], None] | None = None):
    """Run the collector until cancelled. on_start(collector) runs once it exists (the HTTP side uses it)."""
    store = ReportStore(db)
    loop = asyncio.get_running_loop()
    sock = open_socket(listen)
    collector = Collector(keystore, store, accept_new)
    collector.connection_made(_SocketSender(sock))
    store.checkpoint_in_background()
    if on_start is not None:
        on_start(collector)

    def readable():
        for _ in range(RECV_BATCH):
            try:
                data, addr = sock.recvfrom(protocol.MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            collector.datagram_received(data, addr)
        collector.drained(loop)

    loop.add_reader(sock.fileno(), readable)
    log.info("monitor listening on %s:%d (udp), keys in %s, db %s%s", listen[0], listen[1], keystore.path, db,
             ", accepting new keys on first use" if accept_new else "")
    if ready:
        ready.set()
    try:
        await collector.run_flusher()
    finally:
        loop.remove_reader(sock.fileno())
        collector.close()
        sock.close()
        store.close()
