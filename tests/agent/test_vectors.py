"""The test vectors in tests/vectors/ against protocol.py, and against a reference decoder.

Positive vectors: encode_message must reproduce every datagram byte for byte, and the datagrams must
open, reassemble and decode back to payload_text. Negative vectors: open_datagram refuses each with
the recorded error code. The same holds for reference_decoder.py, written from docs/protocol.md
without importing protocol.py, which also checks the worked example in docs/protocol.md. The files
must also be exactly what tests/vectors/generate.py writes.
"""

import ast
import binascii
import glob
import importlib.util
import json
import os
import re

import pytest

from mdp_agent import protocol as p

pytest.importorskip("cryptography")   # the reference decoder's AES-GCM (installed in both test venvs)

HERE = os.path.dirname(os.path.abspath(__file__))
VECTOR_DIR = os.path.join(HERE, "..", "vectors")
DIRECTIONS = {"to-agent": p.TO_AGENT, "to-controller": p.TO_CONTROLLER}


def _reference():
    spec = importlib.util.spec_from_file_location("mdp_reference_decoder", os.path.join(HERE, "reference_decoder.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _reference()


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
    assert {v["kind"] for v in vectors} == {p.REQUEST, p.REPLY, p.REPORT, p.RESEND, p.ACK, p.CHALLENGE}   # sealed
    assert any(len(v["datagrams"]) >= 3 for v in vectors)
    assert {bool(bytearray(_unhex(v["datagrams"][0]))[4] & p.FLAG_ZLIB) for v in vectors} == {True, False}
    assert {v["expected_error"] for v in (param.values[0] for param in NEGATIVE)} >= {
        "bad_signature", "truncated", "bad_magic", "bad_kind", "bad_header", "unsupported_version"}


@pytest.mark.parametrize("vector", POSITIVE)
def test_encode_reproduces_vector(vector):
    keys = p.KeyPair(_unhex(vector["key"]))
    direction = DIRECTIONS[vector["direction"]]
    dkey = keys.for_direction(direction)
    assert binascii.hexlify(dkey.key).decode() == vector["direction_key"]
    message_key = dkey.message_key(vector["kind"], _unhex(vector["msg_id"]), vector["timestamp_ms"])
    assert binascii.hexlify(message_key).decode() == vector["message_key"]
    datagrams = p.encode_message(vector["kind"], vector["payload_text"].encode("utf-8"), dkey,
                                 _unhex(vector["msg_id"]), vector["timestamp_ms"], vector["max_datagram"],
                                 vector["compress"])
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


@pytest.mark.parametrize("vector", NEGATIVE)
def test_negative_vector_is_refused_with_its_code(vector):
    keys = p.KeyPair(_unhex(vector["key"]))
    for text in vector["datagrams"]:
        with pytest.raises(p.ProtocolError) as info:
            p.open_datagram(_unhex(text), keys, DIRECTIONS[vector["direction"]])
        assert info.value.code == vector["expected_error"]


# --- The reference decoder ------------------------------------------------------------------------

def test_the_reference_decoder_does_not_use_protocol_py():
    with open(os.path.join(HERE, "reference_decoder.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"base64", "cryptography", "hashlib", "hmac", "json", "struct", "zlib"}


@pytest.mark.parametrize("vector", POSITIVE)
def test_reference_decoder_opens_and_reseals_every_positive_vector(vector):
    key = _unhex(vector["key"])
    assert binascii.hexlify(ref.direction_key(key, vector["direction"])).decode() == vector["direction_key"]
    datagrams = [_unhex(d) for d in vector["datagrams"]]
    for index, datagram in enumerate(datagrams):
        fields, body = ref.open_datagram(datagram, key, vector["direction"])
        magic, version, kind, flags, reserved, chunk, count, msg_id, ts = fields
        assert (magic, version, kind, reserved, chunk, count, ts) == (
            b"MD", 2, vector["kind"], 0, index, len(datagrams), vector["timestamp_ms"])
        assert binascii.hexlify(msg_id).decode() == vector["msg_id"]
        assert ref.seal_datagram(key, vector["direction"], fields, body) == datagram
        assert body not in datagram or len(body) < 4   # nothing of the body is in clear
    assert ref.decode_message(list(reversed(datagrams)), key, vector["direction"]) == \
        json.loads(vector["payload_text"])


@pytest.mark.parametrize("vector", NEGATIVE)
def test_reference_decoder_refuses_every_negative_vector_with_its_code(vector):
    for text in vector["datagrams"]:
        with pytest.raises(ref.Refused) as info:
            ref.open_datagram(_unhex(text), _unhex(vector["key"]), vector["direction"])
        assert info.value.code == vector["expected_error"]


ENROLMENT = _load("enrol-*.json")


@pytest.mark.parametrize("vector", ENROLMENT)
def test_protocol_reproduces_the_enrolment_vector(vector):
    from mdp_agent import kex
    agent = kex.KeyAgreement(int(vector["agent_private"], 16))
    monitor = kex.KeyAgreement(int(vector["monitor_private"], 16))
    msg_id = _unhex(vector["msg_id"])
    assert p.encode_hello(agent.public_bytes, msg_id, vector["hello_timestamp_ms"]) == _unhex(vector["hello"])
    answer = p.answer_hello(agent.public_bytes, vector["identity"], msg_id, vector["welcome_timestamp_ms"],
                            agreement=monitor)
    assert answer.datagram == _unhex(vector["welcome"])
    mine = p.open_welcome(_unhex(vector["welcome"]), agent, msg_id)
    assert binascii.hexlify(mine.keys.key).decode() == vector["machine_key"] == binascii.hexlify(answer.keys.key).decode()
    assert mine.fingerprint == answer.fingerprint == vector["fingerprint"] and mine.identity == vector["identity"]


@pytest.mark.parametrize("vector", ENROLMENT)
def test_reference_decoder_recomputes_the_enrolment_vector(vector):
    from mdp_agent import kex
    assert ref.FFDHE3072_P == kex.FFDHE3072_P   # its copy of RFC 7919's prime, checked from the formula in test_kex
    computed = ref.check_enrolment(vector)
    for name, value in computed.items():
        expected = vector[name] if name == "fingerprint" else _unhex(vector[name])
        assert value == expected, name


def _worked_example():
    """name -> bytes from the worked example's code block in docs/protocol.md."""
    with open(os.path.join(HERE, "..", "..", "docs", "protocol.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("\n## Worked example\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    values, name = {}, None
    for line in block.splitlines():
        match = re.match(r"^(\w+)?\s+([0-9a-f ]+?)\s*(?:\s\s\S.*)?$", line)
        if match:
            name = match.group(1) or name   # an unnamed line continues the one above
            values[name] = values.get(name, b"") + _unhex(match.group(2).replace(" ", ""))
    return section, values


def test_reference_decoder_checks_the_worked_example_in_protocol_md():
    section, values = _worked_example()
    key = values["machine_key"]
    assert ref.direction_key(key, "to-agent") == values["to_agent_key"]
    assert ref.direction_key(key, "to-controller") == values["to_controller_key"]
    datagram = values["datagram"]
    fields, body = ref.open_datagram(datagram, key, "to-agent")
    _, _, kind, _, _, _, _, msg_id, timestamp_ms = fields
    assert ref.message_key(values["to_agent_key"], kind, msg_id, timestamp_ms) == values["message_key"]
    assert body.decode("utf-8") in section   # the plaintext the example names
    assert p.open_datagram(datagram, p.KeyPair(key), p.TO_AGENT).body == body   # and protocol.py agrees


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
