"""Real processes for the integration tests: agents, the monitor and the `mdp` CLI, plus waiting on conditions.

Agents listen on 127.0.0.2-127.0.0.9 and the monitor on 127.0.0.1, all on one random port per test
session: the demo (port 12345 on 127.0.0.1-4) and the benchmarks (127.10.x.x) may run at the same time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from mdp_agent import protocol
from mdp_controller import client
from mdp_controller.keystore import KeyStore

REPO = Path(__file__).resolve().parents[2]
_VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(_VENV_BIN / "python") if (_VENV_BIN / "python").exists() else sys.executable
MDP = str(_VENV_BIN / "mdp") if (_VENV_BIN / "mdp").exists() else None
# The oldest Python 3 here (pyenv keeps several), as the Makefile picks it: the agent must run on it.
_OLD = sorted(Path("/root/.pyenv/versions").glob("3.*/bin/python3"),
              key=lambda p: tuple(int(n) for n in p.parts[-3].split(".")))
OLDEST_PYTHON = str(_OLD[0]) if _OLD else None
MONITOR_IP = "127.0.0.1"
# Below Linux's ephemeral range (32768-60999), so no client socket can take the port from under us.
PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A UDP port nobody uses on any address: a wildcard bind fails if any 127.0.0.x holds it."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free UDP port in {PORT_RANGE[0]}-{PORT_RANGE[1]}")


def wait_for(predicate, what: str, timeout: float = 10.0, interval: float = 0.05):
    """Poll predicate() until it returns something truthy (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)


