"""An MDP/2 decoder written from docs/protocol.md alone, to check tests/vectors/ independently.

It imports nothing of mdp_agent: only the AES-GCM of `cryptography`, hmac, hashlib, zlib, struct and
json, what another implementation would have. It follows the receive order of docs/protocol.md and
raises Refused(code) with the same error codes. check_enrolment() recomputes an enrolment vector
(ffdhe3072 with Python's pow, RFC 7919's prime copied here from the RFC).
"""

import base64
import hashlib
import hmac
import json
import struct
import zlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HEADER = struct.Struct("!2sBBBBHH8sQ")   # magic, version, kind, flags, reserved, index, count, msg_id, ts
HEADER_SIZE, TAG_SIZE = 26, 16
KINDS = {"to-agent": (1, 5, 6), "to-controller": (2, 3, 5, 7)}   # the sealed kinds
HELLO, WELCOME = 4, 8
# RFC 7919 Appendix A.2, ffdhe3072.
FFDHE3072_P = int(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE249B3EF9"
    "7D2FE363630C75D8F681B202AEC4617AD3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797ABC0AB182B324FB61D108A94BB2C8E3FB"
    "B96ADAB760D7F4681D4F42A3DE394DF4AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005C58EF1837D1683B2C6F34A26C1B2EFFA"
    "886B4238611FCFDCDE355B3B6519035BBC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF5CAE82AB9C9DF69EE86D2BC522363A0D"
    "ABC521979B0DEADA1DBF9A42D5C4484E0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF", 16)


class Refused(Exception):
    def __init__(self, code):
        Exception.__init__(self, code)
        self.code = code


def hkdf_sha256(salt, ikm, info, length=32):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def direction_key(machine_key, direction):
    return hkdf_sha256(b"MDP/2 key schedule", machine_key, b"MDP/2 " + direction.encode("ascii"))


def message_key(dkey, kind, msg_id, timestamp_ms):
    # HKDF-Expand only: the direction key is already a PRK.
    info = b"MDP/2 message" + bytes([kind]) + msg_id + struct.pack("!Q", timestamp_ms)
    return hmac.new(dkey, info + b"\x01", hashlib.sha256).digest()


def nonce(index):
    return b"\x00" * 10 + struct.pack("!H", index)


def open_datagram(datagram, machine_key, direction):
    """(header fields, plaintext body) of one datagram, or Refused(code)."""
    if len(datagram) < HEADER_SIZE + TAG_SIZE:
        raise Refused("truncated")
    if datagram[:2] != b"MD":
        raise Refused("bad_magic")
    fields = HEADER.unpack(datagram[:HEADER_SIZE])
    _, version, kind, flags, _, index, count, msg_id, timestamp_ms = fields
    if version == 1:   # MDP/1: only its HMAC is checked, to refuse it clearly
        dkey = hmac.new(machine_key, b"MDP/1 " + direction.encode("ascii"), hashlib.sha256).digest()
        mac = hmac.new(dkey, datagram[:-32], hashlib.sha256).digest()
        raise Refused("unsupported_version" if hmac.compare_digest(mac, datagram[-32:]) else "bad_signature")
    key = message_key(direction_key(machine_key, direction), kind, msg_id, timestamp_ms)
    try:
        body = AESGCM(key).decrypt(nonce(index), datagram[HEADER_SIZE:], datagram[:HEADER_SIZE])
    except InvalidTag:
        raise Refused("bad_signature")
    if version != 2:
        raise Refused("unsupported_version")
    if kind not in KINDS[direction]:
        raise Refused("bad_kind")
    if count == 0 or index >= count or flags & ~1:
        raise Refused("bad_header")
    return fields, body


def seal_datagram(machine_key, direction, fields, body):
    """The datagram for header fields and a chunk body: what a sender computes."""
    head = HEADER.pack(*fields)
    _, _, kind, _, _, index, _, msg_id, timestamp_ms = fields
    key = message_key(direction_key(machine_key, direction), kind, msg_id, timestamp_ms)
    return head + AESGCM(key).encrypt(nonce(index), body, head)


def decode_message(datagrams, machine_key, direction):
    """The JSON object of a whole message (its datagrams in any order)."""
    chunks, flags = {}, 0
    for datagram in datagrams:
        fields, body = open_datagram(datagram, machine_key, direction)
        flags = fields[3]
        chunks[fields[5]] = body
    data = b"".join(chunks[i] for i in sorted(chunks))
    if flags & 1:
        data = zlib.decompress(data)
    return json.loads(data.decode("utf-8"))


def _valid_public(value):
    """RFC 7919 s5.1: 1 < Y < p-1 and Y^q mod p == 1 (the order-q subgroup)."""
    p = FFDHE3072_P
    return 1 < value < p - 1 and pow(value, (p - 1) // 2, p) == 1


def _field(data):
    return struct.pack("!H", len(data)) + data


def check_enrolment(vector):
    """Recompute an enrolment vector from its private exponents; returns {name: bytes or text} computed."""
    p = FFDHE3072_P
    unhex = bytes.fromhex
    a, m = int(vector["agent_private"], 16), int(vector["monitor_private"], 16)
    agent_public, monitor_public = pow(2, a, p).to_bytes(384, "big"), pow(2, m, p).to_bytes(384, "big")
    assert _valid_public(int.from_bytes(agent_public, "big")) and _valid_public(int.from_bytes(monitor_public, "big"))
    secret = pow(int.from_bytes(monitor_public, "big"), a, p)
    assert secret == pow(int.from_bytes(agent_public, "big"), m, p)
    secret = secret.to_bytes(384, "big")
    identity = vector["identity"].encode("ascii")
    transcript = b"MDP/2 enrol" + _field(identity) + _field(agent_public) + _field(monitor_public)
    machine_key = hkdf_sha256(hashlib.sha256(transcript).digest(), secret, b"MDP/2 enrol machine key")
    digest = hashlib.sha256(b"MDP/2 enrol fingerprint" + transcript).digest()[:10]
    text = base64.b32encode(digest).decode("ascii")
    msg_id = unhex(vector["msg_id"])
    hello = HEADER.pack(b"MD", 2, HELLO, 0, 0, 0, 1, msg_id, vector["hello_timestamp_ms"]) + agent_public
    signed = (HEADER.pack(b"MD", 2, WELCOME, 0, 0, 0, 1, msg_id, vector["welcome_timestamp_ms"]) + monitor_public
              + bytes([len(identity)]) + identity)
    confirm_key = message_key(direction_key(machine_key, "to-agent"), WELCOME, msg_id, vector["welcome_timestamp_ms"])
    welcome = signed + AESGCM(confirm_key).encrypt(nonce(0), b"", signed)
    return {"agent_public": agent_public, "monitor_public": monitor_public, "shared_secret": secret,
            "transcript_sha256": hashlib.sha256(transcript).digest(), "machine_key": machine_key,
            "fingerprint": "-".join(text[i:i + 4] for i in range(0, 16, 4)), "hello": hello, "welcome": welcome}
