"""Unit tests of the wire protocol (agent_src/mdp_agent/protocol.py), property-based where it fits.

Runs under Python 3.11 and 3.6 (PYTHONPATH=agent_src): 3.6 syntax, stdlib + pytest + hypothesis only.
Everything here is real: real HMACs, real zlib, real JSON; protocol.py does no I/O, so no mocks.
"""

import base64
import binascii
import os
import random
import re
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdp_agent import protocol as p

KEYS = p.KeyPair(bytes(bytearray(range(32))))
OTHER_KEYS = p.KeyPair(b"\xa5" * 32)
NOW_MS = 1767225600000
PEER = ("192.0.2.7", 40000)
SOME = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (direction, kind) for every kind a side may send.
SENDABLE = [(d, k) for d in (p.TO_AGENT, p.TO_CONTROLLER) for k in p.KINDS_BY_DIRECTION[d]]
OTHER_SIDE = {p.TO_AGENT: p.TO_CONTROLLER, p.TO_CONTROLLER: p.TO_AGENT}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


def receive(datagrams, direction, keys=KEYS, reassembler=None, now=0.0):
    """Open, reassemble and decode datagrams as a receiver would; returns (kind, obj) or None."""
    reassembler = reassembler or p.Reassembler()
    complete = None
    for datagram in datagrams:
        complete = reassembler.add(PEER, p.open_datagram(datagram, keys, direction), now)
    if complete is None:
        return None
    kind, flags, _, body = complete
    return kind, p.decode_body(flags, body)


def chunked(n_bytes=3000, max_datagram=p.MIN_DATAGRAM, seed=1):
    """(msg_id, datagrams) of a reply carrying incompressible text, so it needs several chunks."""
    text = base64.b64encode(random.Random(seed).getrandbits(8 * n_bytes).to_bytes(n_bytes, "big")).decode()
    return p.encode(p.REPLY, {"result": text}, KEYS, p.TO_CONTROLLER, b"chunked!", NOW_MS, max_datagram,
                    compress=False)


def packet(index, count, body=b"x", msg_id=b"m" * 8, kind=p.REPLY, flags=0, timestamp_ms=NOW_MS):
    return p.Packet(kind, flags, index, count, msg_id, timestamp_ms, body)


# --- Round trip -----------------------------------------------------------------------------------

@SOME
@given(obj=json_objects, side=st.sampled_from(SENDABLE), max_datagram=st.integers(p.MIN_DATAGRAM, 9000),
       compress=st.booleans(), timestamp_ms=st.integers(0, 2 ** 64 - 1))
def test_round_trip(obj, side, max_datagram, compress, timestamp_ms):
    direction, kind = side
    msg_id, datagrams = p.encode(kind, obj, KEYS, direction, timestamp_ms=timestamp_ms,
                                 max_datagram=max_datagram, compress=compress)
    assert len(msg_id) == 8
    assert all(len(d) <= max_datagram for d in datagrams)
    assert receive(datagrams, direction) == (kind, obj)
    first = p.open_datagram(datagrams[0], KEYS, direction)
    assert (first.msg_id, first.timestamp_ms, first.count) == (msg_id, timestamp_ms, len(datagrams))


@settings(max_examples=20, deadline=None)
@given(obj=json_objects, max_datagram=st.integers(p.MIN_DATAGRAM, 600))
def test_round_trip_of_big_compressible_and_chunked_messages(obj, max_datagram):
    obj = {"repeat": [obj] * 4, "pad": "abc" * 300}
    for compress in (True, False):
        _, datagrams = p.encode(p.REPLY, obj, KEYS, p.TO_CONTROLLER, max_datagram=max_datagram, compress=compress)
        flags = p.open_datagram(datagrams[0], KEYS, p.TO_CONTROLLER).flags
        assert flags == (p.FLAG_ZLIB if compress else 0)
        assert len(datagrams) > 1 or compress
        assert all(len(d) <= max_datagram for d in datagrams)
        assert receive(datagrams, p.TO_CONTROLLER) == (p.REPLY, obj)


def test_compression_is_used_only_when_it_saves_a_datagram_or_a_real_share():
    def flags(payload, fit=None):
        return bytearray(p.encode_message(p.REPLY, payload, KEYS.to_controller, b"12345678", 0, fit=fit)[0])[4]

    room = p.DEFAULT_MAX_DATAGRAM - p.OVERHEAD
    noise = os.urandom(1500)
    assert flags(b"a" * (p.COMPRESS_MIN_BYTES - 1), fit=0) == 0  # too small to bother
    assert flags(b"a" * room) == 0                                # one datagram either way
    assert flags(b"a" * (room + 1)) == p.FLAG_ZLIB                # two datagrams become one
    assert flags(noise + b"a" * 200) == 0                         # two datagrams either way, ~12% saved
    assert flags(noise + b"a" * 1000) == p.FLAG_ZLIB              # three become two
    assert flags(noise[:1250] + b"a" * (2 * room - 1250)) == p.FLAG_ZLIB   # two either way, 45% saved
    assert flags(os.urandom(3000)) == 0                           # deflate would make it bigger
    # A reply over what the amplification rule lets us send is deflated if that helps at all.
    assert flags(b"a" * 400, fit=300) == p.FLAG_ZLIB
    assert flags(b"a" * 400, fit=400 + p.OVERHEAD) == 0
    assert flags(os.urandom(400), fit=300) == 0


def test_encode_refuses_a_kind_the_direction_may_not_send():
    for direction, kinds in p.KINDS_BY_DIRECTION.items():
        for kind in set(p.KIND_NAMES) - set(kinds):
            with pytest.raises(ValueError, match="may not be sent"):
                p.encode(kind, {}, KEYS, direction)


@pytest.mark.parametrize("max_datagram", [0, p.MIN_DATAGRAM - 1, p.MAX_DATAGRAM + 1])
def test_encode_refuses_datagram_sizes_outside_the_limits(max_datagram):
    with pytest.raises(ValueError, match="max_datagram must be between"):
        p.encode(p.REQUEST, {}, KEYS, p.TO_AGENT, max_datagram=max_datagram)


def test_encode_refuses_a_msg_id_that_is_not_8_bytes():
    with pytest.raises(ValueError, match="msg_id must be 8 bytes"):
        p.encode_message(p.REQUEST, b"{}", KEYS.to_agent, b"short", 0)


# --- Tampering, truncation, wrong keys and directions --------------------------------------------

@SOME
@given(data=st.data(), obj=json_objects, side=st.sampled_from(SENDABLE),
       max_datagram=st.sampled_from([p.MIN_DATAGRAM, 300, p.DEFAULT_MAX_DATAGRAM]))
