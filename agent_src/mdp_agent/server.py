"""The agent: verifies requests, runs allowed operations off the loop, replies, and reports.

One Agent serves one UDP socket. Several agents can share one Loop and one worker pool (the
benchmarks run thousands per process); `python3 -m mdp_agent` runs exactly one.
"""

import json
import logging
import math
import os
import queue
import socket
import threading
import time

from . import kex, protocol
from .config import parse_hostport
from .keyfile import KEY_FILE, create_private_file, ensure_private_dir, read_key_file, write_private_file
from .registry import OperationError
from .spool import SPOOL_DIR, ReportSpool

log = logging.getLogger("mdp_agent")

SUBSCRIPTIONS_FILE = "subscriptions.json"
ENROLLED_FILE = "enrolled"      # the monitor address our key was agreed with, then its fingerprint
# While enrolling, the same HELLO goes out again until the monitor answers: after 1 s, doubling up to
# 30 s, so an absent monitor costs one 410-byte datagram every 30 s.
HELLO_RETRY_FIRST_S = 1.0
HELLO_RETRY_MAX_S = 30.0
MAX_SUBSCRIPTIONS = 32          # each one adds an operation run to every report it is due in
MIN_SUBSCRIPTION_EVERY_S = 1.0
# Operations queued or running on the pool; past this, new ones answer "busy" at once rather than
# queueing without bound behind stuck ones (a timed-out thread keeps its slot until it returns).
MAX_PENDING_OPERATIONS = 256
RECV_BATCH = 64                 # datagrams read per wake-up before the loop looks at timers again
# A chunked request arrives as a burst; the default ~200 KiB socket buffer overflows at a few hundred
# datagrams. 1 MiB holds a 1 MiB request's burst (the kernel caps it at net.core.rmem_max).
RECEIVE_BUFFER_BYTES = 1024 * 1024
DROP_LOG_INTERVAL_S = 10.0      # at most one log line per drop reason per interval per agent


def now_ms():
    return int(time.time() * 1000)


class WorkerPool(object):
    """A bounded pool of daemon threads shared by the agents on one loop.

    Daemon threads, not concurrent.futures: its workers are joined at interpreter exit, so SIGTERM
    would wait for a stuck operation. Here the process exits at once and abandons them.
    """

    def __init__(self, loop, workers):
        self.loop = loop
        self.pending = 0
        self.workers = workers
        self._queue = queue.Queue()
        for n in range(workers):
            thread = threading.Thread(target=self._work, name="mdp-worker-%d" % n)
            thread.daemon = True
            thread.start()

    def submit(self, func, done):
        """Run func() on a worker; done(result, error) runs on the loop. False when the pool is full."""
        if self.pending >= MAX_PENDING_OPERATIONS:
            return False
        self.pending += 1
        self._queue.put((func, done))
        return True

    def _work(self):
        while True:
            func, done = self._queue.get()
            if func is None:
                return
            try:
                result, error = func(), None
            except Exception as exc:   # reported to the caller as the operation's error
                result, error = None, exc
            self.loop.call_soon_threadsafe(self._finish, done, result, error)

    def _finish(self, done, result, error):
        self.pending -= 1
        done(result, error)

    def shutdown(self):
        """Ask idle workers to exit; busy ones are daemons and die with the process."""
        for _ in range(self.workers):
            self._queue.put((None, None))


class _Job(object):
    """One request (or report) being answered: results fill in as operations finish."""

    __slots__ = ("peer", "msg_id", "results", "waiting", "cluster_info", "on_done", "kind")

    def __init__(self, peer, msg_id, count, on_done, kind):
        self.peer, self.msg_id, self.on_done, self.kind = peer, msg_id, on_done, kind
        self.results = [None] * count
        self.waiting = count
        self.cluster_info = {}


