"""Key rotation without downtime (issue 8 item 3), with real agent and monitor processes on loopback.

The agent's `--keyring install|use|remove` and SIGHUP, the controller's `mdp keys install|use|remove`:
during the overlap requests under either key are answered, each reply sealed with the request's key,
and the monitor stores reports under either key; after `remove` the old key is refused on both sides.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

from mdp_agent import protocol
from mdp_controller import client
from mdp_controller.keystore import KeyStore

from .harness import PYTHON, REPO, mdp_env, run_mdp, wait_for


def keyring_step(agent, step: str) -> dict:
    """`python3 -m mdp_agent --keyring STEP` on the agent's state dir, then SIGHUP, as the playbook does."""
    env = dict(mdp_env(), PYTHONPATH=str(REPO / "agent_src"))
    done = subprocess.run([PYTHON, "-m", "mdp_agent", "--config", "/nonexistent", "--state-dir",
                           str(agent.state_dir), "--keyring", step], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    agent.signal(signal.SIGHUP)
    return json.loads(done.stdout)


def wait_for_ring(agent, in_use: str, accepted: list[str]):
    """Until the running agent says (agent.keyring) it took the files: SIGHUP is asynchronous."""
    want = {"in_use": in_use, "accepted": accepted}
    wait_for(lambda: agent.result("agent.keyring") == want, f"the agent to use {want}", timeout=15, interval=0.1)


def store_with(path, ip: str, key_text: str) -> str:
    KeyStore(path).put(ip, key_text, replace=True)
    return str(path)


def ping(agent, known_machines: str, timeout: float = 5.0) -> dict:
    return client.send_sync([agent.ip], ["ping"], known_machines=known_machines, port=agent.port,
                            timeout=timeout)[agent.ip]


def test_both_keys_answer_during_the_overlap_each_with_its_own_key_and_the_old_one_is_refused_after(
        spawn_agent, tmp_path):
    agent = spawn_agent("127.0.0.2")
    old_text = agent.key_text
    old_store = store_with(tmp_path / "old", agent.ip, old_text)
    old_fp = protocol.key_fingerprint(protocol.parse_key_text(old_text))

    installed = keyring_step(agent, "install")
    new_fp = installed["next"]
    assert installed["changed"] and installed["in_use"] == old_fp and new_fp != old_fp
    wait_for_ring(agent, old_fp, [old_fp, new_fp])
    new_text = (agent.state_dir / "agent.next.key").read_text()
    new_store = store_with(tmp_path / "new", agent.ip, new_text)

    # The client accepts a reply only under the key its request used (client._keys_for): a reply
    # sealed with the other key of the ring would never arrive as an answer.
    for store in (old_store, new_store):
        reply = ping(agent, store)
        assert reply["status"] and reply["operations"][0]["result"]["reply"] == "pong", (store, reply)

    assert keyring_step(agent, "use") == {"changed": True, "in_use": new_fp, "next": None, "previous": old_fp}
    wait_for_ring(agent, new_fp, [new_fp, old_fp])
    store_with(agent.known_machines, agent.ip, new_text)   # the harness's own store (agent.stats) follows
    for store in (old_store, new_store):
        assert ping(agent, store)["status"], store

    assert keyring_step(agent, "remove")["previous"] is None
    wait_for_ring(agent, new_fp, [new_fp])
    assert ping(agent, new_store)["status"]
    refused_before = agent.stats()["dropped"].get("bad_signature", 0)
    stale = ping(agent, old_store, timeout=2.0)
    assert not stale["status"] and stale["error"]["code"] == "timeout", stale
    assert agent.stats()["dropped"].get("bad_signature", 0) > refused_before, "the agent refused the old key"


def test_a_reply_is_sealed_with_the_key_of_its_request(spawn_agent, tmp_path):
    """On the wire: a request under the installed key gets a reply that opens with it and not with the other."""
    agent = spawn_agent("127.0.0.3")
    old = protocol.KeyPair.from_text(agent.key_text)
    installed = keyring_step(agent, "install")
    wait_for_ring(agent, installed["in_use"], [installed["in_use"], installed["next"]])
    new = protocol.KeyPair.from_text((agent.state_dir / "agent.next.key").read_text())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        for keys, other in ((new, old), (old, new)):
            msg_id, datagrams = protocol.encode(protocol.REQUEST, protocol.make_request(["ping"]), keys,
                                                protocol.TO_AGENT, None, int(time.time() * 1000))
            sock.sendto(datagrams[0], (agent.ip, agent.port))
            answer, _ = sock.recvfrom(65536)
            packet = protocol.open_datagram(answer, keys, protocol.TO_CONTROLLER)
            assert packet.msg_id == msg_id and b"pong" in protocol.decode_text(packet.flags, packet.body).encode()
            try:
                protocol.open_datagram(answer, other, protocol.TO_CONTROLLER)
            except protocol.ProtocolError as exc:
                assert exc.code == "bad_signature"
            else:
                raise AssertionError("the reply opened with the key the request did not use")


class ReportSender:
    """Reports sealed by hand from the agent's address (the monitor keys reports by IP, not port)."""

    def __init__(self, ip: str, monitor):
        self.monitor = monitor
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))

    def send(self, keys, marker: str):
        body = protocol.make_reply([{"name": "marker", "result": marker}])
        body["reported_at"] = time.time()
        _, datagrams = protocol.encode(protocol.REPORT, body, keys, protocol.TO_CONTROLLER, None,
                                       int(time.time() * 1000))
        for datagram in datagrams:
            self.sock.sendto(datagram, ("127.0.0.1", self.monitor.port))

    def stored(self, ip: str, marker: str) -> bool:
        return self.monitor.report_count(ip, containing=marker) > 0