def test_any_changed_byte_is_rejected(data, obj, side, max_datagram):
    direction, kind = side
    _, datagrams = p.encode(kind, obj, KEYS, direction, timestamp_ms=NOW_MS, max_datagram=max_datagram)
    datagram = bytearray(data.draw(st.sampled_from(datagrams)))
    position = data.draw(st.integers(0, len(datagram) - 1))
    datagram[position] = (datagram[position] + data.draw(st.integers(1, 255))) % 256
    with pytest.raises(p.ProtocolError) as info:
        p.open_datagram(bytes(datagram), KEYS, direction)
    assert info.value.code in ("bad_magic", "bad_signature")


def test_every_single_bit_flip_of_a_datagram_is_rejected():
    _, (datagram,) = p.encode(p.REQUEST, {"operations": ["system.ping"]}, KEYS, p.TO_AGENT, timestamp_ms=NOW_MS)
    for position in range(len(datagram)):
        for bit in range(8):
            changed = bytearray(datagram)
            changed[position] ^= 1 << bit
            with pytest.raises(p.ProtocolError):
                p.open_datagram(bytes(changed), KEYS, p.TO_AGENT)


def test_every_truncation_and_extension_is_rejected():
    _, datagrams = chunked(600)
    for datagram in datagrams:
        for length in range(len(datagram)):
            with pytest.raises(p.ProtocolError) as info:
                p.open_datagram(datagram[:length], KEYS, p.TO_CONTROLLER)
            assert info.value.code == ("truncated" if length < p.OVERHEAD else "bad_signature")
        with pytest.raises(p.ProtocolError, match="does not verify"):
            p.open_datagram(datagram + b"\x00", KEYS, p.TO_CONTROLLER)


@pytest.mark.parametrize("side", SENDABLE)
def test_a_wrong_key_is_rejected(side):
    direction, kind = side
    _, datagrams = p.encode(kind, {"text": "x" * 700}, KEYS, direction, max_datagram=p.MIN_DATAGRAM, compress=False)
    for datagram in datagrams:
        with pytest.raises(p.ProtocolError) as info:
            p.open_datagram(datagram, OTHER_KEYS, direction)
        assert info.value.code == "bad_signature"


@pytest.mark.parametrize("direction", [p.TO_AGENT, p.TO_CONTROLLER])
@pytest.mark.parametrize("kind", sorted(p.KIND_NAMES))
def test_a_message_signed_for_one_direction_never_verifies_for_the_other(direction, kind):
    """Whatever the kind byte says, including RESEND (valid both ways): the direction keys differ."""
    datagrams = p.encode_message(kind, b'{"missing":[0]}', KEYS.for_direction(direction), b"dirtest!", NOW_MS)
    assert p.direction_key(KEYS.key, p.TO_AGENT) != p.direction_key(KEYS.key, p.TO_CONTROLLER)
    with pytest.raises(p.ProtocolError) as info:
        p.open_datagram(datagrams[0], KEYS, OTHER_SIDE[direction])
    assert info.value.code == "bad_signature"


@pytest.mark.parametrize("direction", [p.TO_AGENT, p.TO_CONTROLLER])
def test_a_correctly_signed_kind_from_the_wrong_side_is_refused(direction):
    for kind in set(p.KIND_NAMES) - set(p.KINDS_BY_DIRECTION[direction]):
        datagram = p.encode_message(kind, b"{}", KEYS.for_direction(direction), b"kindtest", NOW_MS)[0]
        with pytest.raises(p.ProtocolError) as info:
            p.open_datagram(datagram, KEYS, direction)
        assert info.value.code == "bad_kind"


def _signed(header_fields, body=b"{}", dkey=KEYS.to_agent):
    head = p.HEADER.pack(*header_fields)
    return p.seal_datagram(dkey, head, body)


@pytest.mark.parametrize("fields, code", [
    ((p.MAGIC, 3, p.REQUEST, 0, 0, 0, 1, b"v" * 8, NOW_MS), "unsupported_version"),
    ((p.MAGIC, 0, p.REQUEST, 0, 0, 0, 1, b"v" * 8, NOW_MS), "unsupported_version"),
    ((p.MAGIC, 2, 99, 0, 0, 0, 1, b"v" * 8, NOW_MS), "bad_kind"),
    ((p.MAGIC, 2, p.REQUEST, 0, 0, 0, 0, b"v" * 8, NOW_MS), "bad_header"),
    ((p.MAGIC, 2, p.REQUEST, 0, 0, 5, 5, b"v" * 8, NOW_MS), "bad_header"),
    ((p.MAGIC, 2, p.REQUEST, 0x80, 0, 0, 1, b"v" * 8, NOW_MS), "bad_header"),
])
def test_signed_but_malformed_headers_are_refused_with_their_code(fields, code):
    with pytest.raises(p.ProtocolError) as info:
        p.open_datagram(_signed(fields), KEYS, p.TO_AGENT)
    assert info.value.code == code
    assert str(info.value)   # every refusal carries prose
    if code == "unsupported_version":
        assert info.value.details == {"supported": [p.PROTOCOL_VERSION]}
        assert p.peek_version(_signed(fields)) == fields[1]


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=300), direction=st.sampled_from([p.TO_AGENT, p.TO_CONTROLLER]))
def test_garbage_only_ever_raises_protocol_error(garbage, direction):
    for datagram in (garbage, p.MAGIC + garbage, p.MAGIC + b"\x01\x01" + garbage, p.MAGIC + b"\x02\x01" + garbage):
        with pytest.raises(p.ProtocolError):
            p.open_datagram(datagram, KEYS, direction)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200) | st.text(max_size=50).map(lambda t: t.encode("utf-8")),
       flags=st.sampled_from([0, p.FLAG_ZLIB]))
def test_decode_body_returns_an_object_or_raises_protocol_error(body, flags):
    for data in (body, zlib.compress(body)):
        try:
            assert isinstance(p.decode_body(flags, data), dict)
        except p.ProtocolError as exc:
            assert exc.code in ("bad_payload", "too_large")


@pytest.mark.parametrize("flags, body, fragment", [
    (0, b"\xff\xfe{}", "UTF-8"),
    (0, b"{not json", "JSON"),
    (0, b"[1, 2]", "JSON object"),
    (0, b"42", "JSON object"),
    (0, b"", "JSON"),
    (p.FLAG_ZLIB, b"not zlib at all", "zlib"),
    (p.FLAG_ZLIB, zlib.compress(b"[]"), "JSON object"),
])
def test_bad_payloads_are_refused_with_a_reason(flags, body, fragment):
    with pytest.raises(p.ProtocolError) as info:
        p.decode_body(flags, body)
    assert info.value.code == "bad_payload"
    assert fragment in info.value.message


