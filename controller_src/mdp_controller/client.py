"""Async fan-out: one request per machine over UDP, retransmitted like CoAP, replies verified.

    replies = send_sync(["10.0.0.5", "10.0.0.6"], ["ping", {"name": "process.top", "args": {"n": 3}}])
    replies["10.0.0.5"] -> {"status": True, "version": "1.0", "operations": [...], "cluster_info": {}}
                        or {"status": False, "error": {"code": "timeout", "message": "no reply from ..."},
                            "operations": [], "cluster_info": {}}

One UDP socket (IPv6 and IPv4) serves every machine; every datagram goes through the protocol's
Endpoint, and replies are matched by message id, so thousands of machines cost one file descriptor
and a few bytes of state each.

Two drivers run the same requests: asyncio (`async with Client(...)`, send_many) for the monitor,
the cluster verbs and other async callers, and the agent's small selector loop (mdp_agent.loop) for
send_sync, so a one-shot `mdp send` or Ansible task never imports asyncio (which pulls in ssl,
concurrent.futures, subprocess and logging: a large share of the CLI's start-up, issue 11).
"""

from __future__ import annotations

import gc
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable

from mdp_agent import protocol

from .keystore import KeyStore, KeyStoreError

DEFAULT_PORT = 12345
DEFAULT_TIMEOUT_S = 15.0
# Requests in flight at once. Bounds the reply burst the socket buffer must absorb (each reply is
# ~1 KiB of kernel memory) while keeping a LAN-speed fan-out busy.
DEFAULT_CONCURRENCY = 2048
RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024
# Refusals that a fresh copy of the same request cures (a new msg_id and timestamp): the agent
# restarted after we stamped it, or our stamp fell below its replay floor. Tried this many times.
RETRYABLE = ("restarted", "stale")
MAX_FRESH_TRIES = 3


class _Pending:
    """One machine's request in flight. A plain class with __slots__ rather than a dataclass: one
    is made per machine of a fan-out, and `dataclasses` would pull inspect into every `mdp send`."""

    __slots__ = ("ip", "addr", "keys", "msg_id", "datagrams", "payload", "batch", "deadline", "timeout", "delays",
                 "attempt", "tries", "fresh_tries", "bad_signatures", "partial", "timer")

    def __init__(self, ip: str, addr: tuple, keys: protocol.KeyPair, payload: bytes, batch: _Batch,
                 deadline: float, timeout: float, delays: list[float]):
        self.ip, self.addr, self.keys, self.payload, self.batch = ip, addr, keys, payload, batch
        self.deadline, self.timeout, self.delays = deadline, timeout, delays
        self.msg_id = b""
        self.datagrams: list[bytes] = []
        self.attempt = self.tries = self.fresh_tries = self.bad_signatures = 0
        self.partial = False
        self.timer = None   # the driver's timer handle (asyncio.TimerHandle or the agent Loop's)


class _CyclicGCPause:
    """Pauses Python's cyclic garbage collector while any batch is in flight (nested or concurrent
    batches share one pause; the collector resumes when the last ends, if it was on before).

    A fan-out keeps thousands of requests' state alive at once, and each full collection walks all of
    it: ~20% of the controller's CPU in a 10,000-machine round (bench/bench_fanout.py). That state is
    freed by reference counting as replies arrive, so nothing waits for the collector meanwhile.
    """

    _lock = threading.Lock()
    _depth = 0
    _resume = False

    def __enter__(self):
        with self._lock:
            if _CyclicGCPause._depth == 0:
                _CyclicGCPause._resume = gc.isenabled()
                gc.disable()
            _CyclicGCPause._depth += 1

    def __exit__(self, *exc):
        with self._lock:
            _CyclicGCPause._depth -= 1
            if _CyclicGCPause._depth == 0 and _CyclicGCPause._resume:
                gc.enable()