def write_config(path: Path, **settings) -> Path:
    """An agent.conf with an [agent] section."""
    lines = ["[agent]"] + [f"{name} = {value}" for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def mdp_env() -> dict:
    env = dict(os.environ)
    env.pop("MDP_KNOWN_MACHINES", None)
    return env


def run_mdp(*args, timeout: float = 60.0, umask: int = -1) -> subprocess.CompletedProcess:
    """The real `mdp` console script as a subprocess."""
    argv = [MDP] if MDP else [PYTHON, "-m", "mdp_controller.cli"]
    return subprocess.run(argv + [str(a) for a in args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=mdp_env(), umask=umask)


class Process:
    """A subprocess whose stderr/stdout go to a log file; stop() ends it, kill() is the teardown backstop."""

    def __init__(self, name: str, log_path: Path):
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def _spawn(self, argv, umask=-1, env=None):
        with open(self.log_path, "ab") as log:   # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env or mdp_env(),
                                         umask=umask, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 10.0, after: int = 0):
        """Wait until the log shows text (past character offset `after`); fail with the log if the process died."""
        def seen():
            if text in self.log()[after:]:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return False
        wait_for(seen, f"{self.name} to log {text!r}", timeout, interval=0.01)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Agent(Process):
    """`python -m mdp_agent` on ip:port with its own state dir; requests go through the real client library."""

    def __init__(self, workdir: Path, ip: str, port: int, known_machines: Path, config: Path | None = None,
                 flags=(), state_dir: Path | None = None, python: str | None = None):
        self.ip, self.port = ip, port
        self.python = python or PYTHON
        self.state_dir = state_dir or workdir / f"agent-{ip}" / "state"
        self.config = config
        self.flags = list(flags)
        self.known_machines = known_machines
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(f"agent {ip}", self.state_dir.parent / "agent.log")

    def start(self, umask=-1) -> Agent:
        offset = len(self.log())
        env = dict(mdp_env(), PYTHONPATH=str(REPO / "agent_src"))   # the tree deploy.yml copies to machines
        self._spawn([self.python, "-m", "mdp_agent", "--config", str(self.config or "/nonexistent"),
                     "--bind", self.ip, "--port", str(self.port), "--state-dir", str(self.state_dir),
                     "--log-level", "debug"] + self.flags, umask=umask, env=env)
        self.wait_for_log("listening on", after=offset)
        return self

    @property
    def key_text(self) -> str:
        return (self.state_dir / "agent.key").read_text()

    def enrolment(self, timeout: float = 20.0) -> tuple[str, str]:
        """(fingerprint, identity) this agent logged when its enrolment by HELLO completed."""
        logged = re.compile(r"enrolled with the monitor \S+ as (\S+): enrolment fingerprint ([A-Z2-7-]+);")
        wait_for(lambda: logged.search(self.log()), f"{self.name} to complete its enrolment", timeout=timeout)
        identity, fingerprint = logged.search(self.log()).groups()
        return fingerprint, identity

    def trust(self, known_machines: Path | None = None, as_ip: str | None = None):
        """Put this agent's key in a key store, as deploy.yml's fetch does."""
        KeyStore(known_machines or self.known_machines).put(as_ip or self.ip, self.key_text, replace=True)
        return self

    def request(self, operations, timeout: float = 5.0, ip: str | None = None) -> dict:
        """One request to this agent (or to ip, e.g. a relay in front of it); returns the reply."""
        target = ip or self.ip
        return client.send_sync([target], operations, known_machines=str(self.known_machines), port=self.port,
                                timeout=timeout)[target]

    def result(self, operation, **kwargs):
        reply = self.request([operation], **kwargs)
        assert reply["status"], reply
        return reply["operations"][0]["result"]

    def stats(self) -> dict:
        return self.result("agent.stats")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")


class Monitor(Process):
    """`mdp monitor` on 127.0.0.1:port with its own key store and SQLite file."""

    def __init__(self, workdir: Path, port: int, known_machines: Path, accept_new: bool = False, flags=()):
        self.port = port
        self.known_machines = known_machines
        self.db = workdir / "monitor.db"
        self.accept_new = accept_new
        self.flags = list(flags)
        super().__init__("monitor", workdir / "monitor.log")

    def start(self, umask=-1) -> Monitor:
        argv = [MDP, "monitor"] if MDP else [PYTHON, "-m", "mdp_controller.cli", "monitor"]
        argv += ["--listen", f"{MONITOR_IP}:{self.port}", "--db", str(self.db),
                 "--known-machines", str(self.known_machines)]
        self._spawn(argv + (["--accept-new"] if self.accept_new else []) + self.flags, umask=umask)
        self.wait_for_log("monitor listening on")
        return self

    @property
    def address(self) -> str:
        return f"{MONITOR_IP}:{self.port}"

    def query(self, sql: str, *params) -> list[sqlite3.Row]:
        """Read the monitor's database (read-only; WAL lets us read while it writes)."""
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:   # the schema is not there yet
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    def report_count(self, ip: str, since: float = 0.0, containing: str | None = None) -> int:
        """Reports from ip after since; containing: text in the body as stored (the compact JSON received)."""
        sql = "SELECT COUNT(*) FROM reports WHERE ip = ? AND received_at > ?"
        params = [ip, since]
        if containing is not None:
            sql += " AND instr(body, ?) > 0"
            params.append(containing)
        rows = self.query(sql, *params)
        return rows[0][0] if rows else 0

    def events(self, ip: str) -> list[tuple[str, str]]:
        return [(r["kind"], r["message"]) for r in self.query("SELECT kind, message FROM events WHERE ip = ?", ip)]


def signed_request(keys: protocol.KeyPair, operations, timestamp_ms: int | None = None, msg_id=None,
                   max_datagram: int = protocol.DEFAULT_MAX_DATAGRAM) -> tuple[bytes, list[bytes]]:
    """A request's datagrams, signed like the controller signs them (timestamp overridable)."""
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    return protocol.encode(protocol.REQUEST, protocol.make_request(operations), keys, protocol.TO_AGENT,
                           msg_id, timestamp_ms, max_datagram)


def raw_datagram(keys: protocol.KeyPair, kind: int = protocol.REQUEST, body: bytes = b'{"operations":["ping"]}',
                 count: int = 1, index: int = 0, msg_id: bytes | None = None, sign: bool = True,
                 version: int = protocol.PROTOCOL_VERSION) -> bytes:
    """One hand-made datagram towards an agent, with any header field wrong on purpose (sealed, or not).

    version=1 makes an MDP/1 datagram (clear body, HMAC-SHA256), as an old controller would send."""
    head = protocol.HEADER.pack(protocol.MAGIC, version, kind, 0, 0, index, count, msg_id or os.urandom(8),
                                int(time.time() * 1000))
    if version == protocol.LEGACY_VERSION:
        mac = hmac.new(protocol.legacy_direction_key(keys.key, protocol.TO_AGENT), head + body, hashlib.sha256)
        return head + body + (mac.digest() if sign else bytes(32))
    if not sign:
        return head + body + bytes(protocol.TAG_SIZE)
    return protocol.seal_datagram(keys.to_agent, head, body)


def receive_reply(sock: socket.socket, keys: protocol.KeyPair, msg_id: bytes, timeout: float = 5.0) -> dict:
    """Read one complete, verified reply to msg_id from a raw socket (reassembling chunks)."""
    reassembler = protocol.Reassembler()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no reply to {msg_id.hex()} within {timeout:g} s")
        sock.settimeout(remaining)
        try:
            data, _ = sock.recvfrom(protocol.MAX_DATAGRAM)
        except TimeoutError:
            continue
        packet = protocol.open_datagram(data, keys, protocol.TO_CONTROLLER)
        if packet.msg_id != msg_id or packet.kind != protocol.REPLY:
            continue
        complete = reassembler.add("agent", packet, time.monotonic())
        if complete is not None:
            return protocol.decode_body(complete[1], complete[3])