# --- Chunking and reassembly ----------------------------------------------------------------------

@SOME
@given(data=st.data(), seed=st.integers(0, 1000))
def test_chunks_reassemble_under_shuffle_and_duplication(data, seed):
    _, datagrams = chunked(1500, seed=seed)
    count = len(datagrams)
    assert count >= 3
    order = data.draw(st.permutations(range(count)))
    # Duplicates of every chunk but the last new one (which completes the message, and is gone then).
    extra = data.draw(st.lists(st.sampled_from(order[:-1]), max_size=2 * count))
    arrivals = list(order[:-1]) + extra
    random.Random(seed).shuffle(arrivals)
    arrivals.append(order[-1])
    reassembler = p.Reassembler()
    results = [reassembler.add(PEER, p.open_datagram(datagrams[i], KEYS, p.TO_CONTROLLER), 0.0) for i in arrivals]
    assert all(r is None for r in results[:-1])
    kind, flags, timestamp_ms, body = results[-1]
    assert (kind, timestamp_ms) == (p.REPLY, NOW_MS)
    assert body == b"".join(p.open_datagram(d, KEYS, p.TO_CONTROLLER).body for d in datagrams)
    assert p.decode_body(flags, body) == receive(datagrams, p.TO_CONTROLLER)[1]
    assert reassembler.pending() == 0 and reassembler.total == 0


@SOME
@given(data=st.data(), seed=st.integers(0, 1000))
def test_lost_chunks_are_reported_after_the_gap_and_resent_ones_complete_the_message(data, seed):
    msg_id, datagrams = chunked(2000, seed=seed)
    count = len(datagrams)
    lost = data.draw(st.sets(st.integers(0, count - 1), min_size=1, max_size=count - 1))
    reassembler = p.Reassembler()
    for i in range(count):
        if i not in lost:
            assert reassembler.add(PEER, p.open_datagram(datagrams[i], KEYS, p.TO_CONTROLLER), 10.0) is None
    gap = p.RESEND_GAP_S + 0.001   # clear of float rounding at the edge
    assert reassembler.missing(10.0 + p.RESEND_GAP_S / 2) == []
    assert reassembler.missing(10.0 + gap) == [(PEER, msg_id, sorted(lost))]
    assert reassembler.missing(10.0 + gap) == []   # asked just now: not again at once
    asked = p.resend_payload(reassembler.missing(10.0 + 2 * gap)[0][2])
    _, request = p.encode(p.RESEND, asked, KEYS, p.TO_AGENT, msg_id, NOW_MS)
    packet_ = p.open_datagram(request[0], KEYS, p.TO_AGENT)
    resent = p.parse_resend(p.decode_body(packet_.flags, packet_.body), datagrams)
    assert resent == [datagrams[i] for i in sorted(lost)]
    results = [reassembler.add(PEER, p.open_datagram(d, KEYS, p.TO_CONTROLLER), 11.0) for d in resent]
    assert results[-1] is not None and reassembler.pending() == 0


def test_a_single_datagram_message_needs_no_reassembly_state():
    _, (datagram,) = p.encode(p.REQUEST, {"operations": []}, KEYS, p.TO_AGENT, timestamp_ms=NOW_MS)
    reassembler = p.Reassembler()
    assert reassembler.add(PEER, p.open_datagram(datagram, KEYS, p.TO_AGENT), 0.0)[0] == p.REQUEST
    assert reassembler.pending() == 0 and reassembler.missing(100.0) == []


def test_a_chunk_contradicting_its_siblings_is_ignored():
    reassembler = p.Reassembler()
    assert reassembler.add(PEER, packet(0, 2, b"a"), 0.0) is None
    for liar in (packet(1, 3, b"X"), packet(1, 2, b"X", kind=p.REPORT), packet(1, 2, b"X", flags=p.FLAG_ZLIB),
                 packet(1, 2, b"X", timestamp_ms=NOW_MS + 1)):
        assert reassembler.add(PEER, liar, 0.0) is None
    assert reassembler.add(PEER, packet(1, 2, b"b"), 0.0) == (p.REPLY, 0, NOW_MS, b"ab")


def test_same_msg_id_from_two_peers_is_two_messages():
    reassembler = p.Reassembler()
    reassembler.add(("192.0.2.1", 1), packet(0, 2, b"a"), 0.0)
    reassembler.add(("192.0.2.2", 1), packet(1, 2, b"B"), 0.0)
    assert reassembler.pending() == 2
    assert reassembler.add(("192.0.2.1", 1), packet(1, 2, b"b"), 0.0)[3] == b"ab"
    assert reassembler.add(("192.0.2.2", 1), packet(0, 2, b"A"), 0.0)[3] == b"AB"


def test_a_peer_flooding_partial_messages_holds_at_most_the_message_limit():
    reassembler = p.Reassembler()
    for n in range(100):
        reassembler.add(PEER, packet(0, 2, b"x" * 100, msg_id=b"%08d" % n), 0.0)
        assert reassembler.pending() <= p.REASSEMBLY_MESSAGES_PER_PEER
    assert reassembler.pending() == p.REASSEMBLY_MESSAGES_PER_PEER
    assert reassembler.dropped == 100 - p.REASSEMBLY_MESSAGES_PER_PEER
    assert reassembler.total == p.REASSEMBLY_MESSAGES_PER_PEER * (100 + p.CHUNK_COST)
    # The newest ones survive: the last message can still complete.
    assert reassembler.add(PEER, packet(1, 2, b"y", msg_id=b"%08d" % 99), 0.0)[3] == b"x" * 100 + b"y"


