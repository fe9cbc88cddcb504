"""The test vectors in tests/vectors/ against protocol.py, and against plain hmac/zlib/json.

Positive vectors: encode_message must reproduce every datagram byte for byte, and the datagrams must
open, reassemble and decode back to payload_text. Negative vectors: open_datagram refuses each with
the recorded error code. The files must also be exactly what tests/vectors/generate.py writes.
"""

import binascii
import glob
import hashlib
import hmac
import importlib.util
import json
import os
import struct
import zlib

import pytest

from mdp_agent import protocol as p

VECTOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vectors")
DIRECTIONS = {"to-agent": p.TO_AGENT, "to-controller": p.TO_CONTROLLER}


def _load(pattern):
    out = []
    for path in sorted(glob.glob(os.path.join(VECTOR_DIR, pattern))):
        with open(path, encoding="utf-8") as handle:
            out.append(pytest.param(json.load(handle), id=os.path.basename(path)[:-5]))
    return out


POSITIVE = _load("[0-9]*.json")
NEGATIVE = _load("bad-*.json")


def _unhex(text):
    return binascii.unhexlify(text.encode("ascii"))


def test_vector_set_covers_every_kind_and_both_flags():
    vectors = [param.values[0] for param in POSITIVE]
    assert {v["kind"] for v in vectors} == {p.REQUEST, p.REPLY, p.REPORT, p.HELLO, p.RESEND, p.ACK}
    assert any(len(v["datagrams"]) >= 3 for v in vectors)
    assert {bool(bytearray(_unhex(v["datagrams"][0]))[4] & p.FLAG_ZLIB) for v in vectors} == {True, False}
    assert {v["expected_error"] for v in (param.values[0] for param in NEGATIVE)} >= {
        "bad_signature", "truncated", "bad_magic", "bad_kind", "bad_header", "unsupported_version"}


@pytest.mark.parametrize("vector", POSITIVE)
def test_encode_reproduces_vector(vector):
    keys = p.KeyPair(_unhex(vector["key"]))
    direction = DIRECTIONS[vector["direction"]]
    assert binascii.hexlify(p.direction_key(keys.key, direction)).decode() == vector["direction_key"]
    datagrams = p.encode_message(vector["kind"], vector["payload_text"].encode("utf-8"),
                                 keys.for_direction(direction), _unhex(vector["msg_id"]), vector["timestamp_ms"],
                                 vector["max_datagram"], vector["compress"])
    assert [binascii.hexlify(d).decode() for d in datagrams] == vector["datagrams"]


@pytest.mark.parametrize("vector", POSITIVE)
def test_vector_decodes_to_its_payload(vector):
    keys = p.KeyPair(_unhex(vector["key"]))
    direction = DIRECTIONS[vector["direction"]]
    reassembler = p.Reassembler()
    datagrams = [_unhex(d) for d in vector["datagrams"]]
    complete = None
    for datagram in reversed(datagrams):   # arrival order must not matter
        assert len(datagram) <= vector["max_datagram"]
        packet = p.open_datagram(datagram, keys, direction)
        assert (packet.kind, packet.msg_id, packet.timestamp_ms) == (
            vector["kind"], _unhex(vector["msg_id"]), vector["timestamp_ms"])
        complete = reassembler.add("peer", packet, 0.0)
    assert complete is not None
    _, flags, _, body = complete
    assert p.decode_body(flags, body) == json.loads(vector["payload_text"])


@pytest.mark.parametrize("vector", POSITIVE)
def test_vector_checks_out_with_plain_hmac_and_zlib(vector):
    """What another implementation would do, with no help from protocol.py."""
    dkey = hmac.new(_unhex(vector["key"]), b"MDP/1 " + vector["direction"].encode(), hashlib.sha256).digest()
    assert binascii.hexlify(dkey).decode() == vector["direction_key"]
    message = b""
    for index, text in enumerate(vector["datagrams"]):
        datagram = _unhex(text)
        head, body, mac = datagram[:26], datagram[26:-32], datagram[-32:]
        assert hmac.compare_digest(hmac.new(dkey, head + body, hashlib.sha256).digest(), mac)
        magic, version, kind, flags, reserved, chunk, count, msg_id, ts = struct.unpack("!2sBBBBHH8sQ", head)
        assert (magic, version, kind, reserved, chunk, count, ts) == (
            b"MD", 1, vector["kind"], 0, index, len(vector["datagrams"]), vector["timestamp_ms"])
        assert binascii.hexlify(msg_id).decode() == vector["msg_id"]
        message += body
    if flags & 1:
        message = zlib.decompress(message)
    assert message.decode("utf-8") == vector["payload_text"]


@pytest.mark.parametrize("vector", NEGATIVE)
def test_negative_vector_is_refused_with_its_code(vector):
    keys = p.KeyPair(_unhex(vector["key"]))
    for text in vector["datagrams"]:
        with pytest.raises(p.ProtocolError) as info:
            p.open_datagram(_unhex(text), keys, DIRECTIONS[vector["direction"]])
        assert info.value.code == vector["expected_error"]


def test_files_are_what_generate_py_writes():
    spec = importlib.util.spec_from_file_location("mdp_vector_generate", os.path.join(VECTOR_DIR, "generate.py"))
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    wanted = generate.vectors()
    on_disk = {}
    for path in glob.glob(os.path.join(VECTOR_DIR, "*.json")):
        with open(path, encoding="utf-8") as handle:
            on_disk[os.path.basename(path)] = handle.read()
    assert sorted(on_disk) == sorted(wanted), "run tests/vectors/generate.py"
    for name in wanted:
        assert on_disk[name] == wanted[name], f"{name} is stale: run tests/vectors/generate.py"
