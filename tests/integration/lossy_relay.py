"""A UDP relay that loses, duplicates and reorders datagrams on purpose, deterministically.

Kernel netem is absent here, so the integration tests put this between the controller and an agent:

    client --> relay listen (127.0.0.9:P) --> per-client socket --> agent (127.0.0.2:P)
    client <-- relay listen               <-- per-client socket <-- agent

Each direction ("up" = towards the agent, "down" = back) has its own Impairment and its own random
generator seeded from `seed`, so the n-th datagram in a direction always meets the same fate: a failing
run can be replayed. One thread serves every socket with `selectors`; delayed datagrams wait in a heap.
"""

from __future__ import annotations

import heapq
import itertools
import random
import selectors
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

BUFFER_BYTES = 8 * 1024 * 1024   # large enough that the relay itself never adds loss of its own


@dataclass(frozen=True)
class Impairment:
    drop: float = 0.0          # probability a datagram is lost
    duplicate: float = 0.0     # probability it is sent twice
    reorder: float = 0.0       # probability it is held back up to max_delay_s (later ones overtake it)
    max_delay_s: float = 0.03
    drop_indices: frozenset = field(default_factory=frozenset)   # these datagram numbers (0-based) are lost


@dataclass
class DirectionStats:
    seen: int = 0
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0
    kinds: Counter = field(default_factory=Counter)   # MDP message kind (header byte 3) -> datagrams seen


def _socket(bind):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
            break
        except OSError:
            continue
    sock.bind(bind)
    sock.setblocking(False)
    return sock


class LossyRelay:
    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], up: Impairment = Impairment(),
                 down: Impairment = Impairment(), seed: int = 1):
        self.listen = listen
        self.upstream = upstream
        self.impairments = {"up": up, "down": down}
        self.rngs = {d: random.Random(f"{seed}-{d}") for d in ("up", "down")}
        self.stats = {d: DirectionStats() for d in ("up", "down")}
        self._selector = selectors.DefaultSelector()
        self._listen_sock = None
        self._by_client: dict[tuple, socket.socket] = {}   # client address -> its upstream socket
        self._held = []                                     # heap of (release_at, seq, sock, data, addr)
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self._listen_sock = _socket(self.listen)
        self._selector.register(self._listen_sock, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="lossy-relay", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        for sock in [self._listen_sock, *self._by_client.values()]:
            sock.close()
        self._selector.close()

    def _run(self):
        while not self._stop.is_set():
            timeout = 0.05
            if self._held:
                timeout = max(0.0, min(timeout, self._held[0][0] - time.monotonic()))
            for key, _ in self._selector.select(timeout):
                self._drain(key.fileobj, key.data)
            now = time.monotonic()
            while self._held and self._held[0][0] <= now:
                _, _, sock, data, addr = heapq.heappop(self._held)
                self._send(sock, data, addr)

    def _drain(self, sock, client):
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:   # ICMP unreachable from a stopped peer: not our concern
                return
            if client is None:   # from a client, towards the agent
                out = self._by_client.get(addr)
                if out is None:
                    out = self._by_client[addr] = _socket((self.listen[0], 0))
                    self._selector.register(out, selectors.EVENT_READ, addr)
                self._forward("up", data, out, self.upstream)
            else:                # from the agent, back to the client it answers
                self._forward("down", data, self._listen_sock, client)

    def _forward(self, direction, data, sock, addr):
        imp, rng, stats = self.impairments[direction], self.rngs[direction], self.stats[direction]
        index = stats.seen
        stats.seen += 1
        if data[:2] == b"MD" and len(data) > 3:
            stats.kinds[data[3]] += 1
        # Always draw the same four numbers, so each datagram's fate depends only on its index.
        r_drop, r_dup, r_reorder, r_delay = rng.random(), rng.random(), rng.random(), rng.random()
        if index in imp.drop_indices or r_drop < imp.drop:
            stats.dropped += 1
            return
        copies = 2 if r_dup < imp.duplicate else 1
        stats.duplicated += copies - 1
        for copy in range(copies):
            if r_reorder < imp.reorder or copy:
                stats.delayed += 1
                release = time.monotonic() + r_delay * imp.max_delay_s * (copy + 1)
                heapq.heappush(self._held, (release, next(self._seq), sock, data, addr))
            else:
                self._send(sock, data, addr)

    @staticmethod
    def _send(sock, data, addr):
        try:
            sock.sendto(data, addr)
        except OSError:
            pass   # a full or vanished peer loses the datagram, as a network would
