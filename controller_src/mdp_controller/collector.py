"""The collector behind `mdp monitor`: receives agents' signed reports and HELLOs on UDP, stores reports.

Reports: verified with the key in .known_machines/<source ip>.txt, checked against the replay window
and the seen-id cache, reassembled when chunked, stored in SQLite, acknowledged with a signed ACK.
HELLO (enrolment): an unknown machine's offered key is filed under pending/ (or trusted at once
with --accept-new); a known machine offering a different key is refused and reported, never trusted.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import socket
import time
from collections.abc import Callable

from mdp_agent import protocol

from .keystore import KeyStore, KeyStoreError
from .storage import ReportStore

log = logging.getLogger("mdp.monitor")

FLUSH_INTERVAL_S = 0.2         # reports reach SQLite within this long; one transaction per flush
FLUSH_BATCH = 5000             # or as soon as this many are waiting
# Keys offered by strangers and waiting for `mdp keys accept`. Anyone can send a HELLO from any
# (forged) address; past this many, new offers are refused until the operator clears pending/.
MAX_PENDING_KEYS = 256
RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024


class Collector(asyncio.DatagramProtocol):
    def __init__(self, keystore: KeyStore, store: ReportStore, accept_new: bool = False):
        self.keystore = keystore
        self.store = store
        self.accept_new = accept_new
        self.guard = protocol.ReplayGuard()
        self.reassembler = protocol.Reassembler()
        self.transport: asyncio.DatagramTransport | None = None
        self.stats = {"received": 0, "reports": 0, "hellos": 0, "dropped": {}}
        self._warned: dict[str, float] = {}

    # --- asyncio plumbing -------------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr):
        self.stats["received"] += 1
        try:
            self.handle(data, addr[0], addr[:2])
        except Exception:   # one bad datagram must never stop collection
            log.exception("unexpected error handling a datagram from %s", addr[0])
        if len(self.store.buffer) >= FLUSH_BATCH:
            self.store.flush()

    def error_received(self, exc):
        pass

    async def run_flusher(self):
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.store.flush()
            now = time.monotonic()
            self.reassembler.expire(now)
            for ip_port, msg_id, missing in self.reassembler.missing(now):
                try:
                    keys = self.keystore.get(ip_port[0])
                except KeyStoreError:
                    continue
                self._send(ip_port, protocol.RESEND, protocol.resend_payload(missing), keys, msg_id)
            if self.store.last_error:
                self._warn(None, "storage", f"cannot write to the database ({self.store.last_error}); "
                           f"{len(self.store.buffer)} reports held in memory")

    # --- handling ---------------------------------------------------------------------------------

    def handle(self, data: bytes, ip: str, addr):
        try:
            keys = self.keystore.get(ip)
        except KeyStoreError:
            keys = None
        if keys is None:
            self._hello_from_stranger(data, ip, addr)
            return
        try:
            packet = protocol.open_datagram(data, keys, protocol.TO_CONTROLLER)
        except protocol.ProtocolError as exc:
            if exc.code == "bad_signature" and self._offered_key_differs(data, ip, keys):
                return
            self._drop(ip, exc.code)
            return
        if packet.kind == protocol.HELLO:
            self.stats["hellos"] += 1
            self._send(addr, protocol.ACK, {"ack": "hello", "state": "trusted"}, keys)
            return
        if packet.kind != protocol.REPORT:
            self._drop(ip, "unexpected_kind")
            return
        skew = protocol.skew_error(packet.timestamp_ms, _now_ms(), self.guard.window_ms / 1000.0)
        if skew is not None:
            self._drop(ip, "clock_skew", skew.message)
            return
        complete = self.reassembler.add(addr, packet, time.monotonic())
        if complete is None:
            return
        _, flags, timestamp_ms, body = complete
        try:
            if self.guard.check(ip, packet.msg_id, timestamp_ms, _now_ms()):
                self._drop(ip, "duplicate")
                return
            self.guard.remember(ip, packet.msg_id, timestamp_ms, _now_ms())
            text = protocol.decode_text(flags, body)
            report = protocol.parse_text(text)
            protocol.check_payload_version(report)
        except protocol.ProtocolError as exc:
            self._drop(ip, exc.code, exc.message)
            return
        self.store.add(ip, report, text=text)
        self.stats["reports"] += 1
        self._send(addr, protocol.ACK, {"ack": "report"}, keys, packet.msg_id)

    def _hello_from_stranger(self, data: bytes, ip: str, addr):
        """An unknown address may only say HELLO, self-signed with the key it offers (trust on first use)."""
        offered = _self_signed_hello(data)
        if offered is None:
            self._drop(ip, "unknown_machine")
            return
        key_text, keys = offered
        self.stats["hellos"] += 1
        if self.keystore.get_text(ip, "rejected") == key_text:
            self._drop(ip, "rejected_key", "this key was rejected; `mdp keys` can trust it again")
            return
        if self.accept_new:
            self.keystore.put(ip, key_text)
            self.store.event(ip, "enrolled", "key accepted on first use (--accept-new)")
            log.info("enrolled %s (accepted on first use)", ip)
            self._send(addr, protocol.ACK, {"ack": "hello", "state": "trusted"}, keys)
            return
        if self.keystore.get_text(ip, "pending") != key_text:
            pending = sum(1 for row in self.keystore.list() if row["state"] == "pending")
            if pending >= MAX_PENDING_KEYS:
                self._warn(None, "pending_full", f"{pending} keys already wait in pending/; refusing more "
                           "offers until `mdp keys accept|reject` clears some")
                return
            self.keystore.put(ip, key_text, state="pending")
            self.store.event(ip, "pending", "key offered; accept with `mdp keys accept %s`" % ip)
            log.warning("%s offered a key; it waits in pending/ until `mdp keys accept %s`", ip, ip)

    def _offered_key_differs(self, data: bytes, ip: str, keys) -> bool:
        """A known machine sending a valid HELLO with another key: refuse loudly (like SSH known_hosts)."""
        offered = _self_signed_hello(data)
        if offered is None or offered[1].key == keys.key:
            return False
        self.keystore.put(ip, offered[0], state="rejected")
        message = (f"{ip} offered a DIFFERENT key than the one trusted in {self.keystore.file(ip)}; refused. "
                   "If the machine was re-installed, check it, then `mdp keys revoke` and re-deploy.")
        self._warn(ip, "key_mismatch", message)
        self.store.event(ip, "key_mismatch", message)
        self._drop(ip, "key_mismatch")
        return True

    def _send(self, addr, kind, obj, keys, msg_id=None):
        if self.transport is None:
            return
        _, datagrams = protocol.encode(kind, obj, keys, protocol.TO_AGENT, msg_id, _now_ms())
        for datagram in datagrams:
            self.transport.sendto(datagram, addr)

    def _drop(self, ip: str, reason: str, detail: str = ""):
        dropped = self.stats["dropped"]
        dropped[reason] = dropped.get(reason, 0) + 1
        self._warn(ip, reason, f"dropped a datagram from {ip}: {reason}" + (f" ({detail})" if detail else ""),
                   level=logging.DEBUG if reason == "duplicate" else logging.WARNING)

    def _warn(self, ip, reason, message, level=logging.WARNING):
        now = time.monotonic()
        # One line per cause per minute; keyed by reason only, so forged addresses cannot grow it.
        if now - self._warned.get(reason, -60.0) >= 60.0:
            self._warned[reason] = now
            log.log(level, "%s", message)


def _self_signed_hello(data: bytes):
    """(key_text, KeyPair) if data is a single-datagram HELLO signed with the key it carries, else None.

    This parses before verifying, which nothing else does: there is no key yet to verify with. It is
    bounded (one datagram, checked with the offered key right after) and proves only possession.
    """
    # Cheap refusals first: a HELLO is one small uncompressed datagram, so nothing here inflates.
    if not protocol.OVERHEAD < len(data) <= protocol.DEFAULT_MAX_DATAGRAM or data[:2] != protocol.MAGIC:
        return None
    if data[3] != protocol.HELLO or data[4] != 0:
        return None
    try:
        body = protocol.decode_body(0, data[protocol.HEADER_SIZE:-protocol.MAC_SIZE])
        key_text = str(body.get("key", ""))
        keys = protocol.KeyPair.from_text(key_text)
        packet = protocol.open_datagram(data, keys, protocol.TO_CONTROLLER)
    except (protocol.ProtocolError, ValueError, binascii.Error):
        return None
    if packet.kind != protocol.HELLO or packet.count != 1:
        return None
    return key_text, keys


def _now_ms() -> int:
    return int(time.time() * 1000)


class _SocketSender:
    """The one transport method the Collector uses, on a plain non-blocking socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def sendto(self, data: bytes, addr):
        try:
            self.sock.sendto(data, addr)
        except OSError:   # a full buffer or an unreachable agent: an ACK is never worth stopping for
            pass


