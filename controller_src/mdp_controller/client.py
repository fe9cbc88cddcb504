"""Async fan-out: sign one request per machine, send over UDP, retransmit like CoAP, verify replies.

    replies = send_sync(["10.0.0.5", "10.0.0.6"], ["ping", {"name": "process.top", "args": {"n": 3}}])
    replies["10.0.0.5"] -> {"status": True, "version": "1.0", "operations": [...], "cluster_info": {}}
                        or {"status": False, "error": "timeout: no reply from 10.0.0.5:12345 after 5 tries ..."}

One UDP socket serves every machine; replies are matched by (address, message id), so thousands of
machines cost one file descriptor and a few bytes of state each.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mdp_agent import protocol

from .keystore import KeyStore, KeyStoreError

DEFAULT_PORT = 12345
DEFAULT_TIMEOUT_S = 15.0
# Requests in flight at once. Bounds the reply burst the socket buffer must absorb (each reply is
# ~1 KiB of kernel memory) while keeping a LAN-speed fan-out busy.
DEFAULT_CONCURRENCY = 2048
RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024


@dataclass(eq=False)
class _Pending:
    ip: str
    port: int
    keys: protocol.KeyPair
    msg_id: bytes
    datagrams: list[bytes]
    batch: _Batch
    deadline: float
    timeout: float
    delays: list[float]
    attempt: int = 0
    tries: int = 0
    bad_signatures: int = 0
    partial: bool = False
    timer: asyncio.TimerHandle | None = None


class _Batch:
    """One send_many call: results as they come, the in-flight count, and a future for the end."""

    def __init__(self, loop, total: int, progress):
        self.loop = loop
        self.total = total
        self.progress = progress
        self.results: dict[str, dict] = {}
        self.in_flight = 0
        self.finished = loop.create_future()
        self.start_more = lambda: None

    def finish(self, ip: str, result: dict):
        self.results[ip] = result
        self.in_flight -= 1
        if self.progress:
            self.progress(len(self.results), self.total)
        if len(self.results) == self.total:
            if not self.finished.done():
                self.finished.set_result(None)
        else:
            self.start_more()


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, client: Client):
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.client._on_datagram(data, addr)

    def error_received(self, exc):   # ICMP unreachable and the like: the retry timer copes
        pass


class Client:
    """A UDP client for many machines at once. Use `async with Client(keystore) as c: await c.send_many(...)`."""

    def __init__(self, keystore: KeyStore | None = None, max_datagram: int = protocol.DEFAULT_MAX_DATAGRAM,
                 rng: random.Random | None = None):
        self.keystore = keystore or KeyStore()
        self.max_datagram = max_datagram
        self.rng = rng or random.Random()
        self._pending: dict[bytes, _Pending] = {}   # by msg_id
        self._reassembler = protocol.Reassembler()
        self._endpoint: _Endpoint | None = None
        self._resend_task: asyncio.Task | None = None

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER_BYTES)
                break
            except (OSError, TypeError):
                continue
        sock.bind(("0.0.0.0", 0))
        _, self._endpoint = await loop.create_datagram_endpoint(lambda: _Endpoint(self), sock=sock)
        self._resend_task = asyncio.create_task(self._ask_for_missing_chunks())
        return self

    async def __aexit__(self, *exc):
        if self._resend_task:
            self._resend_task.cancel()
        if self._endpoint and self._endpoint.transport:
            self._endpoint.transport.close()

    # --- sending ----------------------------------------------------------------------------------

    async def send_many(self, targets: Iterable[str], operations: list, cluster_info: dict | None = None, *,
                        port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT_S,
                        concurrency: int = DEFAULT_CONCURRENCY,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
        """Ask every target; returns {ip: reply or {"status": False, "error": "..."}} in target order.

        No task per machine: each request is a table entry with one loop timer driving its
        retransmissions, and at most `concurrency` are in flight (about 100 us of CPU per machine).
        """
        targets = list(dict.fromkeys(targets))
        loop = asyncio.get_running_loop()
        batch = _Batch(loop, len(targets), progress)
        if not targets:
            return {}
        payload = protocol.dump_json(protocol.make_request(operations, cluster_info))
        waiting = iter(targets)

        def start_more():
            while batch.in_flight < max(1, concurrency):
                ip = next(waiting, None)
                if ip is None:
                    return
                batch.in_flight += 1
                self._start(batch, ip, port, payload, timeout)

        batch.start_more = start_more
        start_more()
        await batch.finished
        return {ip: batch.results[ip] for ip in targets}

    def _start(self, batch: _Batch, ip: str, port: int, payload: bytes, timeout: float):
        try:
            keys = self.keystore.get(ip)
        except KeyStoreError as exc:
            batch.finish(ip, {"status": False, "error": str(exc)})
            return
        msg_id = protocol.new_msg_id()
        datagrams = protocol.encode_message(protocol.REQUEST, payload, keys.to_agent, msg_id,
                                            int(time.time() * 1000), self.max_datagram)
        now = batch.loop.time()
        pending = _Pending(ip, port, keys, msg_id, datagrams, batch, now + timeout, timeout,
                           protocol.retransmit_delays(self.rng))
        self._pending[msg_id] = pending
        self._transmit(pending)

    def _transmit(self, pending: _Pending):
        """Send (or, for a partial reply, let RESENDs work) and arm the next retransmission."""
        now = pending.batch.loop.time()
        if now >= pending.deadline or pending.attempt >= len(pending.delays):
            self._finish(pending, {"status": False, "error": self._timeout_message(pending, pending.timeout)})
            return
        if not pending.partial:   # a partial reply is completed by RESENDs, not by asking again
            pending.tries += 1
            self._sendto(pending.datagrams, (pending.ip, pending.port))
        wake = min(now + pending.delays[pending.attempt], pending.deadline)
        pending.attempt += 1
        pending.timer = pending.batch.loop.call_at(wake, self._transmit, pending)

    def _finish(self, pending: _Pending, result: dict):
        if self._pending.pop(pending.msg_id, None) is None:
            return   # already finished
        if pending.timer is not None:
            pending.timer.cancel()
        pending.batch.finish(pending.ip, result)

    @staticmethod
    def _timeout_message(p: _Pending, timeout: float) -> str:
        if p.bad_signatures:
            return (f"bad signature: {p.bad_signatures} replies from {p.ip} did not verify with its key in "
                    f"the key store (the machine's key changed? re-deploy or `mdp keys revoke {p.ip}`)")
        if p.partial:
            return f"timeout: the reply from {p.ip}:{p.port} arrived incomplete within {timeout:g} s"
        return (f"timeout: no reply from {p.ip}:{p.port} after {p.tries} tries in {timeout:g} s "
                "(agent down, wrong port, a firewall dropping UDP, or a key in the key store that is not "
                "this agent's: an agent ignores requests it cannot verify)")

    def _sendto(self, datagrams: list[bytes], addr: tuple[str, int]):
        transport = self._endpoint.transport
        for datagram in datagrams:
            transport.sendto(datagram, addr)

    # --- receiving --------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr):
        # Replies are matched by message id, not by source address: a multi-homed agent bound to the
        # wildcard answers from whichever address its kernel routes by. The id (bytes 10-17 of the
        # header) only picks the key to verify with; nothing is trusted before the MAC checks.
        pending = self._pending.get(protocol.peek_msg_id(data))
        if pending is None:
            return   # not ours, or a late duplicate of a reply already delivered
        try:
            packet = protocol.open_datagram(data, pending.keys, protocol.TO_CONTROLLER)
        except protocol.ProtocolError as exc:
            if exc.code == "bad_signature":
                pending.bad_signatures += 1
            return
        if packet.kind == protocol.RESEND:   # the agent lost chunks of our request
            try:
                wanted = protocol.parse_resend(protocol.decode_body(packet.flags, packet.body), pending.datagrams)
            except protocol.ProtocolError:
                return
            self._sendto(wanted, (pending.ip, pending.port))
            return
        if packet.kind != protocol.REPLY:
            return
        pending.partial = packet.count > 1
        complete = self._reassembler.add(pending.ip, packet, time.monotonic())
        if complete is None:
            return
        _, flags, _, body = complete
        try:
            reply = protocol.decode_body(flags, body)
        except protocol.ProtocolError as exc:
            reply = {"status": False, "error": f"bad reply from {pending.ip}: {exc.message}"}
        self._finish(pending, _normalise_reply(pending.ip, reply))

    async def _ask_for_missing_chunks(self):
        """Every RESEND_GAP_S: ask agents for the chunks of replies that stopped short."""
        while True:
            await asyncio.sleep(protocol.RESEND_GAP_S)
            now = time.monotonic()
            self._reassembler.expire(now)
            for ip, msg_id, missing in self._reassembler.missing(now):
                pending = self._pending.get(msg_id)
                if pending is None:
                    continue
                _, datagrams = protocol.encode(protocol.RESEND, protocol.resend_payload(missing, self.max_datagram),
                                               pending.keys, protocol.TO_AGENT, msg_id, int(time.time() * 1000))
                self._sendto(datagrams, (ip, pending.port))


def _normalise_reply(ip: str, reply: dict) -> dict:
    """A reply as callers see it; a whole-request refusal becomes {"status": False, "error": "..."}."""
    error = reply.get("error")
    if isinstance(error, dict):
        code, message = error.get("code", "error"), error.get("message", "")
        reply = dict(reply, status=False, error=f"{code.replace('_', ' ')}: {ip} says {message}")
    reply.setdefault("operations", [])
    reply.setdefault("cluster_info", {})
    reply["status"] = bool(reply.get("status"))
    return reply


async def send_many(targets: Iterable[str], operations: list, cluster_info: dict | None = None, *,
                    keystore: KeyStore | None = None, known_machines: str | None = None,
                    port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT_S,
                    concurrency: int = DEFAULT_CONCURRENCY, max_datagram: int = protocol.DEFAULT_MAX_DATAGRAM,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Ask many machines at once (see Client.send_many)."""
    keystore = keystore or KeyStore(known_machines)
    async with Client(keystore, max_datagram) as client:
        return await client.send_many(targets, operations, cluster_info, port=port, timeout=timeout,
                                      concurrency=concurrency, progress=progress)


def send_sync(targets: Iterable[str], operations: list, cluster_info: dict | None = None, **kwargs) -> dict[str, dict]:
    """Blocking send_many for scripts and the Ansible action plugin."""
    return asyncio.run(send_many(targets, operations, cluster_info, **kwargs))
