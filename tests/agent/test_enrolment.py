"""Enrolment on the wire (protocol.py): HELLO and WELCOME, built on kex.py, sans I/O.

The agent's HELLO is its ffdhe3072 public value and nothing else; the monitor's WELCOME is its own
public value, the address it saw and a key confirmation. Both sides derive one key; a man in the
middle gets a different fingerprint on each side. Runs under Python 3.6 too (stdlib + pytest).
"""

import pytest

from mdp_agent import kex
from mdp_agent import protocol as p

NOW_MS = 1767225600000
MSG_ID = b"\x21\x22\x23\x24\x25\x26\x27\x28"
IDENTITY = "192.0.2.20"


def enrol(identity=IDENTITY, msg_id=MSG_ID):
    """Both sides of one enrolment: (agent's KeyAgreement, HELLO, monitor's Enrolment, agent's Enrolment)."""
    agent = kex.KeyAgreement()
    hello = p.encode_hello(agent.public_bytes, msg_id, NOW_MS)
    their_id, agent_public = p.parse_hello(hello)
    monitor = p.answer_hello(agent_public, identity, their_id, NOW_MS + 5)
    return agent, hello, monitor, p.open_welcome(monitor.datagram, agent, msg_id)


def test_both_sides_derive_one_key_and_show_one_fingerprint():
    agent, hello, monitor, mine = enrol()
    assert mine.keys.key == monitor.keys.key and len(mine.keys.key) == 32
    assert mine.fingerprint == monitor.fingerprint and mine.identity == monitor.identity == IDENTITY
    # The key works as a machine key: a report sealed by the agent opens at the monitor.
    _, [report] = p.encode(p.REPORT, {"status": True}, mine.keys, p.TO_CONTROLLER, timestamp_ms=NOW_MS)
    assert p.open_datagram(report, monitor.keys, p.TO_CONTROLLER).kind == p.REPORT


def test_the_hello_is_the_public_value_and_nothing_else():
    agent, hello, monitor, mine = enrol()
    assert len(hello) == p.HELLO_SIZE == p.HEADER_SIZE + 384
    assert hello[p.HEADER_SIZE:] == agent.public_bytes
    assert p.HEADER.unpack_from(hello)[1:8] == (p.PROTOCOL_VERSION, p.HELLO, 0, 0, 0, 1, MSG_ID)
    for datagram in (hello, monitor.datagram):
        for form in (mine.keys.key, p.hexlify(mine.keys.key).encode(), b'"key"', b'"version"'):
            assert form not in datagram


def test_the_welcome_layout_and_the_3x_rule():
    agent, hello, monitor, _ = enrol()
    welcome = monitor.datagram
    fixed = p.HEADER_SIZE + 384
    assert p.HEADER.unpack_from(welcome)[1:8] == (p.PROTOCOL_VERSION, p.WELCOME, 0, 0, 0, 1, MSG_ID)
    assert bytearray(welcome[fixed:fixed + 1])[0] == len(IDENTITY)
    assert welcome[fixed + 1:-p.TAG_SIZE] == IDENTITY.encode("ascii")
    assert len(welcome) == fixed + 1 + len(IDENTITY) + p.TAG_SIZE
    longest = p.answer_hello(agent.public_bytes, "f" * p.MAX_IDENTITY, MSG_ID, NOW_MS).datagram
    assert len(longest) == p.MAX_WELCOME_SIZE <= p.AMPLIFICATION_FACTOR * len(hello)


def test_parse_hello_takes_only_the_exact_shape():
    agent = kex.KeyAgreement()
    hello = p.encode_hello(agent.public_bytes, MSG_ID, NOW_MS)
    assert p.parse_hello(hello) == (MSG_ID, agent.public_bytes)
    assert p.parse_hello(hello[:-1]) is None and p.parse_hello(hello + b"\x00") is None
    for offset, value in ((0, 0x58), (2, 1), (3, p.REPORT), (4, 1), (5, 1), (7, 1), (9, 2)):
        bad = bytearray(hello)
        bad[offset] = value
        assert p.parse_hello(bytes(bad)) is None, offset
    # A sealed report of the same length is no HELLO either.
    keys = p.KeyPair(bytes(32))
    [report] = p.encode_message(p.REPORT, b"x" * (p.HELLO_SIZE - p.OVERHEAD), keys.to_controller, MSG_ID, NOW_MS,
                                compress=False)
    assert len(report) == p.HELLO_SIZE and p.parse_hello(report) is None