class _Batch:
    """One send_many call: results as they come, the in-flight count, and what to call at the end."""

    def __init__(self, total: int, progress, done: Callable[[], None]):
        self.total = total
        self.progress = progress
        self.results: dict[str, dict] = {}
        self.in_flight = 0
        self.done = done
        self.start_more = lambda: None

    def finish(self, ip: str, result: dict):
        self.results[ip] = result
        self.in_flight -= 1
        if self.progress:
            self.progress(len(self.results), self.total)
        if len(self.results) == self.total:
            self.done()
        else:
            self.start_more()


def failure(code: str, message: str) -> dict:
    """A result for a machine that did not answer as asked: the one error model, {"code", "message"}."""
    return {"status": False, "error": {"code": code, "message": message}, "operations": [], "cluster_info": {}}


class _Endpoint:
    """The asyncio datagram protocol (asyncio.DatagramProtocol's methods, without importing asyncio here)."""

    def __init__(self, client: Client):
        self.client = client
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.client._on_datagram(data, addr[:2])

    def error_received(self, exc):   # ICMP unreachable and the like: the retry timer copes
        pass

    def connection_lost(self, exc):
        pass

    def pause_writing(self):   # as DatagramProtocol: the transport keeps buffering what the kernel refused
        pass

    def resume_writing(self):
        pass


