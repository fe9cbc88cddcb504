"""Nothing readable crosses the wire (issue 8 part 4): every datagram of a realistic session, captured.

Real agents, a real `mdp monitor`, the real `mdp send`, and capture relays (lossy_relay.py with no
loss, recording every datagram both ways) in front of the agent and of the monitor:

    mdp send / client --> relay 127.0.0.23 --> agent 127.0.0.2 --reports--> relay 127.0.0.21 --> monitor
                                                agent 127.0.0.3 --HELLO----> relay 127.0.0.22 --> monitor

The session: `mdp send` of every operation the agent's registry has, reports to the monitor and
their ACKs, a report.subscribe, a cluster activation request (no Syncthing here: the agent answers
with an error, which is fine), and an enrolment by key agreement (HELLO, WELCOME) followed by the
new machine's reports. No datagram, the HELLO and the WELCOME included, may contain a JSON key
name, an operation name, the hostname, a process name from the process list, or any key file's
bytes (raw, hex, base64), the key agreed at enrolment included.
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
import threading

from mdp_agent import protocol
from mdp_agent.registry import load_default_registry

from .harness import run_mdp, wait_for
from .lossy_relay import LossyRelay

CONTROLLER_SIDE, REPORTS_SIDE, ENROL_SIDE = "127.0.0.23", "127.0.0.21", "127.0.0.22"
AGENT_OPERATIONS = ["agent.stats", "report.subscribe", "report.unsubscribe", "report.subscriptions"]
JSON_NAMES = ["operations", "result", "status", "cluster_info", "name", "missing", "token", "version", "error",
              "code", "message", "args", "ack", "count", "reported_at", "key", "hostname", "cluster_machines",
              "cluster_mode", "pid", "cmdline", "user"]


class CaptureRelay(LossyRelay):
    """A relay that loses nothing and keeps a copy of every datagram it forwards, both ways."""

    def __init__(self, listen, upstream):
        super().__init__(listen, upstream, seed="capture")
        self.captured: list[bytes] = []
        self._lock = threading.Lock()

    def _forward(self, direction, data, sock, addr):
        with self._lock:
            self.captured.append(bytes(data))
        super()._forward(direction, data, sock, addr)


def _key_forms(key_text: str) -> list[bytes]:
    raw = binascii.unhexlify(key_text.strip())
    hex_text = key_text.strip().encode("ascii")
    return [raw, hex_text.lower(), hex_text.upper(), base64.b64encode(raw), base64.b64encode(raw).rstrip(b"="),
            base64.urlsafe_b64encode(raw).rstrip(b"="), base64.b32encode(raw).rstrip(b"=")]


def _send(known_machines, port, *args):
    out = run_mdp("send", "--known-machines", known_machines, "--port", port, "--timeout", 20, "--json", *args)
    assert out.stdout, out.stderr
    return json.loads(out.stdout)[CONTROLLER_SIDE]


def test_no_datagram_of_a_whole_session_is_readable(spawn_agent, spawn_monitor, tmp_path, port, known_machines):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys, accept_new=True)
    monitor_addr = ("127.0.0.1", port)
    relays = [CaptureRelay((CONTROLLER_SIDE, port), ("127.0.0.2", port)),
              CaptureRelay((REPORTS_SIDE, port), monitor_addr), CaptureRelay((ENROL_SIDE, port), monitor_addr)]
    for relay in relays:
        relay.__enter__()
    try:
        agent = spawn_agent("127.0.0.2", flags=["--monitor", f"{REPORTS_SIDE}:{port}", "--interval", "1"])
        agent.trust(as_ip=CONTROLLER_SIDE)                  # the controller reaches it through the relay
        agent.trust(monitor_keys, as_ip=REPORTS_SIDE)       # the monitor sees its reports from the relay
        newcomer = spawn_agent("127.0.0.3", flags=["--monitor", f"{ENROL_SIDE}:{port}", "--interval", "1",
                                                   "--enrol"], trust=False)
        assert not (newcomer.state_dir / "agent.key").exists()   # its key will be agreed, never sent

        operations = sorted(set(load_default_registry().names()) | set(AGENT_OPERATIONS))
        everything = _send(known_machines, port, CONTROLLER_SIDE, *operations)
        assert [r["name"] for r in everything["operations"]] == operations   # every one was asked and answered
        processes = _send(known_machines, port, CONTROLLER_SIDE, '{"name": "process.top", "args": {"n": 50}}')
        process_names = {row["name"] for row in processes["operations"][0]["result"] if isinstance(row, dict)}
        assert process_names
        subscribed = _send(known_machines, port, CONTROLLER_SIDE,
                           '{"name": "report.subscribe", "args": {"operations": ["process.count"], "every": 1}}')
        assert subscribed["status"], subscribed
        cluster = _send(known_machines, port, CONTROLLER_SIDE, "--cluster-info", json.dumps(
            {"cluster_machines": ["127.0.0.2", "127.0.0.3"],
             "cluster_mode": [{"name": "sync_folders", "folder": str(tmp_path / "shared")}]}))
        assert cluster["status"] is False or cluster.get("cluster_info") is not None   # an answer, not a timeout

        wait_for(lambda: monitor.report_count(REPORTS_SIDE, containing="process.count") >= 1,
                 "a report with the subscribed operation at the monitor", timeout=30)
        wait_for(lambda: monitor.report_count(ENROL_SIDE) >= 1, "the enrolled agent's first stored report",
                 timeout=30)
    finally:
        for relay in relays:
            relay.__exit__(None, None, None)

    captured = [d for relay in relays for d in relay.captured]
    kinds = {d[3] for d in captured if d[:2] == protocol.MAGIC}
    assert kinds >= {protocol.REQUEST, protocol.REPLY, protocol.REPORT, protocol.ACK, protocol.HELLO,
                     protocol.WELCOME}, kinds
    assert all(d[:2] == protocol.MAGIC and d[2] == protocol.PROTOCOL_VERSION for d in captured)

    hostname = socket.gethostname().encode()
    forbidden = {f'"{name}"'.encode(): "JSON key" for name in JSON_NAMES}
    forbidden.update({name.encode(): "operation name" for name in operations})
    forbidden.update({name.encode(): "process name" for name in process_names if len(name) >= 5})
    if len(hostname) >= 4:
        forbidden[hostname] = "hostname"
    assert (monitor_keys / f"{ENROL_SIDE}.txt").read_text() == newcomer.key_text   # one key, agreed
    for key_text in (agent.key_text, newcomer.key_text):
        forbidden.update({form: "key bytes" for form in _key_forms(key_text)})

    assert len(captured) >= 20, len(captured)
    enrolment = [d for d in captured if d[3] in (protocol.HELLO, protocol.WELCOME)]
    assert enrolment and all(len(d) == protocol.HELLO_SIZE or d[3] == protocol.WELCOME for d in enrolment)
    leaks = sorted({(what, text[:40]) for d in captured for text, what in forbidden.items() if text in d})
    assert not leaks, f"readable on the wire: {leaks}"