@pytest.mark.parametrize("value", [0, 1, kex.FFDHE3072_P - 1, kex.FFDHE3072_P, 2 ** 3072 - 1])
def test_the_monitor_refuses_public_values_rfc7919_refuses(value):
    with pytest.raises(p.ProtocolError) as info:
        p.answer_hello(value.to_bytes(384, "big"), IDENTITY, MSG_ID, NOW_MS)
    assert info.value.code == "bad_public_value"


def test_the_monitor_refuses_a_value_outside_the_subgroup():
    non_residue = next(y for y in range(3, 100) if not kex.legendre_is_one(y))
    with pytest.raises(p.ProtocolError) as info:
        p.answer_hello(kex.encode_int(non_residue), IDENTITY, MSG_ID, NOW_MS)
    assert info.value.code == "bad_public_value"


def test_the_agent_refuses_a_damaged_or_foreign_welcome():
    agent, hello, monitor, _ = enrol()
    welcome = monitor.datagram
    fixed = p.HEADER_SIZE + 384

    def code(datagram, msg_id=MSG_ID, agreement=agent):
        with pytest.raises(p.ProtocolError) as info:
            p.open_welcome(datagram, agreement, msg_id)
        return info.value.code

    def flip(index):
        data = bytearray(welcome)
        data[index] ^= 0x01
        return bytes(data)

    assert code(welcome, msg_id=b"\x00" * 8) == "unexpected_welcome"       # not the answer to our HELLO
    assert code(welcome, agreement=kex.KeyAgreement()) == "bad_signature"  # another agent's answer
    assert code(flip(len(welcome) - 1)) == "bad_signature"                 # the confirmation
    assert code(flip(fixed + 1)) == "bad_signature"                        # the echoed identity
    assert code(flip(p.HEADER_SIZE - 1)) == "bad_signature"                # the timestamp (header)
    assert code(flip(fixed)) == "bad_welcome"                               # the identity's length byte
    assert code(welcome[:fixed + 1 + p.TAG_SIZE]) == "bad_welcome"          # no identity at all
    assert code(welcome + b"\x00" * 60) == "bad_welcome"                    # too long
    assert code(flip(3)) == "bad_welcome"                                   # kind
    out_of_range = welcome[:p.HEADER_SIZE] + kex.encode_int(1) + welcome[fixed:]
    assert code(out_of_range) == "bad_public_value"


def test_a_man_in_the_middle_yields_two_different_fingerprints():
    """Mallory answers the agent with his own value and enrols at the monitor with another: he holds a
    key with each side, and the two fingerprints differ, which is what the operator compares."""
    agent = kex.KeyAgreement()
    hello = p.encode_hello(agent.public_bytes, MSG_ID, NOW_MS)
    mallory_to_monitor = kex.KeyAgreement()
    at_monitor = p.answer_hello(mallory_to_monitor.public_bytes, IDENTITY, MSG_ID, NOW_MS)
    mallory_as_monitor = p.answer_hello(p.parse_hello(hello)[1], IDENTITY, MSG_ID, NOW_MS)
    at_agent = p.open_welcome(mallory_as_monitor.datagram, agent, MSG_ID)
    assert at_agent.keys.key == mallory_as_monitor.keys.key        # Mallory holds the agent's key...
    assert at_agent.keys.key != at_monitor.keys.key                 # ...and another one with the monitor
    assert at_agent.fingerprint != at_monitor.fingerprint
    assert not p.same_fingerprint(at_agent.fingerprint, at_monitor.fingerprint)


def test_an_altered_identity_changes_key_and_fingerprint():
    agent = kex.KeyAgreement()
    monitor = kex.KeyAgreement(private=kex.KeyAgreement()._private)
    one = p.answer_hello(agent.public_bytes, "192.0.2.20", MSG_ID, NOW_MS, agreement=monitor)
    two = p.answer_hello(agent.public_bytes, "192.0.2.21", MSG_ID, NOW_MS, agreement=monitor)
    assert one.keys.key != two.keys.key and one.fingerprint != two.fingerprint