def test_the_monitor_stores_reports_under_either_key_during_the_overlap_and_refuses_the_old_one_after(
        spawn_agent, spawn_monitor, tmp_path):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    agent = spawn_agent("127.0.0.4", flags=["--monitor", monitor.address, "--interval", "1"])
    agent.trust(monitor_keys)
    wait_for(lambda: monitor.report_count(agent.ip) >= 1, "a first report", timeout=20)
    old = protocol.KeyPair.from_text(agent.key_text)
    sender = ReportSender(agent.ip, monitor)

    installed = keyring_step(agent, "install")
    next_file = agent.state_dir / "agent.next.key"
    new = protocol.KeyPair.from_text(next_file.read_text())
    mdp = run_mdp("keys", "install", agent.ip, "--key-file", next_file, "--known-machines", monitor_keys, "--json")
    assert mdp.returncode == 0, mdp.stderr
    assert json.loads(mdp.stdout) == {"changed": True, "in_use": installed["in_use"], "next": installed["next"],
                                      "previous": None}
    assert oct(os.stat(monitor_keys / "next" / f"{agent.ip}.txt").st_mode & 0o777) == "0o600"
    assert oct(os.stat(monitor_keys / "next").st_mode & 0o777) == "0o700"

    # The agent puts the new key in use first: its own reports switch while the monitor's key is still the old.
    keyring_step(agent, "use")
    wait_for_ring(agent, installed["next"], [installed["next"], installed["in_use"]])
    store_with(agent.known_machines, agent.ip, next_file.with_name("agent.key").read_text())
    switched = time.time()
    wait_for(lambda: monitor.report_count(agent.ip, since=switched) >= 2, "reports under the new key", timeout=20)
    for keys, marker in ((old, "overlap-old"), (new, "overlap-new")):
        sender.send(keys, marker)
        wait_for(lambda: sender.stored(agent.ip, marker), f"the {marker} report", timeout=10)

    for step in ("use", "remove"):
        mdp = run_mdp("keys", step, agent.ip, "--known-machines", monitor_keys, "--json")
        assert mdp.returncode == 0 and json.loads(mdp.stdout)["changed"], (step, mdp.stdout, mdp.stderr)
    assert (monitor_keys / f"{agent.ip}.txt").read_text() == next_file.with_name("agent.key").read_text()
    assert not (monitor_keys / "previous" / f"{agent.ip}.txt").exists()

    # Sent in order on one socket: once the later report is stored, the earlier one was looked at.
    sender.send(old, "after-old")
    sender.send(new, "after-new")
    wait_for(lambda: sender.stored(agent.ip, "after-new"), "the report under the new key", timeout=10)
    assert not sender.stored(agent.ip, "after-old"), "a report under the removed key is refused"
    removed = time.time()
    wait_for(lambda: monitor.report_count(agent.ip, since=removed) >= 2, "the agent's reports after remove",
             timeout=20)
    assert agent.stats()["spool_dropped"] == 0
