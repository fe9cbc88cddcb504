"""The collector's enrolment paths in-process: a real Collector, key store and SQLite, datagrams fed by hand.

The transport is a list (the one method the Collector calls, sendto), so every answer can be counted.
"""

import os
import time

from mdp_agent import kex, protocol
from mdp_controller.collector import KEY_AGREEMENTS_PER_S, Collector
from mdp_controller.keystore import KeyStore
from mdp_controller.storage import ReportStore

AGENT = ("192.0.2.7", 5000)


class Sent(list):
    def sendto(self, data, addr):
        self.append((addr, data))


def collector(tmp_path, accept_new=False):
    keystore = KeyStore(tmp_path / "km")
    made = Collector(keystore, ReportStore(str(tmp_path / "mdp.db")), accept_new)
    sent = Sent()
    made.connection_made(sent)
    return made, keystore, sent


def hello(agreement=None, msg_id=None):
    agreement = agreement or kex.KeyAgreement()
    msg_id = msg_id or os.urandom(8)
    return agreement, msg_id, protocol.encode_hello(agreement.public_bytes, msg_id, int(time.time() * 1000))


def test_one_enrolment_per_address_answered_alike_then_closed_once_trusted(tmp_path):
    monitor, keystore, sent = collector(tmp_path)
    agreement, msg_id, datagram = hello()
    monitor.handle(datagram, AGENT)
    monitor.handle(datagram, AGENT)   # the WELCOME was lost: the same one again, no second agreement
    assert [addr for addr, _ in sent] == [AGENT, AGENT] and sent[0][1] == sent[1][1]
    mine = protocol.open_welcome(sent[0][1], agreement, msg_id)
    assert keystore.fingerprint(AGENT[0], "pending") == mine.fingerprint and mine.identity == AGENT[0]
    assert keystore.get_text(AGENT[0], "pending") == protocol.hexlify(mine.keys.key)

    # Sealed reports wait unstored while the key is pending; accepted, they are taken.
    _, [report] = protocol.encode(protocol.REPORT, {"status": True, "version": "2.0", "operations": []}, mine.keys,
                                  protocol.TO_CONTROLLER, timestamp_ms=int(time.time() * 1000))
    monitor.handle(report, AGENT)
    assert monitor.stats["reports"] == 0 and monitor.stats["dropped"]["unknown_machine"] == 1
    keystore.accept(AGENT[0], mine.fingerprint)
    monitor.handle(report, AGENT)
    assert monitor.stats["reports"] == 1

    monitor.handle(datagram, AGENT)   # a late copy of the accepted enrolment's HELLO: silently dropped
    assert monitor.stats["dropped"]["duplicate"] == 1 and len(sent) == 2
    _, _, other = hello()
    monitor.handle(other, AGENT)       # a new enrolment for a trusted address: refused, reported
    assert monitor.stats["dropped"]["known_machine_hello"] == 1 and len(sent) == 2
    assert keystore.get_text(AGENT[0]) == protocol.hexlify(mine.keys.key)
    kinds = [row[0] for row in monitor.store.conn.execute("SELECT kind FROM events WHERE ip = ? ORDER BY id", AGENT[:1])]
    assert kinds == ["pending", "key_mismatch"]


def test_a_new_hello_replaces_the_pending_enrolment_and_accept_new_trusts_at_once(tmp_path):
    monitor, keystore, sent = collector(tmp_path)
    first_agreement, first_id, first = hello()
    second_agreement, second_id, second = hello()
    monitor.handle(first, AGENT)
    monitor.handle(second, AGENT)
    assert len(sent) == 2
    replaced = protocol.open_welcome(sent[1][1], second_agreement, second_id)
    assert keystore.fingerprint(AGENT[0], "pending") == replaced.fingerprint
    assert keystore.count("pending") == 1

    (tmp_path / "open").mkdir()
    open_monitor, open_keystore, open_sent = collector(tmp_path / "open", accept_new=True)
    agreement, msg_id, datagram = hello()
    open_monitor.handle(datagram, AGENT)
    trusted = protocol.open_welcome(open_sent[0][1], agreement, msg_id)
    assert open_keystore.get_text(AGENT[0]) == protocol.hexlify(trusted.keys.key)
    assert open_keystore.count("pending") == 0


def test_strangers_cost_no_key_agreement_past_the_rate_limits(tmp_path):
    monitor, keystore, sent = collector(tmp_path)
    hellos = [hello()[2] for _ in range(40)]
    began = time.monotonic()
    for i, datagram in enumerate(hellos):   # 40 addresses at once: the global cap answers a burst of 5
        monitor.handle(datagram, ("192.0.2.%d" % (i + 10), 5000))
    allowed = KEY_AGREEMENTS_PER_S * (1 + time.monotonic() - began)   # the burst, and what refilled meanwhile
    assert len(sent) == keystore.count("pending") <= allowed
    assert monitor.stats["dropped"]["rate_limited"] >= 40 - allowed
    monitor.handle(b"MD" + bytes(408), AGENT)                          # right size, wrong shape
    monitor.handle(hello()[2][:-1], AGENT)                             # one byte short
    assert monitor.stats["dropped"]["unknown_machine"] == 2
