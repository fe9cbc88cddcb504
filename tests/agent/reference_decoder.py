"""An MDP/2 decoder written from docs/protocol.md alone, to check tests/vectors/ independently.

It imports nothing of mdp_agent: only the AES-GCM of `cryptography`, hmac, hashlib, zlib, struct and
json, what another implementation would have. It follows the receive order of docs/protocol.md and
raises Refused(code) with the same error codes.
"""

import hashlib
import hmac
import json
import struct
import zlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HEADER = struct.Struct("!2sBBBBHH8sQ")   # magic, version, kind, flags, reserved, index, count, msg_id, ts
HEADER_SIZE, TAG_SIZE = 26, 16
KINDS = {"to-agent": (1, 5, 6), "to-controller": (2, 3, 4, 5, 7)}
HELLO = 4


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
        if kind == HELLO:   # clear body, authenticated as associated data
            AESGCM(key).decrypt(nonce(index), datagram[-TAG_SIZE:], datagram[:-TAG_SIZE])
            body = datagram[HEADER_SIZE:-TAG_SIZE]
        else:
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
    if kind == HELLO:
        return head + body + AESGCM(key).encrypt(nonce(index), b"", head + body)
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