class Agent(object):
    def __init__(self, loop, settings, keys, registry, pool, cluster=None, state_dir=None):
        self.loop = loop
        self.settings = settings
        self.keys = keys                # the key in use: what this agent seals its own reports with
        self.other_keys = ()            # the rest of the keyring during a rotation (keyfile.Keyring)
        self.registry = registry
        self.pool = pool
        self.cluster = cluster
        self.state_dir = state_dir or settings["state_dir"]
        self.sock = None
        self.address = None
        self.endpoint = None            # made at start(): its replay guard starts at our start time
        self.spool = ReportSpool(os.path.join(self.state_dir, SPOOL_DIR))
        self.stats = {"received": 0, "requests": 0, "replies": 0, "duplicates": 0, "reports": 0,
                      "reports_acked": 0, "hellos": 0, "dropped": {}}
        self._last_drop_log = {}
        self.monitor_addr = None
        self.enrolled = False           # our key was agreed with the monitor by HELLO (tracked when enrol is on)
        self._hello = None              # the enrolment under way: KeyAgreement, msg_id, HELLO bytes, next send
        self._monitor_silent = False    # no ACK since the last report: the monitor may be down
        self.subscriptions = {}         # "name" or json of {"name","args"} -> {"operation", "every", "due"}
        self._next_report = None
        self._timer = None
        self._resend_timer = None
        self.register_internal_operations()

    def register_internal_operations(self):
        """Operations that read or change this agent's own state (registry.AGENT_OPERATIONS lists
        them and their flags); they run on the loop (cheap)."""
        self.registry.register_agent_operations(self)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, sock=None):
        """Bind (or adopt sock), start serving, and schedule the reporter."""
        if sock is None:
            family = socket.AF_INET6 if ":" in self.settings["bind"] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((self.settings["bind"], self.settings["port"]))
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        except OSError:
            pass   # keep the default: only large requests suffer, and RESEND recovers them
        self.sock = sock
        self.address = sock.getsockname()
        self.endpoint = protocol.Endpoint(
            protocol.TO_AGENT, lambda ip, msg_id: self.keys, dedup={protocol.REQUEST: False}, answer_errors=True,
            max_datagram=self.settings["max_datagram"], replay_window_s=self.settings["replay_window"],
            reassembly_bytes=protocol.AGENT_REASSEMBLY_BYTES_TOTAL, not_before_ms=now_ms(),
            replay_entries=protocol.AGENT_REPLAY_CACHE_ENTRIES, outbox_bytes=protocol.AGENT_OUTBOX_BYTES,
            alternate_keys=lambda ip: self.other_keys)
        self.loop.add_reader(sock, self._on_readable)
        self.spool.load(time.time(), time.monotonic())
        self._load_subscriptions()
        self.configure_reporting()
        if self.keys is None and self.monitor_addr is not None:
            self._say_hello(time.monotonic())
        self._timer = self.loop.call_later(1.0, self._tick)

    def configure_reporting(self):
        """(Re)read the monitor and interval settings; called at start and on SIGHUP."""
        self.monitor_addr = None
        if self.settings["monitor"]:
            host, port = parse_hostport(self.settings["monitor"])
            try:
                info = socket.getaddrinfo(host, port, self.sock.family, socket.SOCK_DGRAM)
                self.monitor_addr = info[0][4][:2]
            except socket.gaierror as exc:
                log.error("monitor %s cannot be resolved (%s); reports are off until SIGHUP", host, exc)
        self._next_report = time.monotonic() + min(self.settings["interval"], 1.0) if self.monitor_addr else None
        self.enrolled = self._read_enrolled() == self.settings["monitor"] if self.settings["enrol"] else False
        if self._hello is not None and self._hello["monitor"] != self.settings["monitor"]:
            self._hello = None          # another monitor: a new enrolment attempt

    def stop(self):
        if self.sock is not None:
            self.loop.remove_reader(self.sock)
            self.sock.close()
            self.sock = None
        if self._timer is not None:
            self.loop.cancel(self._timer)

    # --- receiving --------------------------------------------------------------------------------

    def _on_readable(self):
        for _ in range(RECV_BATCH):
            try:
                data, peer = self.sock.recvfrom(protocol.MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # e.g. ICMP port unreachable reported on the socket
                log.debug("recvfrom: %s", exc)
                return
            self.stats["received"] += 1
            try:
                self.handle_datagram(data, peer[:2])
            except Exception:   # the agent never dies from input; a bug here is logged and survived
                log.exception("unexpected error handling a datagram from %s", peer[0])
                self._count_drop("internal_error", peer)

    def handle_datagram(self, data, peer):
        endpoint = self.endpoint
        for event in endpoint.feed(data, peer, now_ms(), time.monotonic()):
            if isinstance(event, protocol.Message):
                if event.kind == protocol.REQUEST:
                    self._handle_request(event)
                elif event.kind == protocol.ACK:
                    self._handle_ack(event)
            elif isinstance(event, protocol.Duplicate):
                self.stats["duplicates"] += 1
            elif not (event.code == "no_key" and self._hello is not None and self._on_welcome(data, peer)):
                self._count_drop(event.code, peer)
        self._flush()

    def _handle_request(self, message):
        try:
            operations, cluster_info = protocol.parse_request(message.obj)
        except protocol.ProtocolError as exc:
            self._count_drop(exc.code, message.addr)
            self.endpoint.refuse(message.addr, message.msg_id, exc, message.keys, now_ms(), time.monotonic())
            self._flush()
            return
        self.stats["requests"] += 1
        # The reply is sealed with the key the request used (during a rotation either one of the ring).
        self.run_operations(message.addr, message.msg_id, operations, cluster_info,
                            lambda job: self._reply_done(job, message.keys), protocol.REPLY)

    def _handle_ack(self, message):
        if message.addr != self.monitor_addr:
            self._count_drop("unexpected_ack", message.addr)
            return
        what = message.obj.get("ack")
        if what == "report":
            if self.spool.ack(message.msg_id):
                self.stats["reports_acked"] += 1
            self.endpoint.forget(message.msg_id)
            if self._monitor_silent:   # it is back: drain the backlog (at the spool's bounded rate)
                self._monitor_silent = False
                self.spool.hurry(time.monotonic())

    # --- enrolment: agree a key with the monitor (docs/protocol.md, HELLO and WELCOME) ----------------

    def _say_hello(self, mono):
        """While we have no key: the same HELLO (one KeyAgreement per attempt) until the monitor answers."""
        hello = self._hello
        if hello is None:
            agreement = kex.KeyAgreement()
            msg_id = protocol.new_msg_id()
            hello = self._hello = {"agreement": agreement, "msg_id": msg_id, "due": mono, "wait": HELLO_RETRY_FIRST_S,
                                   "datagram": protocol.encode_hello(agreement.public_bytes, msg_id, now_ms()),
                                   "monitor": self.settings["monitor"]}
            log.info("no key yet: enrolling with the monitor %s by key agreement (HELLO)", self.settings["monitor"])
        if mono < hello["due"]:
            return
        hello["due"], hello["wait"] = mono + hello["wait"], min(2 * hello["wait"], HELLO_RETRY_MAX_S)
        try:
            self.sock.sendto(hello["datagram"], self.monitor_addr)
        except OSError as exc:
            self._count_drop("send_failed", self.monitor_addr, str(exc))
        self.stats["hellos"] += 1

    def _on_welcome(self, data, peer):
        """The monitor's answer to our HELLO: derive, confirm, store the key. False if data is no WELCOME."""
        if peer != self.monitor_addr or data[3:4] != bytearray([protocol.WELCOME]):
            return False
        try:
            enrolment = protocol.open_welcome(data, self._hello["agreement"], self._hello["msg_id"])
        except protocol.ProtocolError as exc:
            self._count_drop(exc.code, peer, exc.message)
            return True
        path = os.path.join(self.state_dir, KEY_FILE)
        try:
            ensure_private_dir(self.state_dir)
            stored = create_private_file(path, protocol.hexlify(enrolment.keys.key) + "\n")
            keys = read_key_file(path)
        except (IOError, OSError, ValueError) as exc:   # the next WELCOME (to our next HELLO) may fare better
            log.error("cannot store the enrolled key in %s: %s", path, exc)
            return True
        self.keys, self._hello = keys, None
        if not stored:   # another process (--init-only) wrote a key meanwhile: one key wins, never two
            log.warning("%s appeared while enrolling: using it, not the key agreed with the monitor", path)
            return True
        self.enrolled = True
        self._write_enrolled("fingerprint %s identity %s\n" % (enrolment.fingerprint, enrolment.identity))
        # What `mdp keys list` shows for the pending machine: the operator compares the two.
        log.info("enrolled with the monitor %s as %s: enrolment fingerprint %s; on the monitor, after comparing: "
                 "mdp keys accept %s --fingerprint %s (key in %s)", self.settings["monitor"], enrolment.identity,
                 enrolment.fingerprint, enrolment.identity, enrolment.fingerprint, path)
        return True

    # --- running operations -----------------------------------------------------------------------

    def run_operations(self, peer, msg_id, operations, cluster_info, on_done, kind):
        """Run each requested operation (inline or on the pool); on_done(job) when all have answered."""
        parts = len(operations) + (1 if cluster_info else 0)
        job = _Job(peer, msg_id, len(operations), on_done, kind)
        job.waiting = parts
        if parts == 0:
            on_done(job)
            return
        for index, item in enumerate(operations):
            self._start_operation(job, index, item)
        if cluster_info:
            self._start_cluster(job, cluster_info)

    def _start_operation(self, job, index, item):
        name = item if isinstance(item, str) else (item.get("name") if isinstance(item, dict) else None)
        try:
            name, args = protocol.parse_operation(item)
            operation = self.registry.lookup(name)
        except ValueError as exc:
            return self._settle(job, index, name, None, OperationError("bad_request", str(exc)))
        except OperationError as exc:
            return self._settle(job, index, name, None, exc)
        if operation.inline:
            try:
                result = operation.call(args)
            except OperationError as exc:
                return self._settle(job, index, name, None, exc)
            return self._settle(job, index, name, result, None)
        self._submit(job, index, name, lambda: operation.call(args))

    def _start_cluster(self, job, cluster_info):
        if self.cluster is None:
            error = OperationError("not_supported", "cluster mode is not available on this agent")
            return self._settle(job, None, "cluster_info", None, error)
        local_ip = self.address[0] if self.address[0] not in ("0.0.0.0", "::") else None
        self._submit(job, None, "cluster_info", lambda: self.cluster.handle(cluster_info, local_ip))

    def _submit(self, job, index, name, func):
        timeout = self.settings["operation_timeout"]
        state = {"settled": False}

        def done(result, error):
            if not state["settled"]:
                state["settled"] = True
                self.loop.cancel(timer)
                self._settle(job, index, name, result, error)

        def timed_out():
            if not state["settled"]:
                state["settled"] = True
                self._settle(job, index, name, None,
                             OperationError("timeout", "%s did not finish within %g s" % (name, timeout)))

        timer = self.loop.call_later(timeout, timed_out)
        if not self.pool.submit(func, done):
            state["settled"] = True
            self.loop.cancel(timer)
            self._settle(job, index, name, None,
                         OperationError("busy", "agent has %d operations pending; try again later"
                                        % MAX_PENDING_OPERATIONS))

    def _settle(self, job, index, name, result, error):
        if error is not None and not isinstance(error, OperationError):
            code = getattr(error, "code", "failed")
            error = OperationError(code if isinstance(code, str) else "failed",
                                   getattr(error, "message", None) or "%s: %s" % (type(error).__name__, error))
        if index is None:   # the cluster_info part
            job.cluster_info = {"error": error.to_dict()} if error else (result or {})
        elif error is not None:
            job.results[index] = {"name": name, "error": error.to_dict()}
        else:
            job.results[index] = {"name": name, "result": result}
        job.waiting -= 1
        if job.waiting == 0:
            job.on_done(job)

    def _reply_done(self, job, keys=None):
        reply = protocol.make_reply(job.results, job.cluster_info)
        if "error" in job.cluster_info:
            reply["status"] = False
        if self.sock is not None:
            self._send(job.peer, protocol.REPLY, reply, job.msg_id, keys=keys)
            self.stats["replies"] += 1

    # --- sending ----------------------------------------------------------------------------------

    def _send(self, addr, kind, obj, msg_id=None, response=True, cache=True, compress=True, keys=None):
        """Encode and send through the endpoint; an object that cannot be encoded becomes an error reply."""
        wall, mono = now_ms(), time.monotonic()
        try:
            payload = protocol.dump_json(obj) if not isinstance(obj, bytes) else obj
            if len(payload) > protocol.MAX_MESSAGE_BYTES:
                raise protocol.ProtocolError("too_large", "message is %d bytes, the limit is %d"
                                             % (len(payload), protocol.MAX_MESSAGE_BYTES))
        except (protocol.ProtocolError, TypeError, ValueError) as exc:
            log.error("cannot encode a %s for %s: %s", protocol.KIND_NAMES[kind], addr[0], exc)
            error = protocol.ProtocolError("too_large" if isinstance(exc, protocol.ProtocolError) else "failed",
                                           "the reply could not be encoded: %s" % exc)
            payload = protocol.dump_json(protocol.error_reply(error))
        msg_id = self.endpoint.send(addr, kind, payload, keys or self.keys, wall, mono, msg_id, response, cache,
                                    compress)
        self._flush()
        return msg_id

    def _flush(self):
        sock = self.sock
        if sock is None:
            return
        for addr, datagram in self.endpoint.datagrams_to_send():
            try:
                sock.sendto(datagram, addr)
            except OSError as exc:   # full buffers or an unreachable peer must not stop the agent
                self._count_drop("send_failed", addr, str(exc))

    def _count_drop(self, reason, peer, detail=""):
        dropped = self.stats["dropped"]
        dropped[reason] = dropped.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last_drop_log.get(reason, -DROP_LOG_INTERVAL_S) >= DROP_LOG_INTERVAL_S:
            self._last_drop_log[reason] = now
            log.warning("dropped datagram from %s: %s%s (%d so far)", peer[0], reason,
                        " (%s)" % detail if detail else "", dropped[reason])

    # --- timers and reporting ---------------------------------------------------------------------

    def _ask_for_missing_chunks(self):
        """While partial requests wait, ask for their missing chunks every RESEND_GAP_S."""
        self._resend_timer = None
        if self.sock is None:
            return
        self.endpoint.tick(now_ms(), time.monotonic())
        self._flush()
        if self.endpoint.reassembler.pending():
            self._resend_timer = self.loop.call_later(protocol.RESEND_GAP_S, self._ask_for_missing_chunks)

    def _tick(self):
        """Once a second: age out state, resend unacknowledged reports, send due reports."""
        self._timer = self.loop.call_later(1.0, self._tick)
        if self.sock is None:
            return
        mono = time.monotonic()
        if self.endpoint.reassembler.pending() and self._resend_timer is None:
            self._resend_timer = self.loop.call_later(protocol.RESEND_GAP_S, self._ask_for_missing_chunks)
        self.endpoint.tick(now_ms(), mono)
        if self.monitor_addr is None:
            self._flush()
            return
        if self.keys is None:   # enrolling: nothing can be sealed yet
            self._say_hello(mono)
            return
        for msg_id, payload in self.spool.due(time.time(), mono):
            self._monitor_silent = True
            self._send(self.monitor_addr, protocol.REPORT, payload, msg_id, response=False)
        due = []
        if mono >= self._next_report:
            self._next_report = mono + self.settings["interval"]
            due.extend(self.settings["report_operations"])
        for entry in self.subscriptions.values():
            if mono >= entry["due"]:
                entry["due"] = mono + entry["every"]
                due.append(entry["operation"])
        if due:
            self.report(due)
        self._flush()

    def report(self, operations):
        """Run operations and push the sealed results to the monitor."""
        self.run_operations(self.monitor_addr, None, operations, None, self._report_done, protocol.REPORT)

    def _report_done(self, job):
        if self.sock is None or self.monitor_addr is None:
            return
        reply = protocol.make_reply(job.results)
        reply["reported_at"] = now_ms() / 1000.0
        payload = protocol.dump_json(reply)
        msg_id = self._send(self.monitor_addr, protocol.REPORT, payload, response=False)
        self.spool.add(msg_id, payload, time.time(), time.monotonic())
        self.stats["reports"] += 1

    def _enrolled_path(self):
        return os.path.join(self.state_dir, ENROLLED_FILE)

    def _read_enrolled(self):
        try:
            with open(self._enrolled_path()) as handle:
                return handle.read(1024).split("\n", 1)[0].strip()
        except (IOError, OSError):
            return None

    def _write_enrolled(self, detail=""):
        try:
            write_private_file(self._enrolled_path(), self.settings["monitor"] + "\n" + detail)
        except (IOError, OSError) as exc:
            log.error("cannot remember the enrolment in %s: %s", self._enrolled_path(), exc)

    # --- agent-internal operations (registered in __init__) --------------------------------------

    def use_keyring(self, keys, other_keys):
        """Take a (re)loaded keyring (keyfile.Keyring.load): replies keep the key of their request."""
        self.keys, self.other_keys = keys, tuple(other_keys)

    def op_keyring(self):
        """The keys this agent holds, by fingerprint: {"in_use": the key it seals its reports with,
        "accepted": every key a request may use, the one in use first} (more than one during a key rotation)."""
        return {"in_use": protocol.key_fingerprint(self.keys.key),
                "accepted": [protocol.key_fingerprint(k.key) for k in (self.keys,) + self.other_keys]}

    def op_stats(self):
        """Counters of this agent: datagrams received, requests, replies, duplicates, reports, drops by reason.

        Also "site_modules": {"loaded": [file names], "failed": {file name: why}, "failed_count"}
        for the modules of operations_dir.
        """
        out = dict(self.stats)
        out["dropped"] = dict(self.stats["dropped"])
        endpoint = self.endpoint
        out.update(pending_operations=self.pool.pending, partial_messages=endpoint.reassembler.pending(),
                   cached_replies=len(endpoint.outbox), remembered_ids=len(endpoint.guard),
                   known_addresses=len(endpoint.addresses), spooled_reports=len(self.spool),
                   spool_bytes=self.spool.size, spool_dropped=self.spool.dropped,
                   subscriptions=len(self.subscriptions), enrolled=self.enrolled)
        site = self.registry.site_modules
        out["site_modules"] = {"loaded": list(site["loaded"]), "failed": dict(site["failed"]),
                               "failed_count": len(site["failed"])}
        return out

    def op_subscribe(self, operations, every=60):
        """Report operations to the monitoring host every `every` seconds (kept across restarts).

        operations: list of names or {"name", "args"} objects; every: seconds, at least 1.
        Returns the subscriptions now active.
        """
        if not isinstance(operations, list) or not operations:
            raise ValueError("operations must be a non-empty list")
        every = float(every)
        if not math.isfinite(every) or every < MIN_SUBSCRIPTION_EVERY_S:
            raise ValueError("every must be at least %g seconds" % MIN_SUBSCRIPTION_EVERY_S)
        for item in operations:
            name, args = protocol.parse_operation(item)
            # Unknown, not allowed, or bad arguments: refuse now, not in every report from now on.
            self.registry.lookup(name).check_arguments(args)
            key = _subscription_key(name, args)
            if key not in self.subscriptions and len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
                raise ValueError("at most %d subscriptions" % MAX_SUBSCRIPTIONS)
            operation = {"name": name, "args": args} if args else name
            self.subscriptions[key] = {"operation": operation, "every": every, "due": time.monotonic() + every}
        self._save_subscriptions()
        return self.op_subscriptions()

    def op_unsubscribe(self, operations=None):
        """Stop reporting the given operations (names or {"name", "args"}); all of them when omitted."""
        if operations is None:
            self.subscriptions.clear()
        else:
            if not isinstance(operations, list):
                raise ValueError("operations must be a list")
            for item in operations:
                name, args = protocol.parse_operation(item)
                self.subscriptions.pop(_subscription_key(name, args), None)
        self._save_subscriptions()
        return self.op_subscriptions()

    def op_subscriptions(self):
        """The operations reported on a schedule: [{"operation", "every"}]."""
        return [{"operation": e["operation"], "every": e["every"]}
                for _, e in sorted(self.subscriptions.items())]

    def _subscriptions_path(self):
        return os.path.join(self.state_dir, SUBSCRIPTIONS_FILE)

    def _save_subscriptions(self):
        write_private_file(self._subscriptions_path(), json.dumps(self.op_subscriptions(), indent=1) + "\n")

    def _load_subscriptions(self):
        path = self._subscriptions_path()
        if not os.path.exists(path):
            return
        try:
            with open(path) as handle:
                saved = json.loads(handle.read())
            for entry in saved:
                name, args = protocol.parse_operation(entry["operation"])
                every = float(entry["every"])
                if not math.isfinite(every):
                    raise ValueError("every is %r" % every)
                every = max(every, MIN_SUBSCRIPTION_EVERY_S)
                self.subscriptions[_subscription_key(name, args)] = {
                    "operation": entry["operation"], "every": every, "due": time.monotonic() + every}
        except (IOError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable %s: %s", path, exc)


def _subscription_key(name, args):
    return json.dumps([name, args], sort_keys=True)