RECV_BATCH = 256   # datagrams read per wake-up: asyncio's datagram transport reads one per select()


async def serve(listen: tuple[str, int], keystore: KeyStore, db: str, accept_new: bool = False,
                ready: asyncio.Event | None = None, on_start: Callable[[Collector], None] | None = None):
    """Run the collector until cancelled; on_start(collector) runs once it exists (HTTP, retention)."""
    store = ReportStore(db)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in listen[0] else socket.AF_INET, socket.SOCK_DGRAM)
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        try:   # a fleet reporting at once arrives as a burst; the default ~200 KiB drops it
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER_BYTES)
            break
        except (OSError, TypeError):
            continue
    sock.bind(listen)
    sock.setblocking(False)
    collector = Collector(keystore, store, accept_new)
    collector.connection_made(_SocketSender(sock))
    if on_start:
        on_start(collector)

    def readable():
        for _ in range(RECV_BATCH):
            try:
                data, addr = sock.recvfrom(protocol.MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            collector.datagram_received(data, addr)

    loop.add_reader(sock.fileno(), readable)
    log.info("monitor listening on %s:%d (udp), keys in %s, db %s%s", listen[0], listen[1], keystore.path, db,
             ", accepting new keys on first use" if accept_new else "")
    if ready:
        ready.set()
    try:
        await collector.run_flusher()
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
        store.close()