def _open_socket() -> tuple[socket.socket, bool]:
    """A dual-stack UDP socket when IPv6 exists here (IPv4 then travels as ::ffff:a.b.c.d), else IPv4."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        dual = True
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
        dual = False
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER_BYTES)
            break
        except (OSError, TypeError):
            continue
    return sock, dual


class Client:
    """A UDP client for many machines at once. Use `async with Client(keystore) as c: await c.send_many(...)`."""

    def __init__(self, keystore: KeyStore | None = None, max_datagram: int = protocol.DEFAULT_MAX_DATAGRAM,
                 rng: random.Random | None = None):
        self.keystore = keystore or KeyStore()
        self.max_datagram = max_datagram
        self.rng = rng or random.Random()
        self._pending: dict[bytes, _Pending] = {}   # by msg_id
        self.endpoint = protocol.Endpoint(protocol.TO_CONTROLLER, self._keys_for, max_datagram=max_datagram)
        self._transport: _Endpoint | None = None
        self._resend_task = None
        self._dual = False
        # The driver, set when the socket opens (asyncio's loop, or the agent's Loop in send_blocking).
        self._time: Callable[[], float] = time.monotonic
        self._call_at = None     # (when, callback, arg) -> handle
        self._cancel = None      # (handle) -> None
        self._send = None        # (datagram, addr) -> None

    def _keys_for(self, ip: str, msg_id: bytes):
        pending = self._pending.get(msg_id)
        return pending.keys if pending is not None else None

    async def __aenter__(self):
        import asyncio
        loop = asyncio.get_running_loop()
        sock, self._dual = _open_socket()
        _, self._transport = await loop.create_datagram_endpoint(lambda: _Endpoint(self), sock=sock)
        self._time, self._call_at, self._cancel = loop.time, loop.call_at, asyncio.TimerHandle.cancel
        self._send = self._transport.transport.sendto
        self._resend_task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc):
        if self._resend_task:
            self._resend_task.cancel()
        if self._transport and self._transport.transport:
            self._transport.transport.close()

    def _addr(self, ip: str, port: int) -> tuple:
        if self._dual and ":" not in ip:
            return ("::ffff:" + ip, port)
        return (ip, port)

    # --- sending ----------------------------------------------------------------------------------

    async def send_many(self, targets: Iterable[str], operations: list, cluster_info: dict | None = None, *,
                        port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT_S,
                        concurrency: int = DEFAULT_CONCURRENCY,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
        """Ask every target; returns {ip: reply or failure(code, message)} in target order.

        No task per machine: each request is a table entry with one loop timer driving its
        retransmissions, and at most `concurrency` are in flight (about 100 us of CPU per machine).
        """
        import asyncio
        finished = asyncio.get_running_loop().create_future()
        with _CyclicGCPause():
            batch, targets = self._begin(targets, operations, cluster_info, port, timeout, concurrency, progress,
                                         lambda: finished.done() or finished.set_result(None))
            if targets:
                await finished
        return {ip: batch.results[ip] for ip in targets}

    def send_blocking(self, targets: Iterable[str], operations: list, cluster_info: dict | None = None, *,
                      port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT_S,
                      concurrency: int = DEFAULT_CONCURRENCY,
                      progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
        """send_many without asyncio, on the agent's selector loop: opens and closes its own socket.

        The socket stays blocking for sendto (a full send buffer then waits instead of dropping) and
        is read with MSG_DONTWAIT whenever the selector says it is readable.
        """
        from mdp_agent.loop import Loop
        loop = Loop()
        sock, self._dual = _open_socket()
        self._time, self._cancel, self._send = loop.time, loop.cancel, sock.sendto
        self._call_at = lambda when, callback, arg: loop.call_later(when - loop.time(), callback, arg)
        state = {"done": False}

        def receive():
            while True:
                try:
                    data, addr = sock.recvfrom(65535, socket.MSG_DONTWAIT)
                except OSError:   # drained (EAGAIN), or an ICMP error: the retry timer copes
                    return
                self._on_datagram(data, addr[:2])

        def tick():
            self.endpoint.tick(int(time.time() * 1000), time.monotonic())
            self._flush()
            loop.call_later(protocol.RESEND_GAP_S, tick)

        try:
            loop.add_reader(sock, receive)
            loop.call_later(protocol.RESEND_GAP_S, tick)
            with _CyclicGCPause():
                batch, targets = self._begin(targets, operations, cluster_info, port, timeout, concurrency,
                                             progress, lambda: state.update(done=True))
                while targets and not state["done"]:
                    loop.run_once()
            return {ip: batch.results[ip] for ip in targets}
        finally:
            loop.close()
            sock.close()

    def _begin(self, targets, operations, cluster_info, port, timeout, concurrency, progress, done):
        """Start the first `concurrency` requests; returns the batch and the targets without duplicates."""
        targets = list(dict.fromkeys(targets))
        batch = _Batch(len(targets), progress, done)
        if not targets:
            return batch, targets
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
        return batch, targets

    def _start(self, batch: _Batch, ip: str, port: int, payload: bytes, timeout: float):
        try:
            keys = self.keystore.get(ip)
        except KeyStoreError as exc:
            batch.finish(ip, failure(exc.code, exc.message))
            return
        now = self._time()
        pending = _Pending(ip, self._addr(ip, port), keys, payload, batch, now + timeout, timeout,
                           protocol.retransmit_delays(self.rng))
        self._stamp(pending)
        self._transmit(pending)

    def _stamp(self, pending: _Pending):
        """Give the request a new msg_id and timestamp (its first send, or a fresh try)."""
        self._pending.pop(pending.msg_id, None)
        # A fresh msg_id from send() itself: a new id needs no Stamps entry (the nonce rule's bookkeeping).
        pending.msg_id = self.endpoint.send(pending.addr, protocol.REQUEST, pending.payload, pending.keys,
                                            int(time.time() * 1000), time.monotonic(), response=False)
        self._pending[pending.msg_id] = pending
        pending.datagrams = self.endpoint.outbox.get(pending.msg_id) or []
        self.endpoint.datagrams_to_send()   # _transmit sends them, and again on each retransmission

    def _transmit(self, pending: _Pending):
        """Send (or, for a partial reply, let RESENDs work) and arm the next retransmission."""
        now = self._time()
        if now >= pending.deadline or pending.attempt >= len(pending.delays):
            self._finish(pending, self._timeout(pending))
            return
        if not pending.partial:   # a partial reply is completed by RESENDs, not by asking again
            pending.tries += 1
            self._sendto(pending.datagrams, pending.addr)
        wake = min(now + pending.delays[pending.attempt], pending.deadline)
        pending.attempt += 1
        pending.timer = self._call_at(wake, self._transmit, pending)

    def _finish(self, pending: _Pending, result: dict):
        if self._pending.pop(pending.msg_id, None) is None:
            return   # already finished
        if pending.timer is not None:
            self._cancel(pending.timer)
        self.endpoint.forget(pending.msg_id)
        pending.batch.finish(pending.ip, result)

    @staticmethod
    def _timeout(p: _Pending) -> dict:
        if p.bad_signatures:
            return failure("bad_signature", f"{p.bad_signatures} replies from {p.ip} did not verify with its key in "
                           f"the key store (the machine's key changed? re-deploy or `mdp keys revoke {p.ip}`)")
        if p.partial:
            return failure("timeout", f"the reply from {p.ip}:{p.addr[1]} arrived incomplete within {p.timeout:g} s")
        return failure("timeout", f"no reply from {p.ip}:{p.addr[1]} after {p.tries} tries in {p.timeout:g} s "
                       "(agent down, wrong port, a firewall dropping UDP, or a key in the key store that is not "
                       "this agent's: an agent ignores requests it cannot verify)")

    def _sendto(self, datagrams: list[bytes], addr: tuple):
        send = self._send
        for datagram in datagrams:
            send(datagram, addr)

    def _flush(self):
        send = self._send
        for addr, datagram in self.endpoint.datagrams_to_send():
            send(datagram, addr)

    # --- receiving --------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr):
        # Matched by message id, not by source address: a multi-homed agent bound to the wildcard
        # answers from whichever address its kernel routes by. Nothing is trusted before the MAC checks.
        for event in self.endpoint.feed(data, addr, int(time.time() * 1000), time.monotonic()):
            pending = self._pending.get(event.msg_id)
            if pending is None:
                continue
            if isinstance(event, protocol.Message):
                if event.kind == protocol.REPLY:
                    self._on_reply(pending, event.obj)
            elif isinstance(event, protocol.Refusal) and event.code == "bad_signature":
                pending.bad_signatures += 1
        pending = self._pending.get(protocol.peek_msg_id(data))
        if pending is not None and self.endpoint.reassembler.has(addr[0], pending.msg_id):
            pending.partial = True
        self._flush()

    def _on_reply(self, pending: _Pending, reply: dict):
        error = reply.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if code in RETRYABLE and pending.fresh_tries < MAX_FRESH_TRIES and \
                self._time() < pending.deadline:
            # The agent cannot tell this copy from a replay (it restarted, or our stamp is below its
            # floor): ask again as a new request. The user never sees this.
            pending.fresh_tries += 1
            if pending.timer is not None:
                self._cancel(pending.timer)
            pending.attempt, pending.partial = 0, False
            self._stamp(pending)
            self._transmit(pending)
            return
        self._finish(pending, _normalise_reply(pending.ip, reply))

    async def _tick(self):
        """Every RESEND_GAP_S: ask agents for the chunks of replies that stopped short."""
        import asyncio
        while True:
            await asyncio.sleep(protocol.RESEND_GAP_S)
            self.endpoint.tick(int(time.time() * 1000), time.monotonic())
            self._flush()


def _normalise_reply(ip: str, reply: dict) -> dict:
    """A reply as callers see it; a whole-request refusal keeps its {"code", "message"} error object."""
    error = reply.get("error")
    if isinstance(error, dict):
        code = str(error.get("code", "error"))
        reply = dict(reply, status=False, error=dict(error, code=code, message=f"{ip} says {error.get('message', '')}"))
    elif error is not None:
        reply = dict(reply, status=False, error={"code": "error", "message": str(error)})
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


def send_sync(targets: Iterable[str], operations: list, cluster_info: dict | None = None, *,
              keystore: KeyStore | None = None, known_machines: str | None = None,
              port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT_S,
              concurrency: int = DEFAULT_CONCURRENCY, max_datagram: int = protocol.DEFAULT_MAX_DATAGRAM,
              progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Blocking send_many for the CLI, scripts and the Ansible action plugin; needs no asyncio
    (Client.send_blocking), and must not be called from a running event loop's thread."""
    keystore = keystore or KeyStore(known_machines)
    return Client(keystore, max_datagram).send_blocking(targets, operations, cluster_info, port=port,
                                                        timeout=timeout, concurrency=concurrency, progress=progress)
