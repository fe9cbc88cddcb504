"""Enrolment by key agreement between a real agent and a real `mdp monitor`, with relays on loopback.

A faithful relay shows both sides agreeing on one key and one fingerprint; a man in the middle (a
relay that swaps both public values for its own, and so holds a key with each side) shows up as two
different fingerprints, and `mdp keys accept IP --fingerprint` with the agent's refuses. Raw
sockets check the monitor's answers: the same HELLO gets the same WELCOME, a refused value none.
"""

from __future__ import annotations

import os
import socket
import time

from mdp_agent import kex, protocol
from mdp_controller.keystore import KeyStore

from .harness import run_mdp, wait_for
from .lossy_relay import LossyRelay

RELAY = "127.0.0.25"


class KeySwappingRelay(LossyRelay):
    """Mallory on the path: his own public value towards each side, a key agreed with each."""

    def __init__(self, listen, upstream):
        super().__init__(listen, upstream, seed="mallory")
        self.towards_monitor = kex.KeyAgreement()
        self.hello = None          # (msg_id, the agent's public value, its timestamp)
        self.monitor_side = None   # the Enrolment Mallory holds with the monitor
        self.agent_side = None     # ... and with the agent

    def _forward(self, direction, data, sock, addr):
        hello = protocol.parse_hello(data) if direction == "up" else None
        if hello is not None:
            self.hello = hello + (protocol.HEADER.unpack_from(data)[8],)
            # The same bytes for every repeat of the agent's HELLO, as the agent itself does.
            data = protocol.encode_hello(self.towards_monitor.public_bytes, hello[0], self.hello[2])
        elif direction == "down" and data[3] == protocol.WELCOME and self.hello is not None:
            self.monitor_side = protocol.open_welcome(data, self.towards_monitor, self.hello[0])
            if self.agent_side is None:   # echo the identity the monitor saw, so only the values differ
                self.agent_side = protocol.answer_hello(self.hello[1], self.monitor_side.identity, self.hello[0],
                                                        int(time.time() * 1000))
            data = self.agent_side.datagram
        super()._forward(direction, data, sock, addr)


def _enrolling_agent(spawn_agent, port):
    return spawn_agent("127.0.0.3", flags=["--monitor", f"{RELAY}:{port}", "--interval", "1", "--enrol"],
                       trust=False)


def test_through_a_faithful_relay_both_sides_show_one_fingerprint(spawn_agent, spawn_monitor, tmp_path, port):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    store = KeyStore(monitor_keys)
    with LossyRelay((RELAY, port), ("127.0.0.1", port), seed="faithful"):
        agent = _enrolling_agent(spawn_agent, port)
        fingerprint, identity = agent.enrolment()
        assert identity == RELAY   # the address the monitor saw: the relay's
        assert store.fingerprint(RELAY, "pending") == fingerprint
        accepted = run_mdp("keys", "accept", RELAY, "--fingerprint", fingerprint, "--known-machines", monitor_keys)
        assert accepted.returncode == 0, accepted.stderr
        assert store.get_text(RELAY) == agent.key_text.strip()
        wait_for(lambda: monitor.report_count(RELAY) >= 1, "the enrolled agent's reports", timeout=20)


def test_a_man_in_the_middle_shows_two_fingerprints_and_accept_refuses(spawn_agent, spawn_monitor, tmp_path, port):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    store = KeyStore(monitor_keys)
    with KeySwappingRelay((RELAY, port), ("127.0.0.1", port)) as mallory:
        agent = _enrolling_agent(spawn_agent, port)
        agent_fingerprint, identity = agent.enrolment()
        wait_for(lambda: store.fingerprint(RELAY, "pending"), "the monitor's pending enrolment")
    monitor_fingerprint = store.fingerprint(RELAY, "pending")
    assert identity == RELAY
    # Mallory holds both keys: the agent's and the one the monitor filed.
    assert agent.key_text.strip() == protocol.hexlify(mallory.agent_side.keys.key)
    assert store.get_text(RELAY, "pending") == protocol.hexlify(mallory.monitor_side.keys.key)
    assert mallory.agent_side.keys.key != mallory.monitor_side.keys.key
    # ... and the two sides show different fingerprints, which is what the operator compares.
    assert agent_fingerprint == mallory.agent_side.fingerprint
    assert monitor_fingerprint == mallory.monitor_side.fingerprint != agent_fingerprint
    refused = run_mdp("keys", "accept", RELAY, "--fingerprint", agent_fingerprint, "--known-machines", monitor_keys)
    assert refused.returncode == 1, refused.stdout
    assert f"has fingerprint {monitor_fingerprint}, not {agent_fingerprint}: not accepted" in refused.stderr
    assert store.get_text(RELAY) is None and store.get_text(RELAY, "pending") is not None
    assert monitor.report_count(RELAY) == 0


def test_the_monitor_answers_a_repeated_hello_alike_and_a_refused_value_not_at_all(spawn_monitor, tmp_path, port):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    agreement = kex.KeyAgreement()
    msg_id = os.urandom(8)
    hello = protocol.encode_hello(agreement.public_bytes, msg_id, int(time.time() * 1000))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.6", 0))
        sock.settimeout(10)
        sock.sendto(hello, ("127.0.0.1", port))
        first = sock.recv(2048)
        sock.sendto(hello, ("127.0.0.1", port))
        assert sock.recv(2048) == first   # the stored answer, not a second key agreement
        enrolment = protocol.open_welcome(first, agreement, msg_id)
        assert enrolment.identity == "127.0.0.6" and len(first) <= protocol.AMPLIFICATION_FACTOR * len(hello)
        assert KeyStore(monitor_keys).get_text("127.0.0.6", "pending") == protocol.hexlify(enrolment.keys.key)
        # 1 and p-1 (the small subgroup) and a non-residue: refused, never answered.
        non_residue = next(y for y in range(3, 100) if not kex.legendre_is_one(y))
        for value in (1, kex.FFDHE3072_P - 1, non_residue):
            sock.sendto(protocol.encode_hello(kex.encode_int(value), os.urandom(8), int(time.time() * 1000)),
                        ("127.0.0.1", port))
        wait_for(lambda: "bad_public_value" in monitor.log(), "the refused values to be logged")
        sock.settimeout(0.5)
        try:
            extra = sock.recv(2048)
        except TimeoutError:
            extra = None
        assert extra is None
    assert KeyStore(monitor_keys).get_text("127.0.0.6", "pending") == protocol.hexlify(enrolment.keys.key)
