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


class Loop(object):
    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self._timers = []                 # heap of (when, seq, callback, args)
        self._seq = itertools.count()
        self._cancelled = set()
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
        handle = next(self._seq)
        heapq.heappush(self._timers, (self.time() + delay, handle, callback, args))
        return handle

    def cancel(self, handle):
        self._cancelled.add(handle)

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
            timeout = max(0.0, min(timeout, self._timers[0][0] - self.time()))
        for key, _ in self.selector.select(timeout):
            key.data()
        with self._lock:
            ready, self._ready = self._ready, collections.deque()
        for callback, args in ready:
            callback(*args)
        now = self.time()
        while self._timers and self._timers[0][0] <= now:
            _, handle, callback, args = heapq.heappop(self._timers)
            if handle in self._cancelled:
                self._cancelled.discard(handle)
                continue
            callback(*args)

    def close(self):
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _set_nonblocking(fd):
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