def test_a_peer_flooding_bytes_holds_at_most_the_per_peer_byte_limit():
    body = b"z" * (p.MAX_DATAGRAM - p.OVERHEAD)   # the largest chunk; one object, so the test stays small
    reassembler = p.Reassembler()
    for n in range(8 * 80):
        reassembler.add(PEER, packet(n % 80, p.MAX_CHUNKS, body, msg_id=b"%08d" % (n // 80)), 0.0)
        assert reassembler.total <= p.REASSEMBLY_BYTES_PER_PEER
    assert reassembler.dropped > 0


def test_all_peers_together_hold_at_most_the_total_byte_limit():
    body = b"z" * (p.MAX_DATAGRAM - p.OVERHEAD)
    reassembler = p.Reassembler()
    for peer in range(30):
        for n in range(60):   # 60 chunks of 64 KB: within one peer's limit, over the total at ~17 peers
            reassembler.add((f"192.0.2.{peer}", 1), packet(n, p.MAX_CHUNKS, body), 0.0)
            assert reassembler.total <= p.REASSEMBLY_BYTES_TOTAL
    assert reassembler.total > p.REASSEMBLY_BYTES_TOTAL - 2 * 60 * len(body)


@SOME
@given(data=st.data(), per_peer_kb=st.integers(1, 8), total_kb=st.integers(1, 16))
def test_reassembly_of_interleaved_messages_is_correct_and_its_accounting_returns_to_zero(data, per_peer_kb,
                                                                                         total_kb):
    """Chunks of several messages from several peers, interleaved, duplicated and partly lost, under
    small limits: whatever completes is exactly what was sent, limits hold at every step, and once
    everything has expired nothing is left over (no leaked bytes)."""
    messages = {}
    for peer in range(3):
        for n in range(3):
            body = bytes(bytearray(random.Random(peer * 10 + n).getrandbits(8) for _ in range(40 * (n + 1))))
            messages[(("192.0.2.%d" % peer, 1), b"msg-%04d" % n)] = [body[i:i + 40] for i in range(0, len(body), 40)]
    chunks = [(key, index) for key, parts in messages.items() for index in range(len(parts))]
    arrivals = data.draw(st.lists(st.sampled_from(chunks), max_size=60))
    reassembler = p.Reassembler(per_peer_bytes=per_peer_kb * 1024 // 4, total_bytes=total_kb * 1024 // 4)
    for now, ((peer, msg_id), index) in enumerate(arrivals):
        parts = messages[(peer, msg_id)]
        done = reassembler.add(peer, packet(index, len(parts), parts[index], msg_id=msg_id), float(now))
        if done is not None:
            assert done[3] == b"".join(parts)
        assert 0 <= reassembler.total <= reassembler.total_bytes
        assert reassembler.pending() <= 3 * p.REASSEMBLY_MESSAGES_PER_PEER
    reassembler.expire(len(arrivals) + p.REASSEMBLY_IDLE_S + 1)
    assert (reassembler.pending(), reassembler.total) == (0, 0)


def test_expire_drops_idle_partial_messages():
    reassembler = p.Reassembler()
    reassembler.add(PEER, packet(0, 2, msg_id=b"idle-one"), 0.0)
    reassembler.add(PEER, packet(0, 2, msg_id=b"busy-one"), 0.0)
    reassembler.add(PEER, packet(0, 2, msg_id=b"busy-one"), p.REASSEMBLY_IDLE_S)   # a duplicate: still alive
    assert reassembler.expire(p.REASSEMBLY_IDLE_S) == 0
    assert reassembler.expire(p.REASSEMBLY_IDLE_S + 0.5) == 1
    assert reassembler.pending() == 1
    assert reassembler.expire(2 * p.REASSEMBLY_IDLE_S + 0.5) == 1
    assert (reassembler.pending(), reassembler.total, reassembler.dropped) == (0, 0, 2)


def test_empty_chunks_cannot_grow_reassembly_memory_without_bound():
    """A key holder (e.g. a compromised machine reporting to the collector) sends signed chunks with
    empty bodies of a 65535-chunk message: each held chunk costs RAM, so it must count against the limit."""
    reassembler = p.Reassembler(per_peer_bytes=1024, total_bytes=1024)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(20000):
            reassembler.add(PEER, packet(n, p.MAX_CHUNKS, b""), 0.0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024


# --- Size limits ----------------------------------------------------------------------------------

def test_limits_are_consistent():
    # The smallest datagram still carries the largest message within the u16 chunk counter.
    assert -(-p.MAX_MESSAGE_BYTES // (p.MIN_DATAGRAM - p.OVERHEAD)) <= p.MAX_CHUNKS
    assert p.REASSEMBLY_BYTES_PER_PEER >= p.MAX_MESSAGE_BYTES
    assert p.REASSEMBLY_BYTES_TOTAL >= p.REASSEMBLY_BYTES_PER_PEER
    assert p.MAX_RESEND_INDICES >= -(-p.MAX_MESSAGE_BYTES // (p.DEFAULT_MAX_DATAGRAM - p.OVERHEAD))
    assert (p.HEADER_SIZE, p.TAG_SIZE, p.OVERHEAD) == (26, 16, 42)
    assert p.OUTBOX_TTL_S >= p.DEFAULT_REPLAY_WINDOW_S


DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "protocol.md")
NOT_LIMITS = {"PROTOCOL_VERSION", "REQUEST", "REPLY", "REPORT", "HELLO", "RESEND", "ACK", "CHALLENGE", "WELCOME",
              "FLAG_ZLIB",
              "HEADER_SIZE", "TAG_SIZE", "OVERHEAD", "KEY_SIZE",
              "LEGACY_VERSION", "LEGACY_MAC_SIZE"}
RETRANSMISSION = {"ACK_TIMEOUT_S", "ACK_RANDOM_FACTOR", "MAX_RETRANSMIT", "MAX_SENDS_PER_DATAGRAM"}


def _doc_value(text):
    """'4 MiB + 64 KiB', '1200 bytes', '0.2 s', '100,000' -> a number."""
    units = {"": 1, "bytes": 1, "KiB": 1024, "MiB": 1024 ** 2, "s": 1}
    total = 0.0
    for term in text.split("+"):
        number, _, unit = term.strip().partition(" ")
        total += float(number.replace(",", "")) * units[unit]
    return total


def test_every_limit_is_documented_with_its_value():
    """docs/protocol.md's limits table names every limit in protocol.py with the value it has."""
    with open(DOC, encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+?) \|", section, re.M))
    for name, value in sorted(rows.items()):
        assert getattr(p, name) == pytest.approx(_doc_value(value)), "docs/protocol.md: " + name
    numeric = {name for name, value in vars(p).items()
               if name.isupper() and isinstance(value, (int, float)) and not isinstance(value, bool)}
    assert numeric - NOT_LIMITS - RETRANSMISSION - set(rows) == set(), "limits missing from docs/protocol.md"
    assert all(name in text for name in RETRANSMISSION)


def test_a_one_mib_incompressible_result_gets_through_at_the_default_datagram_size():
    text = base64.b64encode(os.urandom(786432)).decode()   # 1 MiB of text deflate cannot squeeze much
    assert len(text) == 1024 * 1024
    reply = p.make_reply([{"name": "file.read", "result": text}])
    _, datagrams = p.encode(p.REPLY, reply, KEYS, p.TO_CONTROLLER, timestamp_ms=NOW_MS)
    assert len(datagrams) <= p.MAX_CHUNKS
    assert all(len(d) <= p.DEFAULT_MAX_DATAGRAM for d in datagrams)
    # Through default-sized reassembly, in reverse order, as a receiver would take it.
    reassembler = p.Reassembler()
    results = [reassembler.add(PEER, p.open_datagram(d, KEYS, p.TO_CONTROLLER), 0.0) for d in reversed(datagrams)]
    _, flags, _, body = results[-1]
    assert p.decode_body(flags, body) == reply


@pytest.mark.parametrize("max_datagram", [p.MIN_DATAGRAM, p.DEFAULT_MAX_DATAGRAM])
def test_the_largest_message_reassembles_within_the_default_limits(max_datagram):
    """Whatever a sender may send (MAX_MESSAGE_BYTES, incompressible), a receiver must be able to hold."""
    payload = os.urandom(p.MAX_MESSAGE_BYTES)
    room = max_datagram - p.OVERHEAD
    count = -(-len(payload) // room)
    reassembler = p.Reassembler()
    for index in range(count):   # the chunks encode_message makes, without paying for their MACs
        done = reassembler.add(PEER, packet(index, count, payload[index * room:(index + 1) * room]), 0.0)
    assert reassembler.dropped == 0
    assert done is not None and done[3] == payload


def test_an_uncompressed_message_over_the_limit_is_refused():
    payload = b"{" + b" " * (p.MAX_MESSAGE_BYTES - 2) + b"}"
    datagrams = p.encode_message(p.REPLY, payload, KEYS.to_controller, b"12345678", 0, p.MAX_DATAGRAM,
                                 compress=False)
    assert len(datagrams) == -(-p.MAX_MESSAGE_BYTES // (p.MAX_DATAGRAM - p.OVERHEAD))   # exactly the limit: fine
    with pytest.raises(p.ProtocolError) as info:
        p.encode_message(p.REPLY, payload + b" ", KEYS.to_controller, b"12345678", 0, compress=False)
    assert info.value.code == "too_large"
    assert str(p.MAX_MESSAGE_BYTES) in info.value.message


def test_an_incompressible_message_over_the_limit_is_refused():
    obj = {"result": base64.b64encode(os.urandom(4 * 1024 * 1024)).decode()}   # ~5.6 MB, deflates to ~4.2 MB
    with pytest.raises(p.ProtocolError) as info:
        p.encode(p.REPLY, obj, KEYS, p.TO_CONTROLLER)
    assert info.value.code == "too_large"


def test_a_compressible_message_over_the_limit_is_refused_by_the_sender():
    payload = b'{"a":"' + b"x" * p.MAX_MESSAGE_BYTES + b'"}'
    with pytest.raises(p.ProtocolError) as info:
        p.encode_message(p.REPLY, payload, KEYS.to_controller, b"12345678", 0)
    assert info.value.code == "too_large"


@pytest.mark.parametrize("inflated", [p.MAX_MESSAGE_BYTES + 1, 64 * 1024 * 1024])
def test_a_decompression_bomb_is_refused_without_inflating_it(inflated):
    bomb = zlib.compress(b"{" + b" " * (inflated - 2) + b"}", 9)
    assert len(bomb) < inflated // 500
    tracemalloc.start()
    try:
        with pytest.raises(p.ProtocolError) as info:
            p.decode_body(p.FLAG_ZLIB, bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == "too_large"
    assert peak < 3 * p.MAX_MESSAGE_BYTES   # the limit plus copies: the same for any bomb size


def test_a_message_inflating_to_exactly_the_limit_is_accepted():
    payload = b'{"a":"' + b"x" * (p.MAX_MESSAGE_BYTES - 8) + b'"}'
    assert len(payload) == p.MAX_MESSAGE_BYTES
    assert len(p.decode_body(p.FLAG_ZLIB, zlib.compress(payload))["a"]) == p.MAX_MESSAGE_BYTES - 8


# --- Replay window, duplicate cache, floor --------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(offset_ms=st.integers(-10 ** 9, 10 ** 9))
def test_replay_window_both_sides(offset_ms):
    guard = p.ReplayGuard()
    window_ms = int(p.DEFAULT_REPLAY_WINDOW_S * 1000)
    if abs(offset_ms) <= window_ms:
        assert guard.check(PEER, b"windowed", NOW_MS + offset_ms, NOW_MS) is False
        return
    with pytest.raises(p.ProtocolError) as info:
        guard.check(PEER, b"windowed", NOW_MS + offset_ms, NOW_MS)
    error = info.value
    assert error.code == "clock_skew"
    assert error.details["skew_seconds"] == round(offset_ms / 1000.0, 3)
    assert error.details["window_seconds"] == p.DEFAULT_REPLAY_WINDOW_S
    assert ("ahead of" if offset_ms > 0 else "behind") in error.message
    assert f"{abs(offset_ms / 1000.0):.1f} s" in error.message
    assert error.to_dict()["skew_seconds"] == error.details["skew_seconds"]


def test_skew_error_edges():
    assert p.skew_error(NOW_MS + 60000, NOW_MS, 60) is None
    assert p.skew_error(NOW_MS - 60000, NOW_MS, 60) is None
    ahead, behind = p.skew_error(NOW_MS + 60001, NOW_MS, 60), p.skew_error(NOW_MS - 90500, NOW_MS, 60)
    assert (ahead.details["skew_seconds"], behind.details["skew_seconds"]) == (60.001, -90.5)
    assert behind.message == "message timestamp is 90.5 s behind this machine's clock (window 60 s)"


def test_duplicates_are_detected_per_peer():
    guard = p.ReplayGuard()
    assert guard.check(PEER, b"dup-id-1", NOW_MS, NOW_MS) is False
    guard.remember(PEER, b"dup-id-1", NOW_MS, NOW_MS)
    assert guard.check(PEER, b"dup-id-1", NOW_MS, NOW_MS + 5000) is True
    assert guard.check(("192.0.2.8", 40000), b"dup-id-1", NOW_MS, NOW_MS) is False
    assert guard.check(PEER, b"dup-id-2", NOW_MS, NOW_MS) is False
    assert len(guard) == 1


def test_remembered_ids_age_out_with_the_window():
    guard = p.ReplayGuard(window_s=60)
    guard.remember(PEER, b"old-one!", NOW_MS, NOW_MS)
    later = NOW_MS + 60001
    guard.remember(PEER, b"new-one!", later, later)
    assert len(guard) == 1
    with pytest.raises(p.ProtocolError) as info:   # forgotten, but the window refuses it anyway
        guard.check(PEER, b"old-one!", NOW_MS, later)
    assert info.value.code == "clock_skew"


def test_a_full_cache_stays_bounded_and_raises_the_floor():
    guard = p.ReplayGuard(max_entries=10)
    for n in range(25):
        guard.remember(PEER, b"%08d" % n, NOW_MS + n, NOW_MS)
        assert len(guard) <= 10
    assert guard.floor_ms == NOW_MS + 14   # the newest forgotten id
    for forgotten in (0, 14):   # a replay of a forgotten id is refused, not accepted again
        with pytest.raises(p.ProtocolError) as info:
            guard.check(PEER, b"%08d" % forgotten, NOW_MS + forgotten, NOW_MS)
        assert info.value.code == "stale"
    assert guard.check(PEER, b"%08d" % 15, NOW_MS + 15, NOW_MS) is True   # still remembered
    with pytest.raises(p.ProtocolError):
        guard.check(PEER, b"brand-nu", NOW_MS + 14, NOW_MS)                # new, but at the floor
    assert guard.check(PEER, b"brand-nu", NOW_MS + 15, NOW_MS) is False


def test_floors_are_per_peer_so_a_busy_peer_never_makes_a_lagging_one_stale():
    """The collector hears thousands of machines: one machine's evictions must not refuse another
    machine whose clock runs a few seconds behind (but well inside the window)."""
    guard = p.ReplayGuard(max_entries=10)
    for n in range(25):
        guard.remember(("10.0.0.1", 1), b"%08d" % n, NOW_MS + 5000 + n, NOW_MS)
    assert guard.floor_ms == NOW_MS + 5014
    lagging = ("10.0.0.2", 1)
    assert guard.check(lagging, b"lagging!", NOW_MS - 6000, NOW_MS) is False
    with pytest.raises(p.ProtocolError) as info:
        guard.check(("10.0.0.1", 1), b"brand-nu", NOW_MS + 5014, NOW_MS)
    assert info.value.code == "stale"


@settings(max_examples=100, deadline=None)
@given(data=st.data(), max_entries=st.integers(1, 6))
def test_no_message_is_ever_accepted_twice(data, max_entries):
    """The guard's promise, whatever the order: a message (peer, id, timestamp) it accepted once is never
    accepted as new again. Senders here reuse few ids and replay accepted messages often."""
    guard = p.ReplayGuard(window_s=10, max_entries=max_entries)
    now = NOW_MS
    accepted = []
    for _ in range(data.draw(st.integers(1, 40))):
        now += data.draw(st.integers(0, 6000))
        if accepted and data.draw(st.booleans()):
            message = data.draw(st.sampled_from(accepted))
        else:
            message = (data.draw(st.integers(0, 1)), b"id-%05d" % data.draw(st.integers(0, 5)),
                       now + data.draw(st.integers(-12000, 12000)))
        peer, msg_id, timestamp_ms = message
        try:
            if guard.check(peer, msg_id, timestamp_ms, now):
                continue
        except p.ProtocolError as exc:
            assert exc.code in ("clock_skew", "stale")
            continue
        assert message not in accepted
        guard.remember(peer, msg_id, timestamp_ms, now)
        accepted.append(message)
        assert len(guard) <= max_entries


def test_the_floor_covers_ids_forgotten_out_of_timestamp_order():
    guard = p.ReplayGuard(max_entries=2)
    for n, ts in enumerate([NOW_MS + 50, NOW_MS + 10, NOW_MS + 30, NOW_MS + 20, NOW_MS + 40]):
        guard.remember(PEER, b"%08d" % n, ts, NOW_MS)
    for n, ts in enumerate([NOW_MS + 50, NOW_MS + 10, NOW_MS + 30]):   # the forgotten three
        with pytest.raises(p.ProtocolError):
            guard.check(PEER, b"%08d" % n, ts, NOW_MS)


def test_the_full_replay_cache_fits_its_memory_claim():
    """Measured on a fifth of the cache (full and overflowing, distinct peers as recvfrom makes them)."""
    scale = 5
    guard = p.ReplayGuard(max_entries=p.REPLAY_CACHE_ENTRIES // scale)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(guard.max_entries + 1000):
            peer = ("10.{}.{}.{}".format(n >> 16, (n >> 8) & 255, n & 255), 12345)
            guard.remember(peer, os.urandom(8), NOW_MS, NOW_MS)
        grown = (tracemalloc.get_traced_memory()[0] - before) * scale
    finally:
        tracemalloc.stop()
    assert len(guard) == guard.max_entries
    print("replay cache: {} entries would use {:.1f} MB".format(p.REPLAY_CACHE_ENTRIES, grown / 1e6))
    assert grown < 40 * 1024 * 1024


# --- Outbox ---------------------------------------------------------------------------------------

def test_outbox_is_bounded_in_bytes_oldest_first():
    entry = 300 + p.OUTBOX_ENTRY_COST   # two 150-byte datagrams plus the bookkeeping they cost
    outbox = p.Outbox(max_bytes=3 * entry + 1, ttl_s=60)
    for n in range(5):
        outbox.put(b"%08d" % n, [b"a" * 150, b"b" * 150], float(n))
        assert outbox.size <= 3 * entry + 1
    assert [outbox.get(b"%08d" % n) is not None for n in range(5)] == [False, False, True, True, True]
    assert outbox.size == 3 * entry and len(outbox) == 3


def test_outbox_replaces_an_entry_without_counting_it_twice():
    outbox = p.Outbox(max_bytes=2000, ttl_s=60)
    outbox.put(b"same-id!", [b"x" * 400], 0.0)
    outbox.put(b"same-id!", [b"y" * 300], 1.0)
    assert (outbox.size, len(outbox), outbox.get(b"same-id!")) == (
        300 + p.OUTBOX_ENTRY_COST, 1, [b"y" * 300])


def test_outbox_does_not_keep_a_message_larger_than_itself():
    outbox = p.Outbox(max_bytes=100, ttl_s=60)
    outbox.put(b"too-big!", [b"x" * 101], 0.0)
    assert (outbox.get(b"too-big!"), outbox.size) == (None, 0)


def test_outbox_entries_expire_after_the_ttl():
    outbox = p.Outbox()
    outbox.put(b"aged-one", [b"x"], 100.0)
    outbox.put(b"young-1!", [b"x"], 150.0)
    outbox.expire(100.0 + p.OUTBOX_TTL_S)
    assert outbox.get(b"aged-one") == [b"x"]
    outbox.expire(100.0 + p.OUTBOX_TTL_S + 0.01)
    assert outbox.get(b"aged-one") is None and outbox.get(b"young-1!") == [b"x"]
    assert outbox.size == 1 + p.OUTBOX_ENTRY_COST


# --- RESEND payloads ------------------------------------------------------------------------------

def test_resend_payload_is_sorted_unique_and_capped():
    assert p.resend_payload([3, 1, 3, 2]) == {"missing": [1, 2, 3]}
    missing = p.resend_payload(range(10 ** 5, -1, -1))["missing"]   # the lowest first; the rest next round
    assert 0 < len(missing) <= p.MAX_RESEND_INDICES and missing == list(range(len(missing)))


@pytest.mark.parametrize("lost", [range(1000), range(0, 8000, 2), range(p.MAX_RESEND_INDICES)])
def test_any_resend_fits_the_one_datagram_receivers_read(lost):
    """A big reply that lost many chunks must still be recoverable: what resend_payload gives is sent in
    one datagram (the rest can be asked for in the next round)."""
    _, datagrams = p.encode(p.RESEND, p.resend_payload(lost), KEYS, p.TO_AGENT, b"resend!!", NOW_MS)
    assert len(datagrams) == 1
    opened = p.open_datagram(datagrams[0], KEYS, p.TO_AGENT)
    assert p.parse_resend(p.decode_body(opened.flags, opened.body), list(range(10000)))


def test_parse_resend_returns_only_valid_indices():
    sent = [b"d0", b"d1", b"d2"]
    assert p.parse_resend({"missing": [2, 0, 7, -1, True, "1", 1.0, None]}, sent) == [b"d2", b"d0"]
    assert p.parse_resend({"missing": []}, sent) == []
    for bad in ({}, {"missing": 1}, {"missing": "0,1"}, {"missing": None}):
        with pytest.raises(p.ProtocolError) as info:
            p.parse_resend(bad, sent)
        assert info.value.code == "bad_payload" and "missing" in info.value.message


# --- Payload shapes and versions ------------------------------------------------------------------

def test_make_request_and_reply_shapes():
    assert p.make_request(["system.ping"]) == {"version": "2.0", "operations": ["system.ping"], "cluster_info": {}}
    ok = {"name": "system.ping", "result": "pong"}
    failed = {"name": "nope", "error": {"code": "unknown_operation", "message": "no operation named nope"}}
    assert p.make_reply([ok]) == {"status": True, "version": "2.0", "operations": [ok], "cluster_info": {}}
    assert p.make_reply([ok, failed])["status"] is False
    assert p.make_reply([])["status"] is True
    refusal = p.error_reply(p.ProtocolError("bad_request", "\"operations\" must be a list"))
    assert refusal == {"status": False, "version": "2.0", "operations": [], "cluster_info": {},
                       "error": {"code": "bad_request", "message": "\"operations\" must be a list"}}


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.99", "2", 2, 2.5, "2.0.0"])
def test_minor_versions_are_accepted(version):
    p.check_payload_version({"version": version})
    assert p.parse_request({"version": version, "operations": ["x"]}) == (["x"], {})


def test_a_missing_version_means_ours():
    p.check_payload_version({})
    assert p.parse_request({}) == ([], {})


@pytest.mark.parametrize("version", ["1.0", "1", 1, "0.9", "20.0", "", "abc", None, True, [2], "v2.0", " 2.0"])
def test_other_major_versions_are_refused(version):
    with pytest.raises(p.ProtocolError) as info:
        p.parse_request({"version": version, "operations": []})
    assert info.value.code == "unsupported_version"
    assert info.value.details == {"supported": ["2.0"]}
    assert repr(version) in info.value.message and "2.0" in info.value.message


@pytest.mark.parametrize("obj, fragment", [
    ({"operations": "system.ping"}, "\"operations\" must be a list"),
    ({"operations": {"name": "x"}}, "\"operations\" must be a list"),
    ({"operations": None}, "\"operations\" must be a list"),
    ({"operations": [], "cluster_info": [1]}, "\"cluster_info\" must be an object"),
    ({"operations": [], "cluster_info": "seed"}, "\"cluster_info\" must be an object"),
    ({"operations": [], "cluster_info": 3}, "\"cluster_info\" must be an object"),
])
def test_malformed_requests_are_refused_naming_the_field(obj, fragment):
    with pytest.raises(p.ProtocolError) as info:
        p.parse_request(dict(obj, version="2.0"))
    assert info.value.code == "bad_request"
    assert fragment in info.value.message


def test_a_request_passes_operations_and_cluster_info_through():
    cluster = {"cluster_machines": ["192.0.2.10"], "cluster_mode": [{"name": "sync_folders", "folder": "/srv"}]}
    ops = ["system.ping", {"name": "process.top", "args": {"n": 3}}]
    assert p.parse_request(p.make_request(ops, cluster)) == (ops, cluster)
    assert p.parse_request({"version": "2.0", "operations": [], "cluster_info": None}) == ([], {})
    assert p.parse_request({"version": "2.1", "future_field": 1}) == ([], {})   # minor: unknown fields ignored


@pytest.mark.parametrize("item, expected", [
    ("system.ping", ("system.ping", {})),
    ({"name": "process.top"}, ("process.top", {})),
    ({"name": "process.top", "args": None}, ("process.top", {})),
    ({"name": "process.top", "args": {"n": 3}}, ("process.top", {"n": 3})),
    ("x" * 128, ("x" * 128, {})),
])
def test_parse_operation_accepts_both_shapes(item, expected):
    assert p.parse_operation(item) == expected


@pytest.mark.parametrize("item, pattern", [
    (5, "a name or an object"),
    (None, "a name or an object"),
    (["system.ping"], "a name or an object"),
    ({"args": {}}, "a name or an object"),
    ({"name": 5}, "a name or an object"),
    ("", "1 to 128 characters"),
    ({"name": ""}, "1 to 128 characters"),
    ("x" * 129, "1 to 128 characters"),
    ({"name": "process.top", "args": [3]}, "args of 'process.top' must be an object"),
    ({"name": "process.top", "args": "n=3"}, "args of 'process.top' must be an object"),
    ({"name": "process.top", "arg": {}}, re.escape("unknown field(s) arg in operation 'process.top'")),
])
def test_parse_operation_refuses_malformed_items_clearly(item, pattern):
    with pytest.raises(ValueError, match=pattern):
        p.parse_operation(item)


@pytest.mark.parametrize("bad", [[], "", 0, False])
def test_falsy_non_objects_are_refused_too(bad):
    with pytest.raises(p.ProtocolError):
        p.parse_request({"version": "2.0", "operations": [], "cluster_info": bad})
    with pytest.raises(ValueError):
        p.parse_operation({"name": "process.top", "args": bad})


def test_dump_json_refuses_values_that_are_not_json():
    with pytest.raises(ValueError):
        p.dump_json({"load": float("nan")})


def test_dump_json_is_compact_utf8():
    assert p.dump_json({"a": [1, "\u00e5"]}) == b'{"a":[1,"\xc3\xa5"]}'


# --- Retransmission -------------------------------------------------------------------------------

class _Edge:
    def __init__(self, pick):
        self.pick = pick

    def uniform(self, low, high):
        return low if self.pick == "low" else high


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2 ** 32))
def test_retransmit_delays_follow_coap(seed):
    delays = p.retransmit_delays(random.Random(seed))
    assert len(delays) == p.MAX_RETRANSMIT + 1 == 5
    assert 2.0 <= delays[0] <= 3.0
    for i in range(1, len(delays)):
        assert delays[i] == pytest.approx(2 * delays[i - 1])


def test_retransmit_delay_bounds_are_the_documented_numbers():
    assert p.retransmit_delays(_Edge("low")) == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert p.retransmit_delays(_Edge("high")) == [3.0, 6.0, 12.0, 24.0, 48.0]
    assert sum(p.retransmit_delays(_Edge("high"))[:-1]) + 48.0 == 93.0   # the worst case, before any deadline


# --- Keys -----------------------------------------------------------------------------------------

def test_generate_key_text_format():
    texts = {p.generate_key_text() for _ in range(20)}
    assert len(texts) == 20
    for text in texts:
        assert re.match(r"\A[0-9a-f]{64}\n\Z", text)
        assert p.parse_key_text(text) == binascii.unhexlify(text.strip())
        assert p.KeyPair.from_text(text).key == p.parse_key_text(text)


def test_parse_key_text_accepts_bytes_and_surrounding_whitespace():
    key = bytes(bytearray(range(32)))
    text = binascii.hexlify(key).decode()
    for variant in (text, text + "\n", "  " + text + "\r\n", text.encode(), text.upper()):
        assert p.parse_key_text(variant) == key


@pytest.mark.parametrize("text, fragment", [
    ("", "found 0 characters"),
    ("ab" * 31 + "a", "found 63 characters"),
    ("ab" * 32 + "a", "found 65 characters"),
    ("ab" * 16 + "\n" + "ab" * 16, "found 65 characters"),
    ("zz" * 32, "not hexadecimal"),
    ("\u00e9" * 64, "not hexadecimal"),
    (b"\xff" * 64, "not hexadecimal"),
])
def test_parse_key_text_errors_say_what_is_wrong(text, fragment):
    with pytest.raises(ValueError) as info:
        p.parse_key_text(text)
    assert fragment in str(info.value)


def test_keypair_refuses_a_key_of_the_wrong_size():
    with pytest.raises(ValueError, match="32 bytes"):
        p.KeyPair(b"\x00" * 31)


def test_direction_keys_are_hkdf_of_the_label():
    import hashlib
    import hmac
    prk = hmac.new(b"MDP/2 key schedule", KEYS.key, hashlib.sha256).digest()
    for direction in (p.TO_AGENT, p.TO_CONTROLLER):
        expected = hmac.new(prk, b"MDP/2 " + direction + b"\x01", hashlib.sha256).digest()   # RFC 5869, one block
        assert KEYS.for_direction(direction).key == expected == p.direction_key(KEYS.key, direction)
        assert expected != p.legacy_direction_key(KEYS.key, direction)


def test_messages_reusing_a_msg_id_never_share_a_millisecond():
    """The nonce rule (docs/protocol.md): two messages of one kind and msg_id sealed in the same
    millisecond (two RESENDs with different lists, a reply then an error) get distinct timestamps,
    hence distinct message keys; a fresh msg_id keeps the clock's timestamp."""
    ep = p.Endpoint(p.TO_CONTROLLER, lambda ip, msg_id: KEYS)
    addr = ("127.0.0.9", 1)
    stamps = []
    for missing in ([1, 2], [3], [4, 5]):
        ep.send(addr, p.RESEND, {"missing": missing}, KEYS, NOW_MS, 0.0, b"same-id!", response=False, cache=False)
    for _, datagram in ep.datagrams_to_send():
        stamps.append(p.open_datagram(datagram, KEYS, p.TO_AGENT).timestamp_ms)
    assert stamps == [NOW_MS, NOW_MS + 1, NOW_MS + 2]
    ep.send(addr, p.ACK, {"ack": "report"}, KEYS, NOW_MS, 0.0, b"same-id!", response=False, cache=False)
    ep.send(addr, p.REQUEST, {}, KEYS, NOW_MS, 0.0, response=False, cache=False)   # fresh id: the clock's time
    [ack, request] = [p.open_datagram(d, KEYS, p.TO_AGENT) for _, d in ep.datagrams_to_send()]
    assert ack.timestamp_ms == NOW_MS and request.timestamp_ms == NOW_MS   # another kind: another key anyway
    ep.send(addr, p.RESEND, {"missing": [9]}, KEYS, NOW_MS + 50, 0.0, b"same-id!", response=False, cache=False)
    [(_, later)] = ep.datagrams_to_send()
    assert p.open_datagram(later, KEYS, p.TO_AGENT).timestamp_ms == NOW_MS + 50   # the clock moved on
    ep.tick(NOW_MS, 10 * p.OUTBOX_TTL_S)
    assert len(ep.stamps) == 0   # forgotten with the outbox's horizon


@settings(max_examples=150, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), kind=st.sampled_from([p.REQUEST, p.RESEND, p.ACK]),
       payload=st.binary(max_size=3000), msg_id=st.binary(min_size=8, max_size=8),
       timestamp_ms=st.integers(0, 2 ** 64 - 1), max_datagram=st.integers(p.MIN_DATAGRAM, 1500),
       compress=st.booleans())
def test_both_aes_gcm_implementations_make_identical_datagrams(key, kind, payload, msg_id, timestamp_ms,
                                                               max_datagram, compress):
    """The agent's libcrypto (ctypes) and the controller's `cryptography` seal byte for byte alike,
    and each opens what the other sealed."""
    from mdp_agent import aead
    try:
        controller_side = aead.cryptography()
    except aead.AeadUnavailable:
        pytest.skip("cryptography is not installed")
    agent_keys, controller_keys = p.KeyPair(key, aead.libcrypto()), p.KeyPair(key, controller_side)
    made = [p.encode_message(kind, payload, keys.to_agent, msg_id, timestamp_ms, max_datagram, compress)
            for keys in (agent_keys, controller_keys)]
    assert made[0] == made[1]
    for datagram in made[0]:
        assert p.open_datagram(datagram, controller_keys, p.TO_AGENT) == p.open_datagram(datagram, agent_keys,
                                                                                            p.TO_AGENT)
    # The WELCOME's key confirmation (the one GCM tag over clear bytes) too.
    from mdp_agent import kex
    agreement = kex.KeyAgreement(kex.KeyAgreement()._private)
    welcomes = [p.answer_hello(kex.encode_int(4), "192.0.2.20", msg_id, timestamp_ms, aead=side,
                               agreement=agreement).datagram for side in (aead.libcrypto(), controller_side)]
    assert welcomes[0] == welcomes[1]
