"""A small single-threaded event loop on `selectors`, with timers and thread-safe callbacks.

The agent's sockets are served here; operations run on worker threads and hand their results back
with call_soon_threadsafe, so the loop never waits on an operation.
"""

import collections
import fcntl
import heapq
import itertools
import os
import selectors
import threading
import time


class _Timer(object):
    """A scheduled call. cancel() drops the callback and its arguments at once, so a cancelled timer
    no longer keeps a closure (and the job and result it holds) alive until it would have fired."""

    __slots__ = ("when", "seq", "callback", "args")

    def __init__(self, when, seq, callback, args):
        self.when, self.seq, self.callback, self.args = when, seq, callback, args

    def __lt__(self, other):
        return (self.when, self.seq) < (other.when, other.seq)


# Cancelled timers left in the heap are empty shells; past this many (and half the heap), rebuild it.
COMPACT_CANCELLED = 1024


class Loop(object):
    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self._timers = []                 # heap of _Timer
        self._seq = itertools.count()
        self._cancelled = 0
        self._ready = collections.deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        _set_nonblocking(self._wake_r)
        _set_nonblocking(self._wake_w)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeup)
        self.running = False

    @staticmethod
    def time():
        return time.monotonic()

    def add_reader(self, fileobj, callback):
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj):
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def call_later(self, delay, callback, *args):
        """Run callback(*args) after delay seconds; returns a handle for cancel()."""
        timer = _Timer(self.time() + delay, next(self._seq), callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def cancel(self, timer):
        if timer.callback is None:
            return
        timer.callback = timer.args = None
        self._cancelled += 1
        if self._cancelled > COMPACT_CANCELLED and self._cancelled * 2 > len(self._timers):
            self._timers = [t for t in self._timers if t.callback is not None]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def call_soon_threadsafe(self, callback, *args):
        with self._lock:
            self._ready.append((callback, args))
        self.wakeup()

    def wakeup(self):
        """Interrupt select(); safe from other threads and signal handlers."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass   # the pipe is full: a wake-up is already pending

    def _drain_wakeup(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass

    def stop(self):
        self.running = False
        self.wakeup()

    def run_forever(self):
        self.running = True
        while self.running:
            self.run_once()

    def run_once(self, max_wait=1.0):
        timeout = max_wait
        if self._ready:
            timeout = 0
        elif self._timers:
            timeout = max(0.0, min(timeout, self._timers[0].when - self.time()))
        for key, _ in self.selector.select(timeout):
            key.data()
        with self._lock:
            ready, self._ready = self._ready, collections.deque()
        for callback, args in ready:
            callback(*args)
        now = self.time()
        while self._timers and self._timers[0].when <= now:
            timer = heapq.heappop(self._timers)
            callback, args = timer.callback, timer.args
            if callback is None:
                self._cancelled = max(0, self._cancelled - 1)
                continue
            timer.callback = timer.args = None
            callback(*args)

    def close(self):
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _set_nonblocking(fd):
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
