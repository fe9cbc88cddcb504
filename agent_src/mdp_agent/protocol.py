"""The MDP wire protocol, version 2: the one implementation, sans-I/O (bytes in, objects out).

The agent, the controller library, the collector and the Ansible plugin all use this module; nothing
here opens a socket or reads a clock it was not handed. docs/protocol.md explains every field and
limit, and tests/vectors/ holds exact bytes that another implementation can check itself against.

A datagram is::

    header (26 bytes, clear) | ciphertext (len(body)) | tag (16 bytes)

    header = "MD" | version u8 | kind u8 | flags u8 | reserved u8 (0)
             | chunk_index u16 | chunk_count u16 | msg_id 8 bytes | timestamp_ms u64   (network order)
    ciphertext | tag = AES-256-GCM(message_key, nonce = 10 zero bytes | chunk_index u16,
                                   plaintext = body, associated data = header)
    message_key = HKDF-Expand(direction_key, "MDP/2 message" | kind | msg_id | timestamp_ms, 32)

A message (a JSON object, optionally zlib-compressed) is cut into chunk_count bodies; every chunk is
sealed on its own, so a forged or damaged chunk is dropped before reassembly. The two exceptions
are the enrolment datagrams, HELLO and WELCOME, sent before there is a key: they carry ffdhe3072
public values (kex.py) and the address the monitor saw, never a key nor any JSON. docs/protocol.md
has the layouts, and the argument why no nonce repeats under one key.

Must run on Python 3.4, standard library only (the agent imports it).
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import struct
import zlib
from collections import OrderedDict, namedtuple
from itertools import islice

from . import aead as _aead
from . import kex
from .errors import MDPError
from .hkdf import HkdfExpander, hkdf_extract

PROTOCOL_VERSION = 2            # header byte; a new major version changes the layout after byte 3
VERSION_STRING = "2.0"          # the payload's "version" field: "major.minor"
# MDP/1 (HMAC-SHA256, clear bodies): no longer spoken, only recognised, so that a peer holding the
# key but speaking 1 gets a clear unsupported_version answer it can read (in MDP/1's own format).
LEGACY_VERSION = 1
LEGACY_MAC_SIZE = 32
MAGIC = b"MD"

# Message kinds. Which side may send which kind is fixed; a receiver drops any other.
REQUEST = 1   # controller -> agent: {"version", "operations", "cluster_info"}
REPLY = 2     # agent -> controller: {"status", "version", "operations", "cluster_info"}; msg_id = request's
REPORT = 3    # agent -> monitor: a reply-shaped object pushed every interval
HELLO = 4     # agent -> monitor: enrolment, the agent's ffdhe3072 public value (clear, no key, no JSON)
RESEND = 5    # either way: {"missing": [chunk indices]} for the message with this msg_id
ACK = 6       # monitor -> agent: {"ack": "report"} after a stored report
CHALLENGE = 7  # agent -> controller: {"token", "count"}: "your reply is ready; prove this address is yours"
WELCOME = 8   # monitor -> agent: the answer to a HELLO: its public value, the address it saw, a key confirmation
KIND_NAMES = {REQUEST: "request", REPLY: "reply", REPORT: "report", HELLO: "hello", RESEND: "resend", ACK: "ack",
              CHALLENGE: "challenge", WELCOME: "welcome"}

# Directions. Each direction seals with its own key derived from the machine key, so a datagram
# sealed for one direction never opens for the other, whatever its kind byte says. These are the
# sealed kinds; HELLO (to the monitor) and WELCOME (to the agent) are the enrolment's, never sealed.
TO_AGENT = b"to-agent"
TO_CONTROLLER = b"to-controller"
KINDS_BY_DIRECTION = {TO_AGENT: (REQUEST, RESEND, ACK), TO_CONTROLLER: (REPLY, REPORT, RESEND, CHALLENGE)}

FLAG_ZLIB = 0x01                # the message bytes (all chunks joined) are a zlib stream

HEADER = struct.Struct("!2sBBBBHH8sQ")
HEADER_SIZE = HEADER.size       # 26
TAG_SIZE = _aead.TAG_SIZE       # AES-GCM's full 16-byte tag, never truncated
OVERHEAD = HEADER_SIZE + TAG_SIZE   # 42
NONCE = struct.Struct("!10xH")  # 10 zero bytes | chunk_index: unique within a message, whose key is its own
MESSAGE_INFO = struct.Struct("!B8sQ")   # kind | msg_id | timestamp_ms, after the "MDP/2 message" label
KEY_SCHEDULE_SALT = b"MDP/2 key schedule"
MESSAGE_LABEL = b"MDP/2 message"
KEY_SIZE = 32                   # 256-bit machine key

# --- Limits. Each one bounds what a stranger (or a broken peer) can make us do. -----------------
# 1200 bytes: the largest UDP payload that survives every path without IP fragmentation (IPv6's
# minimum MTU 1280 minus 40 IPv6 and 8 UDP header bytes, rounded down as QUIC (RFC 9000 s14) and
# RFC 8085 s3.2 advise). Fragments are lost as a whole when any one is lost. Raise on a known LAN.
DEFAULT_MAX_DATAGRAM = 1200
MIN_DATAGRAM = 256              # below this the overhead eats the datagram
MAX_DATAGRAM = 65507            # the largest UDP/IPv4 payload
# 4 MiB: the largest message (before and after compression). Results of 1 MiB must get through; JSON
# escaping can double binary-ish text, so 4x leaves room. It also caps what one peer can pin.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_CHUNKS = 65535              # the u16 field; with 1200-byte datagrams 4 MiB needs ~3,700
# The most chunks a message of MAX_MESSAGE_BYTES can need at the smallest datagram: any larger
# chunk_count is a lie, refused before it costs anything.
MAX_USEFUL_CHUNKS = MAX_MESSAGE_BYTES // (MIN_DATAGRAM - OVERHEAD) + 1
# Compression only pays above a few hundred bytes (zlib's header and a small JSON object).
COMPRESS_MIN_BYTES = 256
# Deflating costs ~20 us per kB: a message that fits one datagram is sent as it is (unless it would
# exceed what the amplification rule lets us send, see encode_message), and a longer one keeps the
# zlib stream only when it saves a datagram or at least this share of the bytes.
COMPRESS_MIN_SAVING = 0.25
# Replay window: a request more than 60 s older or newer than the receiver's clock is refused (and
# the refusal says by how much). NTP keeps real fleets within milliseconds; 60 s tolerates a sloppy one.
DEFAULT_REPLAY_WINDOW_S = 60.0
# Seen message ids kept for duplicate detection. At 10,000 messages/s the window holds more than
# this; when full, the oldest id is forgotten and the window's lower edge moves up to its timestamp,
# so anything older is refused as stale rather than risking a replay: ~20 MB at most (measured).
REPLAY_CACHE_ENTRIES = 100000
# An agent's own caps, so that its memory stays bounded by a few MiB whatever the request rate
# (measured with every cap full: docs/benchmarks.md). 16,384 ids hold a whole window up to ~270
# requests/s; beyond that the floor rises and only ever refuses more (as stale), never accepts a replay.
# The agent's Stamps keep as many entries.
AGENT_REPLAY_CACHE_ENTRIES = 16384
# Reassembly: partial messages per peer, bytes per peer and overall, and how long a partial message
# may wait for its next chunk before it is dropped (bounded memory whatever a peer sends).
# Limits are per IP address, not per (address, port): one host cannot multiply them by using more ports.
REASSEMBLY_MESSAGES_PER_PEER = 8
REASSEMBLY_BYTES_TOTAL = 64 * 1024 * 1024
# An agent is asked by a few controllers at a time, and by nobody for more than one big request:
# two largest messages in flight is plenty, and keeps a key holder's flood from costing it 64 MiB.
AGENT_REASSEMBLY_BYTES_TOTAL = 16 * 1024 * 1024
REASSEMBLY_IDLE_S = 10.0
# What each held chunk costs beyond its body (dict slot, bytes object): counted so that a flood of
# empty chunks is bounded like a flood of full ones.
CHUNK_COST = 100
REASSEMBLY_BYTES_PER_PEER = MAX_MESSAGE_BYTES + CHUNK_COST * (MAX_MESSAGE_BYTES // (MIN_DATAGRAM - OVERHEAD) + 1)
# Sent messages kept to answer duplicates and RESENDs: bytes overall, and for how long.
OUTBOX_BYTES = 16 * 1024 * 1024
# The agent's reply cache: ~7,000 ping replies, seconds of them at thousands per second (a duplicate
# whose reply has aged out gets no answer; its sender's deadline runs out and it asks anew).
AGENT_OUTBOX_BYTES = 4 * 1024 * 1024
# What each kept message costs beyond its datagrams' bytes (dict entry, key and value tuples, list,
# bytes headers), counted so that OUTBOX_BYTES bounds real memory even for tiny replies.
OUTBOX_ENTRY_COST = 400
OUTBOX_TTL_S = 2 * DEFAULT_REPLAY_WINDOW_S
MAX_RESEND_INDICES = 4096       # indices one RESEND may ask for

# Amplification (RFC 9000 s8.1, QUIC's rule): until an address has proven it receives what we send
# it, we send it at most AMPLIFICATION_FACTOR times the bytes we received from it. A reply larger
# than that waits in the outbox behind a small CHALLENGE; a signed RESEND from the same address that
# echoes the challenge's token proves the address, for ADDRESS_VALIDATED_S.
AMPLIFICATION_FACTOR = 3
ADDRESS_VALIDATED_S = OUTBOX_TTL_S
# Addresses whose bytes we count. Only verified datagrams create an entry, so strangers cost none;
# past this many the least recently heard is forgotten, which only ever lowers its allowance.
ADDRESS_TABLE_ENTRIES = 16384
# Error replies (clock_skew, stale, restarted, ...) to one address: a burst, then one per second, so
# a replayed stale request cannot make us answer it forever at line rate.
ERROR_REPLY_BURST = 5
ERROR_REPLIES_PER_S = 1.0

# Retransmission, after CoAP (RFC 7252 s4.8): the first wait is ACK_TIMEOUT randomised up to
# ACK_RANDOM_FACTOR times, doubling after each try, at most MAX_RETRANSMIT retransmissions, all within
# the caller's overall deadline. Worst case 2 s * 1.5 * (1+2+4+8+16) = 93 s; callers cap it lower.
ACK_TIMEOUT_S = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
# Each datagram of a reply is sent at most this many times in all (the first send, duplicates of the
# request and RESENDs together): as often as a controller following the schedule above can ask.
MAX_SENDS_PER_DATAGRAM = MAX_RETRANSMIT + 1
# A receiver missing chunks asks for them after this much silence (well above a LAN burst's spread).
RESEND_GAP_S = 0.2


class ProtocolError(MDPError):
    """A datagram or message we must refuse. `code` is stable (for tests and logs); message is prose."""


Packet = namedtuple("Packet", "kind flags index count msg_id timestamp_ms body")


# --- Keys ---------------------------------------------------------------------------------------

def generate_key_text():
    """A new machine key as stored on disk: 64 lowercase hex characters and a newline."""
    return binascii.hexlify(os.urandom(KEY_SIZE)).decode("ascii") + "\n"


def parse_key_text(text):
    """The 32 key bytes from a key file's text; ValueError if it is not exactly one 64-hex line."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    line = text.strip()
    if len(line) != 2 * KEY_SIZE:
        raise ValueError("key must be %d hex characters, found %d characters" % (2 * KEY_SIZE, len(line)))
    try:
        return binascii.unhexlify(line.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, TypeError):
        raise ValueError("key is not hexadecimal")


# --- AES-256-GCM: which implementation this process uses ------------------------------------------

_AEAD = []   # the one implementation of this process, chosen by use_aead()


def use_aead(implementation):
    """Choose this process's AES-256-GCM, once, at start-up: the agent's __main__ passes
    aead.libcrypto(), the controller package aead.cryptography(). Every KeyPair made afterwards
    without an explicit one uses it."""
    _AEAD[:] = [implementation]


def default_aead():
    """The implementation use_aead() chose; if none was chosen, the agent's (host libcrypto).
    AeadUnavailable if it cannot be loaded: there is no clear-text fall-back."""
    if not _AEAD:
        _AEAD.append(_aead.libcrypto())
    return _AEAD[0]


def direction_key(key, direction, schedule=None):
    """The per-direction key: HKDF-Expand(HKDF-Extract("MDP/2 key schedule", machine key), "MDP/2 " + direction).

    `schedule`, an HkdfExpander of that Extract, lets KeyPair derive both directions from one Extract.
    """
    if schedule is None:
        schedule = HkdfExpander(hkdf_extract(KEY_SCHEDULE_SALT, key))
    return schedule.expand(b"MDP/2 " + direction, KEY_SIZE)


class DirectionKey(object):
    """One direction's key, its HKDF expander (keyed once) and the AES-GCM that seals with it."""

    __slots__ = ("key", "aead", "_expander")

    def __init__(self, key, aead):
        self.key = key
        self.aead = aead
        self._expander = HkdfExpander(key)

    def message_key(self, kind, msg_id, timestamp_ms):
        """The key of one message: no two messages share it unless they share kind, msg_id and ms."""
        return self._expander.expand(MESSAGE_LABEL + MESSAGE_INFO.pack(kind, msg_id, timestamp_ms))


class KeyPair(object):
    """A machine key with both direction keys derived once, and the AES-GCM to use them with."""

    __slots__ = ("key", "to_agent", "to_controller")

    def __init__(self, key, aead=None):
        if len(key) != KEY_SIZE:
            raise ValueError("machine key must be %d bytes" % KEY_SIZE)
        aead = aead or default_aead()
        self.key = key
        # One Extract for both directions: a controller builds a KeyPair per machine of a fan-out.
        schedule = HkdfExpander(hkdf_extract(KEY_SCHEDULE_SALT, key))
        self.to_agent = DirectionKey(direction_key(key, TO_AGENT, schedule), aead)
        self.to_controller = DirectionKey(direction_key(key, TO_CONTROLLER, schedule), aead)

    def for_direction(self, direction):
        return self.to_agent if direction == TO_AGENT else self.to_controller

    @classmethod
    def from_text(cls, text, aead=None):
        return cls(parse_key_text(text), aead)


def _seal(seal, message_key, kind, index, head, body):
    """One datagram from its header and chunk body: the only place anything is sealed."""
    return head + seal(message_key, NONCE.pack(index), body, head)


def seal_datagram(dkey, head, body):
    """A datagram with any header, even a wrong one (tests, the fuzzer): sealed as encode_message would."""
    kind, index, _, msg_id, timestamp_ms = _KEY_FIELDS.unpack_from(head, 3)
    return _seal(dkey.aead.seal, dkey.message_key(kind, msg_id, timestamp_ms), kind, index, head, body)


_KEY_FIELDS = struct.Struct("!B2xHH8sQ")   # kind, chunk_index, chunk_count, msg_id, timestamp_ms from byte 3


# --- MDP/1, recognised only to refuse it readably ------------------------------------------------

def legacy_direction_key(key, direction):
    """MDP/1's per-direction HMAC key: HMAC-SHA256(machine key, "MDP/1 " + direction)."""
    return hmac.new(key, b"MDP/1 " + direction, hashlib.sha256).digest()


def _legacy_mac(key, direction, data):
    return hmac.new(legacy_direction_key(key, direction), data, hashlib.sha256).digest()


def legacy_verifies(datagram, keys, direction):
    """Whether datagram is an MDP/1 datagram signed with this machine key for direction."""
    if len(datagram) < HEADER_SIZE + LEGACY_MAC_SIZE:
        return False
    signed, mac = datagram[:-LEGACY_MAC_SIZE], datagram[-LEGACY_MAC_SIZE:]
    return hmac.compare_digest(_legacy_mac(keys.key, direction, signed), mac)


def encode_legacy(kind, payload, keys, direction, msg_id, timestamp_ms):
    """One MDP/1 datagram (clear body, HMAC): only for the unsupported_version answer to an MDP/1 peer."""
    head = HEADER.pack(MAGIC, LEGACY_VERSION, kind, 0, 0, 0, 1, msg_id, timestamp_ms)
    return head + payload + _legacy_mac(keys.key, direction, head + payload)


# --- Messages <-> bytes -------------------------------------------------------------------------

# One encoder for every message: json.dumps with non-default options builds a new encoder per call
# (~10 us, as much as the rest of a ping). allow_nan=False: NaN and Infinity are not JSON (RFC 8259).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _refuse_constant(name):
    raise ValueError("%s is not JSON (RFC 8259)" % name)


# One decoder too; NaN and Infinity are refused on the way in as well, so no operation ever sees one.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def dump_json(obj):
    """Compact UTF-8 JSON, the form every message body takes before compression."""
    return _ENCODER.encode(obj).encode("utf-8")


def new_msg_id():
    return os.urandom(8)


def hexlify(data):
    """bytes -> lowercase hex text (bytes.hex() is Python 3.5+)."""
    return binascii.hexlify(data).decode("ascii")


def encode_message(kind, payload, dkey, msg_id, timestamp_ms, max_datagram=DEFAULT_MAX_DATAGRAM,
                   compress=True, fit=None):
    """Seal `payload` (bytes) as one message, cut into datagrams. Returns a list of bytes.

    `dkey` is a DirectionKey (KeyPair.for_direction); the message key is derived once per message.

    compress=True deflates with zlib when that pays (_worth_deflating): when the message needs more
    than one datagram, or when it is larger than `fit` (the bytes the caller may send: a reply's
    amplification allowance) and deflating might bring it under. Then chunks when it does not fit.
    """
    if not MIN_DATAGRAM <= max_datagram <= MAX_DATAGRAM:
        raise ValueError("max_datagram must be between %d and %d" % (MIN_DATAGRAM, MAX_DATAGRAM))
    if len(msg_id) != 8:
        raise ValueError("msg_id must be 8 bytes")
    if len(payload) > MAX_MESSAGE_BYTES:   # receivers refuse to inflate past this, so never send it
        raise ProtocolError("too_large", "message is %d bytes, the limit is %d" % (len(payload), MAX_MESSAGE_BYTES))
    flags = 0
    room = max_datagram - OVERHEAD
    size = len(payload)
    over_fit = fit is not None and size + OVERHEAD * ((size + room - 1) // room or 1) > fit
    if compress and size >= COMPRESS_MIN_BYTES and (size > room or over_fit):
        packed = zlib.compress(payload, 6)
        if _worth_deflating(size, len(packed), room, over_fit):
            payload, flags = packed, FLAG_ZLIB
    count = max(1, (len(payload) + room - 1) // room)
    datagrams = []
    message_key = dkey.message_key(kind, msg_id, timestamp_ms)
    seal = dkey.aead.seal
    for index in range(count):
        body = payload[index * room:(index + 1) * room]
        head = HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, flags, 0, index, count, msg_id, timestamp_ms)
        datagrams.append(_seal(seal, message_key, kind, index, head, body))
    return datagrams


def _worth_deflating(size, packed, room, over_fit):
    """Whether a zlib stream of `packed` bytes is worth sending in place of `size` bytes of JSON."""
    if packed >= size:
        return False
    if over_fit:   # any saving may spare the round trip of a CHALLENGE
        return True
    return (packed + room - 1) // room < (size + room - 1) // room or packed <= size * (1 - COMPRESS_MIN_SAVING)


def encode(kind, obj, keys, direction, msg_id=None, timestamp_ms=0, max_datagram=DEFAULT_MAX_DATAGRAM,
           compress=True):
    """Encode a JSON-able object as sealed datagrams. Returns (msg_id, [datagram, ...])."""
    if kind not in KINDS_BY_DIRECTION[direction]:
        raise ValueError("a %s may not be sent %s" % (KIND_NAMES.get(kind, kind), direction.decode()))
    msg_id = msg_id or new_msg_id()
    return msg_id, encode_message(kind, dump_json(obj), keys.for_direction(direction), msg_id, timestamp_ms,
                                  max_datagram, compress)


def peek_version(datagram):
    """The header's version byte, or None: lets a receiver answer 'unsupported version' clearly."""
    if len(datagram) >= 3 and datagram[:2] == MAGIC:
        return bytearray(datagram[2:3])[0]
    return None


MSG_ID = slice(10, 18)   # where msg_id sits in the header (after magic, version, kind, flags, reserved, chunks)


def peek_msg_id(datagram):
    """The header's msg_id, unverified: only for choosing which key to verify with, or what to answer."""
    return datagram[MSG_ID] if len(datagram) >= OVERHEAD else None


def open_datagram(datagram, keys, direction):
    """Open (authenticate and decrypt) one datagram and return its Packet. Raises ProtocolError;
    nothing but the header fields the message key needs is read before the tag is checked.

    The tag is checked before the version: an unknown version from a peer holding the key gets a
    clear answer, a stranger gets nothing. An MDP/1 datagram is checked with MDP/1's HMAC for the
    same reason (the error then has legacy=True: answer it in MDP/1's format, encode_legacy).
    """
    if len(datagram) < OVERHEAD:
        raise ProtocolError("truncated", "datagram of %d bytes is shorter than the %d-byte minimum"
                            % (len(datagram), OVERHEAD))
    if datagram[:2] != MAGIC:
        raise ProtocolError("bad_magic", "not an MDP datagram")
    _, version, kind, flags, _, index, count, msg_id, timestamp_ms = HEADER.unpack_from(datagram)
    if version == LEGACY_VERSION:
        if not legacy_verifies(datagram, keys, direction):
            raise ProtocolError("bad_signature", "signature does not verify with this machine's key")
        error = _version_error(version)
        error.legacy = True
        raise error
    dkey = keys.for_direction(direction)
    message_key = dkey.message_key(kind, msg_id, timestamp_ms)
    try:
        body = dkey.aead.open(message_key, NONCE.pack(index), datagram[HEADER_SIZE:], datagram[:HEADER_SIZE])
    except _aead.InvalidTag:
        raise ProtocolError("bad_signature", "AES-GCM tag does not verify with this machine's key")
    if version != PROTOCOL_VERSION:
        raise _version_error(version)
    if kind not in KINDS_BY_DIRECTION[direction]:
        raise ProtocolError("bad_kind", "message kind %d is not valid %s" % (kind, direction.decode()))
    if count == 0 or index >= count or flags & ~FLAG_ZLIB:
        raise ProtocolError("bad_header", "chunk %d of %d, flags %#x" % (index, count, flags))
    if count > 1 and (count > MAX_USEFUL_CHUNKS or (index < count - 1 and (
            len(body) < MIN_DATAGRAM - OVERHEAD or count > MAX_MESSAGE_BYTES // len(body) + 1))):
        # Every chunk but the last is full (at least the smallest datagram's room), so its size says
        # how many chunks a real message could need.
        raise ProtocolError("bad_header", "%d chunks of %d bytes exceed what a %d-byte message needs"
                            % (count, len(body), MAX_MESSAGE_BYTES))
    return Packet(kind, flags, index, count, msg_id, timestamp_ms, body)


def _version_error(version):
    return ProtocolError("unsupported_version", "protocol version %d is not supported; this side speaks %d"
                         % (version, PROTOCOL_VERSION), supported=[PROTOCOL_VERSION])


def decode_text(flags, data):
    """A complete message's bytes -> its JSON text (str). Decompression is bounded."""
    if flags & FLAG_ZLIB:
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(data, MAX_MESSAGE_BYTES)
        except zlib.error as exc:
            raise ProtocolError("bad_payload", "zlib: %s" % exc)
        if inflater.unconsumed_tail:
            raise ProtocolError("too_large", "message inflates beyond %d bytes" % MAX_MESSAGE_BYTES)
        if not inflater.eof or inflater.unused_data:
            raise ProtocolError("bad_payload", "zlib stream is incomplete or followed by extra bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("bad_payload", "payload is not UTF-8: %s" % exc)


def parse_text(text):
    """JSON text -> the message object (a dict)."""
    try:
        obj = _DECODER.decode(text)
    except ValueError as exc:
        raise ProtocolError("bad_payload", "payload is not JSON: %s" % exc)
    except RuntimeError:   # "[[[[...": deeper than the parser's stack (RecursionError on 3.5+)
        raise ProtocolError("bad_request", "payload nests deeper than this side parses")
    if not isinstance(obj, dict):
        raise ProtocolError("bad_payload", "payload must be a JSON object")
    return obj


def decode_body(flags, data):
    """A complete message's bytes -> the JSON object (a dict). Decompression is bounded."""
    return parse_text(decode_text(flags, data))


def check_payload_version(obj):
    """Refuse a payload whose "version" has another major number (a missing version means ours)."""
    version = obj.get("version", VERSION_STRING)
    if version == VERSION_STRING:   # nearly always
        return
    major = str(version).split(".", 1)[0]
    if major != str(PROTOCOL_VERSION):
        raise ProtocolError("unsupported_version", "payload version %r is not supported; this side speaks %s"
                            % (version, VERSION_STRING), supported=[VERSION_STRING])


def skew_error(timestamp_ms, now_ms, window_s):
    """None if timestamp_ms is within window_s of now_ms, else a ProtocolError saying by how much."""
    skew = (timestamp_ms - now_ms) / 1000.0
    if abs(skew) <= window_s:
        return None
    return ProtocolError("clock_skew", "message timestamp is %.1f s %s this machine's clock (window %g s)"
                         % (abs(skew), "ahead of" if skew > 0 else "behind", window_s),
                         skew_seconds=round(skew, 3), window_seconds=window_s)


# --- Request / reply shapes ---------------------------------------------------------------------

def make_request(operations, cluster_info=None):
    return {"version": VERSION_STRING, "operations": list(operations), "cluster_info": cluster_info or {}}


def make_reply(results, cluster_info=None, error=None):
    """A reply/report object; status is true only when every result succeeded and nothing failed."""
    reply = {"status": error is None and all("error" not in r for r in results), "version": VERSION_STRING,
             "operations": results, "cluster_info": cluster_info or {}}
    if error is not None:
        reply["error"] = error
    return reply


def error_reply(error):
    """A reply refusing the whole request; `error` is a ProtocolError."""
    return make_reply([], None, error.to_dict())


def parse_operation(item):
    """A requested operation ("name" or {"name": ..., "args": {...}}) -> (name, args). ValueError if malformed."""
    if isinstance(item, str):
        name, args = item, {}
    elif isinstance(item, dict) and isinstance(item.get("name"), str):
        name, args = item["name"], item.get("args", {})
        if args is None:
            args = {}
        unknown = set(item) - {"name", "args"}
        if unknown:
            raise ValueError("unknown field(s) %s in operation %r" % (", ".join(sorted(unknown)), name))
        if not isinstance(args, dict):
            raise ValueError("args of %r must be an object" % name)
    else:
        raise ValueError("an operation is a name or an object with a \"name\"")
    if not name or len(name) > 128:
        raise ValueError("operation name must be 1 to 128 characters")
    return name, args


def parse_request(obj):
    """Validate a request object -> (operations list, cluster_info dict). ProtocolError if malformed."""
    check_payload_version(obj)
    operations = obj.get("operations", [])
    cluster_info = obj.get("cluster_info")
    if cluster_info is None:
        cluster_info = {}
    if not isinstance(operations, list):
        raise ProtocolError("bad_request", "\"operations\" must be a list")
    if not isinstance(cluster_info, dict):
        raise ProtocolError("bad_request", "\"cluster_info\" must be an object")
    return operations, cluster_info


# --- Duplicate and replay detection -------------------------------------------------------------

class ReplayGuard(object):
    """Remembers (peer, msg_id) of recent messages, in bounded memory.

    check() answers whether a complete message was already accepted. Old ids fall out after the
    window; when the cache is full the oldest falls out early and its peer's floor rises to its
    timestamp, so nothing from that peer at or below the floor is accepted again (it could be a
    replay we no longer remember). Floors are per peer: a busy fleet evicting early never makes a
    quiet machine whose clock lags a few seconds look stale.
    """

    def __init__(self, window_s=DEFAULT_REPLAY_WINDOW_S, max_entries=REPLAY_CACHE_ENTRIES):
        self.window_ms = int(window_s * 1000)
        self.max_entries = max_entries
        self._floors = {}            # peer -> timestamp_ms at or below which it is refused
        self._seen = OrderedDict()   # (peer, msg_id) -> timestamp_ms, in arrival order

    @property
    def floor_ms(self):
        """The highest floor of any peer (the only floor when there is one peer, as in the agent)."""
        return max(self._floors.values()) if self._floors else 0

    def check(self, peer, msg_id, timestamp_ms, now_ms):
        """Raise ProtocolError for a stale or skewed timestamp; return True if this id was seen before."""
        error = skew_error(timestamp_ms, now_ms, self.window_ms / 1000.0)
        if error is not None:
            raise error
        if (peer, msg_id) in self._seen:
            return True
        if timestamp_ms <= self._floors.get(peer, 0):
            raise ProtocolError("stale", "message is older than the oldest one still remembered; resend it")
        return False

    def seen(self, peer, msg_id):
        """Whether (peer, msg_id) was accepted within the window (cheap: checked before reassembly)."""
        return (peer, msg_id) in self._seen

    def forget(self, peer, msg_id):
        """Un-accept a message its receiver could not keep (a full buffer), so its resend is taken."""
        self._seen.pop((peer, msg_id), None)

    def remember(self, peer, msg_id, timestamp_ms, now_ms):
        self._seen[(peer, msg_id)] = timestamp_ms
        horizon = now_ms - self.window_ms   # older ids can no longer pass the window check anyway
        while self._seen:
            key, ts = next(iter(self._seen.items()))
            if len(self._seen) > self.max_entries:
                if ts > self._floors.get(key[0], 0):
                    self._floors[key[0]] = ts
            elif ts >= horizon:
                break
            del self._seen[key]
        if len(self._floors) > self.max_entries:   # floors below the window protect nothing: drop them
            self._floors = dict((p, f) for p, f in self._floors.items() if f >= horizon)

    def __len__(self):
        return len(self._seen)


# --- Chunk reassembly ---------------------------------------------------------------------------

class _Partial(object):
    __slots__ = ("kind", "flags", "count", "timestamp_ms", "chunks", "size", "last_seen", "asked_at", "addr",
                 "room")

    def __init__(self, packet, now, addr):
        self.kind, self.flags, self.count = packet.kind, packet.flags, packet.count
        self.timestamp_ms = packet.timestamp_ms
        self.chunks = {}
        self.size = 0
        self.last_seen = now
        self.asked_at = now
        self.addr = addr      # where the chunks come from: RESENDs go there
        self.room = None      # body size of the full chunks (all but the last), once one arrived

    def missing(self, limit):
        """The lowest `limit` missing indices, found lazily: a partial of 3,700 chunks costs no list of 3,700."""
        chunks = self.chunks
        return list(islice((i for i in range(self.count) if i not in chunks), limit))


class Reassembler(object):
    """Joins verified chunks into messages, with bounded memory per peer and overall and an idle deadline.

    `peer` is what limits are counted by (the agent and the collector pass the IP address, so a host
    cannot multiply its share with more ports); `addr` is where RESENDs for it go (default: peer).
    add() returns (kind, flags, timestamp_ms, data) when a message completes, else None. missing()
    lists what to ask for again with a RESEND once a partial message has been quiet for RESEND_GAP_S.
    """

    def __init__(self, per_peer_bytes=REASSEMBLY_BYTES_PER_PEER, total_bytes=REASSEMBLY_BYTES_TOTAL,
                 idle_s=REASSEMBLY_IDLE_S):
        self.per_peer_bytes = per_peer_bytes
        self.total_bytes = total_bytes
        self.idle_s = idle_s
        self.total = 0
        self.dropped = 0
        self._peers = {}   # peer -> OrderedDict(msg_id -> _Partial)

    def add(self, peer, packet, now, addr=None):
        if packet.count == 1:
            return packet.kind, packet.flags, packet.timestamp_ms, packet.body
        partials = self._peers.setdefault(peer, OrderedDict())
        part = partials.get(packet.msg_id)
        if part is None:
            if len(partials) >= REASSEMBLY_MESSAGES_PER_PEER:
                self._drop(peer, next(iter(partials)))
            part = partials[packet.msg_id] = _Partial(packet, now, addr or peer)
        elif (part.count, part.kind, part.flags, part.timestamp_ms) != (
                packet.count, packet.kind, packet.flags, packet.timestamp_ms):
            return None  # a signed chunk that contradicts its siblings: ignore it, keep the others
        if packet.index < packet.count - 1:
            # All full chunks of one message have one size (the sender's room), and the last is no bigger.
            if part.room is None:
                part.room = len(packet.body)
            elif len(packet.body) != part.room:
                return None
        elif part.room is not None and len(packet.body) > part.room:
            return None
        part.last_seen = now
        if packet.index in part.chunks:
            return None
        cost = len(packet.body) + CHUNK_COST
        peer_size = sum(p.size for p in partials.values())
        if peer_size + cost > self.per_peer_bytes or self.total + cost > self.total_bytes:
            self._drop(peer, packet.msg_id)
            return None
        part.chunks[packet.index] = packet.body
        part.size += cost
        self.total += cost
        if len(part.chunks) < part.count:
            return None
        self._forget(peer, packet.msg_id)
        return part.kind, part.flags, part.timestamp_ms, b"".join(part.chunks[i] for i in range(part.count))

    def has(self, peer, msg_id):
        partials = self._peers.get(peer)
        return partials is not None and msg_id in partials

    def missing(self, now, gap_s=RESEND_GAP_S, limit=MAX_RESEND_INDICES):
        """[(addr, msg_id, [indices])] for partial messages quiet for gap_s and not asked for since.

        At most `limit` indices each (the lowest): what one RESEND can carry; the rest come next round.
        """
        out = []
        for partials in self._peers.values():
            for msg_id, part in partials.items():
                if now - max(part.last_seen, part.asked_at) >= gap_s:
                    part.asked_at = now
                    out.append((part.addr, msg_id, part.missing(limit)))
        return out

    def expire(self, now):
        """Drop partial messages idle longer than idle_s; returns how many were dropped."""
        stale = [(peer, msg_id) for peer, partials in self._peers.items()
                 for msg_id, part in partials.items() if now - part.last_seen > self.idle_s]
        for peer, msg_id in stale:
            self._drop(peer, msg_id)
        return len(stale)

    def pending(self):
        return sum(len(p) for p in self._peers.values())

    def _forget(self, peer, msg_id):
        partials = self._peers[peer]
        part = partials.pop(msg_id)
        self.total -= part.size
        if not partials:
            del self._peers[peer]

    def _drop(self, peer, msg_id):
        self._forget(peer, msg_id)
        self.dropped += 1


# --- Sent messages, for duplicates and RESEND ----------------------------------------------------

class _Sent(object):
    __slots__ = ("sent_at", "datagrams", "addr", "originated", "sends", "cost")

    def __init__(self, datagrams, now, addr, originated):
        self.sent_at, self.datagrams, self.addr, self.originated = now, datagrams, addr, originated
        self.sends = bytearray(len(datagrams))   # times each datagram went out, capped at MAX_SENDS_PER_DATAGRAM
        self.cost = OUTBOX_ENTRY_COST + total_bytes(datagrams)   # counted against OUTBOX_BYTES


class Outbox(object):
    """Recently sent messages by msg_id, bounded in bytes and age (oldest evicted first).

    Each entry remembers the address it was sent to: duplicates and RESENDs are answered there only,
    so a captured request replayed from a forged address is never reflected at that address.
    """

    def __init__(self, max_bytes=OUTBOX_BYTES, ttl_s=OUTBOX_TTL_S):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.size = 0
        self._items = OrderedDict()   # msg_id -> _Sent

    def put(self, msg_id, datagrams, now, addr=None, originated=False):
        """Keep datagrams sent (or about to be sent) to addr; originated: we chose addr, it did not ask."""
        if msg_id in self._items:
            self._remove(msg_id)
        entry = self._items[msg_id] = _Sent(datagrams, now, addr, originated)
        self.size += entry.cost
        self.expire(now)
        return entry if msg_id in self._items else None

    def entry(self, msg_id):
        return self._items.get(msg_id)

    def get(self, msg_id):
        item = self._items.get(msg_id)
        return item.datagrams if item else None

    def pop(self, msg_id):
        if msg_id in self._items:
            self._remove(msg_id)

    def expire(self, now):
        while self._items:
            msg_id, item = next(iter(self._items.items()))
            if self.size <= self.max_bytes and now - item.sent_at <= self.ttl_s:
                break
            self._remove(msg_id)

    def _remove(self, msg_id):
        self.size -= self._items.pop(msg_id).cost

    def __len__(self):
        return len(self._items)


def total_bytes(datagrams):
    """Bytes of a list of datagrams (most messages are one)."""
    return len(datagrams[0]) if len(datagrams) == 1 else sum(map(len, datagrams))


# --- Timestamps of reused msg_ids: the nonce rule ------------------------------------------------

class Stamps(object):
    """The timestamp_ms last used per (kind, msg_id) for messages whose msg_id is not fresh.

    A message's key is derived from (direction, kind, msg_id, timestamp_ms), and GCM must never seal
    two different plaintexts under one key and nonce. Replies, RESENDs, ACKs, CHALLENGEs, error
    replies and retransmitted reports reuse a msg_id, sometimes with other content (two RESENDs with
    different "missing" lists); stamp() makes two of them in one millisecond get different
    timestamps: max(now, last + 1). Kept as long as the outbox keeps messages, and bounded.
    """

    def __init__(self, max_entries=REPLAY_CACHE_ENTRIES, ttl_s=OUTBOX_TTL_S):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._last = OrderedDict()   # (kind, msg_id) -> (timestamp_ms, now), least recently used first

    def stamp(self, kind, msg_id, wall_ms, now):
        key = (kind, msg_id)
        last = self._last.pop(key, None)
        if last is not None and wall_ms <= last[0]:
            wall_ms = last[0] + 1
        self._last[key] = (wall_ms, now)
        if len(self._last) > self.max_entries:
            self._last.popitem(last=False)
        return wall_ms

    def expire(self, now):
        while self._last:
            key, (_, at) = next(iter(self._last.items()))
            if now - at <= self.ttl_s:
                break
            del self._last[key]

    def __len__(self):
        return len(self._last)


# --- Amplification: what we may send an address that has not proven it receives ------------------

class _Address(object):
    __slots__ = ("received", "sent", "validated_until", "token", "error_credit", "credit_at")

    def __init__(self, now):
        self.received = self.sent = 0
        self.validated_until = 0.0
        self.token = None
        self.error_credit = float(ERROR_REPLY_BURST)
        self.credit_at = now


class AddressBook(object):
    """Bytes received from and sent to each address, its proof of address, its error-reply credit.

    Only verified datagrams are counted (a stranger creates no entry); the table is an LRU of
    ADDRESS_TABLE_ENTRIES. Forgetting an address only ever lowers what we may send it.
    """

    def __init__(self, max_entries=ADDRESS_TABLE_ENTRIES):
        self.max_entries = max_entries
        self._entries = OrderedDict()

    def heard(self, addr, nbytes, now):
        entry = self._entries.get(addr)
        if entry is None:
            entry = self._entries[addr] = _Address(now)
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(addr)
        entry.received += nbytes
        return entry

    def get(self, addr):
        return self._entries.get(addr)

    def allowance(self, addr, now):
        """Bytes we may still send addr now: None when it has proven itself (no limit)."""
        entry = self._entries.get(addr)
        if entry is None:
            return 0
        if entry.validated_until > now:
            return None
        return max(0, AMPLIFICATION_FACTOR * entry.received - entry.sent)

    def spent(self, addr, nbytes):
        entry = self._entries.get(addr)
        if entry is not None:
            entry.sent += nbytes

    def token_for(self, addr):
        entry = self._entries[addr]
        if entry.token is None:
            entry.token = binascii.hexlify(os.urandom(16)).decode("ascii")
        return entry.token

    def prove(self, addr, token, now):
        """True (and the address validated) when token is the one we gave addr."""
        entry = self._entries.get(addr)
        if entry is None or entry.token is None or not isinstance(token, str):
            return False
        if not hmac.compare_digest(entry.token.encode("ascii"), token.encode("utf-8", "replace")):
            return False
        entry.validated_until = now + ADDRESS_VALIDATED_S
        return True

    def may_answer_error(self, addr, now):
        """Token bucket: ERROR_REPLY_BURST error replies, then ERROR_REPLIES_PER_S."""
        entry = self._entries.get(addr)
        if entry is None:
            return False
        entry.error_credit = min(float(ERROR_REPLY_BURST),
                                 entry.error_credit + (now - entry.credit_at) * ERROR_REPLIES_PER_S)
        entry.credit_at = now
        if entry.error_credit < 1.0:
            return False
        entry.error_credit -= 1.0
        return True

    def __len__(self):
        return len(self._entries)


def resend_capacity(max_datagram=DEFAULT_MAX_DATAGRAM):
    """How many chunk indices one RESEND datagram carries.

    Receivers read a RESEND datagram on its own, so it must never need chunking: each index costs
    at most 6 bytes ("65534,") after the 14-byte {"missing":[]} frame, and 44 bytes stay free for the
    ,"token":"..." a RESEND answering a CHALLENGE carries.
    """
    return min(MAX_RESEND_INDICES, (max_datagram - OVERHEAD - 14 - 44) // 6)


def resend_payload(indices, max_datagram=DEFAULT_MAX_DATAGRAM):
    """The RESEND body for the lowest missing indices that fit one datagram (the rest: next round)."""
    return {"missing": sorted(set(indices))[:resend_capacity(max_datagram)]}


def resend_indices(obj, count):
    """The valid, distinct indices (below count) a RESEND body asks for, in its order."""
    missing = obj.get("missing")
    if not isinstance(missing, list):
        raise ProtocolError("bad_payload", "RESEND needs a \"missing\" list")
    out, seen = [], set()
    for i in missing[:MAX_RESEND_INDICES]:
        if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count and i not in seen:
            seen.add(i)
            out.append(i)
    return out


def parse_resend(obj, datagrams):
    """The datagrams a RESEND asks for, from the list sent; unknown indices are ignored."""
    return [datagrams[i] for i in resend_indices(obj, len(datagrams))]


def retransmit_delays(rng, max_retransmit=MAX_RETRANSMIT, ack_timeout=ACK_TIMEOUT_S,
                      random_factor=ACK_RANDOM_FACTOR):
    """The waits before each retransmission and the last wait: CoAP's doubling, randomised once."""
    first = ack_timeout * rng.uniform(1.0, random_factor)
    return [first * (2 ** i) for i in range(max_retransmit + 1)]


# --- Key fingerprints ---------------------------------------------------------------------------

def key_fingerprint(key):
    """A short, comparable name of a machine key (like an SSH host key's): 16 base32 letters in groups of 4.

    80 bits of SHA-256: enough that nobody can make a second key with the same fingerprint, short
    enough to read out over the phone. It names the key; it does not reveal it.
    """
    digest = hashlib.sha256(b"MDP fingerprint\x00" + key).digest()[:10]
    text = base64.b32encode(digest).decode("ascii")
    return "-".join(text[i:i + 4] for i in range(0, len(text), 4))


def same_fingerprint(given, expected):
    """Compare a fingerprint typed by a person (any case, with or without dashes) in constant time."""
    def norm(text):
        return "".join(ch for ch in str(text).upper() if ch.isalnum()).encode("ascii", "replace")
    return hmac.compare_digest(norm(given), norm(expected))


# --- Enrolment: HELLO and WELCOME, the two datagrams sent before there is a key --------------------
#
# The agent sends HELLO = header | Y_agent (384 bytes): nothing else, no JSON (nothing can be sealed
# yet). The monitor answers WELCOME = header (its msg_id is the HELLO's) | Y_monitor (384) | len u8 |
# the agent's address as the monitor saw it (ASCII) | confirmation (16). Both derive the machine key
# from the transcript (kex.derive_machine_key) with that address as the agent's identity; the
# confirmation is the AES-GCM tag of an empty plaintext under the new key's to-agent message key
# for (WELCOME, msg_id, timestamp_ms), with everything before it as associated data: the agent
# learns that the monitor derived the same key (not who the monitor is: that is the fingerprint's job).

HELLO_SIZE = HEADER_SIZE + kex.PUBLIC_SIZE      # 410: every HELLO is exactly this long
# The address text of the identity: an IPv6 address with an IPv4 tail is at most 45 characters.
MAX_IDENTITY = 64
# A WELCOME is at most 26 + 384 + 1 + 64 + 16 = 491 bytes against the HELLO's 410: within the 3x
# rule for an unproven address (AMPLIFICATION_FACTOR), so a forged HELLO reflects nothing bigger.
MAX_WELCOME_SIZE = HELLO_SIZE + 1 + MAX_IDENTITY + TAG_SIZE

Enrolment = namedtuple("Enrolment", "keys fingerprint identity datagram")


def encode_hello(agent_public, msg_id, timestamp_ms):
    """The agent's HELLO: the header and its public value (kex.KeyAgreement.public_bytes), nothing else."""
    if len(agent_public) != kex.PUBLIC_SIZE or len(msg_id) != 8:
        raise ValueError("a HELLO carries a %d-byte public value and an 8-byte msg_id" % kex.PUBLIC_SIZE)
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, HELLO, 0, 0, 0, 1, msg_id, timestamp_ms) + agent_public


def parse_hello(datagram):
    """(msg_id, agent_public) of a well-formed HELLO, or None. Only the shape is checked: the public
    value is validated by answer_hello, which a caller rate-limits (it costs ~19 ms)."""
    if len(datagram) != HELLO_SIZE or datagram[:2] != MAGIC:
        return None
    _, version, kind, flags, reserved, index, count, msg_id, _ = HEADER.unpack_from(datagram)
    if (version, kind, flags, reserved, index, count) != (PROTOCOL_VERSION, HELLO, 0, 0, 0, 1):
        return None
    return msg_id, datagram[HEADER_SIZE:]


def _confirmation(keys, msg_id, timestamp_ms, signed):
    dkey = keys.to_agent
    return dkey.aead.seal(dkey.message_key(WELCOME, msg_id, timestamp_ms), NONCE.pack(0), b"", signed)


def _agreed(agreement, peer_public, identity, agent_public, monitor_public, aead):
    """(KeyPair, fingerprint) from one side's KeyAgreement and the transcript; bad_public_value if refused."""
    try:
        secret = agreement.shared_secret(peer_public)
    except kex.BadPublicValue as exc:
        raise ProtocolError("bad_public_value", str(exc))
    key = kex.derive_machine_key(secret, identity, agent_public, monitor_public)
    return KeyPair(key, aead), kex.fingerprint(identity, agent_public, monitor_public)


def answer_hello(agent_public, identity, msg_id, timestamp_ms, aead=None, agreement=None):
    """The monitor's side of an enrolment: validate Y_agent (RFC 7919 s5.1), agree, derive the key.

    identity is the agent's address as the monitor saw it (text). Returns an Enrolment whose
    datagram is the WELCOME to send back; ProtocolError("bad_public_value") for a refused value.
    agreement is given only by tests (fixed exponents, for the vectors).
    """
    identity = identity.encode("ascii")
    if not 0 < len(identity) <= MAX_IDENTITY:
        raise ValueError("an enrolment identity is 1 to %d ASCII characters" % MAX_IDENTITY)
    agreement = agreement or kex.KeyAgreement()
    keys, fingerprint = _agreed(agreement, agent_public, identity, agent_public, agreement.public_bytes, aead)
    signed = (HEADER.pack(MAGIC, PROTOCOL_VERSION, WELCOME, 0, 0, 0, 1, msg_id, timestamp_ms)
              + agreement.public_bytes + struct.pack("!B", len(identity)) + identity)
    return Enrolment(keys, fingerprint, identity.decode("ascii"),
                     signed + _confirmation(keys, msg_id, timestamp_ms, signed))


def open_welcome(datagram, agreement, msg_id, aead=None):
    """The agent's side: the Enrolment that the WELCOME to our HELLO (msg_id) gives, or ProtocolError.

    Checks the layout, that it answers our HELLO, validates Y_monitor, derives the key with the
    identity the monitor echoed, and checks the key confirmation ("bad_signature" if it fails).
    """
    fixed = HEADER_SIZE + kex.PUBLIC_SIZE
    if not fixed + 1 + TAG_SIZE < len(datagram) <= MAX_WELCOME_SIZE or datagram[:2] != MAGIC:
        raise ProtocolError("bad_welcome", "a WELCOME is %d to %d bytes, got %d"
                            % (fixed + 2 + TAG_SIZE, MAX_WELCOME_SIZE, len(datagram)))
    _, version, kind, flags, reserved, index, count, their_id, timestamp_ms = HEADER.unpack_from(datagram)
    if (version, kind, flags, reserved, index, count) != (PROTOCOL_VERSION, WELCOME, 0, 0, 0, 1):
        raise ProtocolError("bad_welcome", "not a single-datagram WELCOME of version %d" % PROTOCOL_VERSION)
    if their_id != msg_id:
        raise ProtocolError("unexpected_welcome", "a WELCOME for another HELLO than ours")
    length = bytearray(datagram[fixed:fixed + 1])[0]
    identity = datagram[fixed + 1:-TAG_SIZE]
    if len(identity) != length or not 0 < length <= MAX_IDENTITY:
        raise ProtocolError("bad_welcome", "the identity's length byte says %d, %d bytes follow"
                            % (length, len(identity)))
    monitor_public = datagram[HEADER_SIZE:fixed]
    keys, fingerprint = _agreed(agreement, monitor_public, identity, agreement.public_bytes, monitor_public, aead)
    signed = datagram[:-TAG_SIZE]
    try:
        keys.to_agent.aead.open(keys.to_agent.message_key(WELCOME, msg_id, timestamp_ms), NONCE.pack(0),
                                datagram[-TAG_SIZE:], signed)
    except _aead.InvalidTag:
        raise ProtocolError("bad_signature", "the WELCOME's key confirmation does not verify: the monitor "
                            "derived another key (or the datagram was damaged)")
    try:
        text = identity.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("bad_welcome", "the identity is not ASCII")
    return Enrolment(keys, fingerprint, text, datagram)


# --- The receiver: one object every side feeds its datagrams to -----------------------------------

class Message(object):
    """A complete, verified, first-seen message: `obj` is the decoded JSON object, `text` its JSON text."""

    __slots__ = ("addr", "kind", "msg_id", "timestamp_ms", "obj", "text", "keys")

    def __init__(self, addr, kind, msg_id, timestamp_ms, obj, text, keys):
        self.addr, self.kind, self.msg_id, self.timestamp_ms = addr, kind, msg_id, timestamp_ms
        self.obj, self.text, self.keys = obj, text, keys


class Duplicate(object):
    """A verified message (or chunk of one) seen before. Whatever answer was due is already queued."""

    __slots__ = ("addr", "kind", "msg_id", "keys")

    def __init__(self, addr, kind, msg_id, keys):
        self.addr, self.kind, self.msg_id, self.keys = addr, kind, msg_id, keys


class Refusal(object):
    """A datagram or message refused, with the ProtocolError code saying why (for counters and logs)."""

    __slots__ = ("addr", "code", "message", "msg_id")

    def __init__(self, addr, code, message, msg_id=None):
        self.addr, self.code, self.message, self.msg_id = addr, code, message, msg_id


class Endpoint(object):
    """One side of MDP on one socket, sans-I/O, in the manner of h11's Connection.

    feed(datagram, addr, wall_ms, now) verifies, refuses, de-duplicates, reassembles and decodes,
    and returns events (Message, Duplicate, Refusal). send() encodes a message. tick(wall_ms, now)
    asks for missing chunks and ages out state. Every datagram any of them wants sent is queued;
    the owner takes them with datagrams_to_send() and does the I/O. `now` is a monotonic clock
    (seconds), `wall_ms` the wall clock (ms since the epoch, what timestamps are compared with).

    keys_for(ip, msg_id) returns the KeyPair to verify with, or None (then a Refusal "no_key").
    alternate_keys(ip), if given, returns the other keys of ip's keyring during a key rotation
    (docs/security.md): tried in order only when keys_for's key does not open the datagram, so a
    steady-state datagram costs what it did. The key that opened a message is its event's `keys`,
    and whatever answers it (reply, RESEND, CHALLENGE) is sealed with that key.
    The owner says which kinds are de-duplicated and how:
      agent      receives=TO_AGENT, dedup={REQUEST: False}: a request is one request whatever address
                 it comes from (one key), answered from the outbox to its first sender only;
      collector  receives=TO_CONTROLLER, dedup={REPORT: True}: per sender IP;
      client     receives=TO_CONTROLLER, dedup={}: it accepts replies only for requests it has
                 pending (keys_for says so), and answers CHALLENGEs.
    """

    def __init__(self, receives, keys_for, dedup=None, answer_errors=False, max_datagram=DEFAULT_MAX_DATAGRAM,
                 replay_window_s=DEFAULT_REPLAY_WINDOW_S, reassembly_bytes=REASSEMBLY_BYTES_TOTAL,
                 not_before_ms=0, address_entries=ADDRESS_TABLE_ENTRIES, text_only=(),
                 replay_entries=REPLAY_CACHE_ENTRIES, outbox_bytes=OUTBOX_BYTES, alternate_keys=None):
        self.receives = receives
        self.alternate_keys = alternate_keys
        # Kinds delivered as JSON text only (Message.obj None): the collector hands reports to SQLite,
        # which reads the JSON itself, so parsing them in Python would be work done twice.
        self.text_only = frozenset(text_only)
        self.sends = TO_CONTROLLER if receives == TO_AGENT else TO_AGENT
        self.keys_for = keys_for
        self.dedup = dict(dedup or {})
        self.answer_errors = answer_errors
        self.max_datagram = max_datagram
        self.window_s = replay_window_s
        # Requests stamped before this (the agent's start) may have run before a restart: refused,
        # retryably, since the reply cache that would have answered them is gone.
        self.not_before_ms = not_before_ms
        self.guard = ReplayGuard(replay_window_s, replay_entries)
        self.reassembler = Reassembler(total_bytes=reassembly_bytes)
        self.outbox = Outbox(outbox_bytes)
        self.addresses = AddressBook(address_entries)
        self.stamps = Stamps(replay_entries)
        self._outgoing = []

    # --- output -----------------------------------------------------------------------------------

    def datagrams_to_send(self):
        """[(addr, datagram)] queued since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def send(self, addr, kind, payload, keys, wall_ms, now, msg_id=None, response=True, cache=True,
             compress=True):
        """Encode payload (bytes, or a JSON-able object) and queue it for addr. Returns the msg_id.

        response=True: addr asked for this (a reply), so the amplification budget applies and a reply
        over it waits behind a CHALLENGE. response=False: we chose addr (a request, a report).
        cache=True keeps it in the outbox for duplicates and RESENDs.
        """
        if kind not in KINDS_BY_DIRECTION[self.sends]:
            raise ValueError("a %s may not be sent %s" % (KIND_NAMES.get(kind, kind), self.sends.decode()))
        if not isinstance(payload, bytes):
            payload = dump_json(payload)
        if msg_id is None:
            msg_id = new_msg_id()
        else:   # a msg_id used before (a reply's, a RESEND's, a retransmitted report's): see Stamps
            wall_ms = self.stamps.stamp(kind, msg_id, wall_ms, now)
        allowance = self.addresses.allowance(addr, now) if response else None
        datagrams = encode_message(kind, payload, keys.for_direction(self.sends), msg_id, wall_ms,
                                   self.max_datagram, compress, allowance)
        entry = self.outbox.put(msg_id, datagrams, now, addr, not response) if cache else None
        if not response:
            self._queue(addr, datagrams, entry)
            return msg_id
        if allowance is None or total_bytes(datagrams) <= allowance:
            self._queue(addr, datagrams, entry, counted=True)
        elif entry is not None:
            self._challenge(addr, msg_id, len(datagrams), keys, wall_ms, now)
        return msg_id

    def refuse(self, addr, msg_id, error, keys, wall_ms, now):
        """Answer a request with an error reply: rate-limited per address, never cached, and within the
        address's amplification budget (its message is shortened to fit rather than not sent).

        An MDP/1 peer (error.legacy) gets its answer in MDP/1's format, which it can read: clear JSON
        under MDP/1's HMAC, carrying only the refusal."""
        if not (self.answer_errors and self.addresses.may_answer_error(addr, now)):
            return
        legacy = getattr(error, "legacy", False)
        overhead = HEADER_SIZE + LEGACY_MAC_SIZE if legacy else OVERHEAD
        payload = dump_json(error_reply(error))
        allowance = self.addresses.allowance(addr, now)
        if allowance is not None and len(payload) + overhead > allowance:
            short = ProtocolError(error.code, error.message)   # details go first, then message bytes
            payload = dump_json(error_reply(short))
            excess = len(payload) + overhead - allowance
            if excess > 0:
                short.message = error.message[:max(0, len(error.message) - excess - 3)] + "..."
                payload = dump_json(error_reply(short))
            if len(payload) + overhead > allowance:
                return
        if legacy:
            datagram = encode_legacy(REPLY, payload, keys, self.sends, msg_id, wall_ms)
            self._queue(addr, [datagram], counted=True)
            return
        self.send(addr, REPLY, payload, keys, wall_ms, now, msg_id, cache=False)

    def _queue(self, addr, datagrams, entry=None, indices=None, counted=False):
        """Queue datagrams (all, or those at indices) for addr; each at most MAX_SENDS_PER_DATAGRAM times."""
        total = 0
        for i in (range(len(datagrams)) if indices is None else indices):
            if entry is not None:
                if entry.sends[i] >= MAX_SENDS_PER_DATAGRAM:
                    continue
                entry.sends[i] += 1
            self._outgoing.append((addr, datagrams[i]))
            total += len(datagrams[i])
        if counted:
            self.addresses.spent(addr, total)
        return total

    def _challenge(self, addr, msg_id, count, keys, wall_ms, now):
        token = self.addresses.token_for(addr)
        body = dump_json({"token": token, "count": count})
        wall_ms = self.stamps.stamp(CHALLENGE, msg_id, wall_ms, now)
        datagrams = encode_message(CHALLENGE, body, keys.for_direction(self.sends), msg_id, wall_ms,
                                   self.max_datagram, False)
        allowance = self.addresses.allowance(addr, now)
        if allowance is None or len(datagrams[0]) <= allowance:
            self._queue(addr, datagrams, counted=True)

    # --- input ------------------------------------------------------------------------------------

    def feed(self, datagram, addr, wall_ms, now):
        """Take one received datagram; returns a list of events (often one, sometimes none)."""
        msg_id = peek_msg_id(datagram)
        keys = self.keys_for(addr[0], msg_id) if msg_id is not None else None
        if keys is None:
            code = "truncated" if msg_id is None else "no_key"
            return [Refusal(addr, code, "no key to verify a datagram from %s" % addr[0], msg_id)]
        try:
            packet = open_datagram(datagram, keys, self.receives)
        except ProtocolError as exc:
            # Only `exc` may hold the error: the except clause unbinds it on the way out, while any
            # other local would keep a frame <-> traceback cycle alive until the cyclic GC runs.
            packet = None
            if exc.code == "bad_signature" and self.alternate_keys is not None:
                keys, packet, exc = self._open_with_alternates(datagram, addr, keys, exc)
            if packet is None:
                return self._refuse_unopened(datagram, addr, msg_id, keys, exc, wall_ms, now)
        self.addresses.heard(addr, len(datagram), now)
        skew = skew_error(packet.timestamp_ms, wall_ms, self.window_s)
        if skew is not None:
            if packet.index == 0 and packet.kind == REQUEST:
                self.refuse(addr, msg_id, skew, keys, wall_ms, now)
            return [Refusal(addr, "clock_skew", skew.message, msg_id)]
        kind = packet.kind
        if kind == RESEND:
            return self._on_resend(packet, datagram, addr, wall_ms, now)
        if kind == CHALLENGE:
            return self._on_challenge(packet, addr, keys, wall_ms, now)
        by_peer = self.dedup.get(kind)
        if by_peer is not None:
            if packet.timestamp_ms < self.not_before_ms:
                error = ProtocolError("restarted", "the agent restarted after this request was sent; send it "
                                      "again as a new request", retry=True)
                if packet.index == 0:
                    self.refuse(addr, msg_id, error, keys, wall_ms, now)
                return [Refusal(addr, "restarted", error.message, msg_id)]
            peer = addr[0] if by_peer else None
            if self.guard.seen(peer, msg_id):   # before reassembly: a replayed chunk costs nothing
                return self._on_duplicate(packet, addr, keys, wall_ms, now)
        complete = self.reassembler.add(addr[0], packet, now, addr)
        if complete is None:
            return []
        _, flags, timestamp_ms, body = complete
        try:
            if by_peer is not None:
                self.guard.check(peer, msg_id, timestamp_ms, wall_ms)
                self.guard.remember(peer, msg_id, timestamp_ms, wall_ms)
            text = decode_text(flags, body)
            obj = None
            if kind not in self.text_only:
                obj = parse_text(text)
                check_payload_version(obj)
        except ProtocolError as exc:
            if kind == REQUEST:
                self.refuse(addr, msg_id, exc, keys, wall_ms, now)
            return [Refusal(addr, exc.code, exc.message, msg_id)]
        return [Message(addr, kind, msg_id, timestamp_ms, obj, text, keys)]

    def _open_with_alternates(self, datagram, addr, keys, error):
        """(keys, packet, None) for the first alternate key that opens datagram, else (keys, None, error)."""
        for other in self.alternate_keys(addr[0]) or ():
            try:
                return other, open_datagram(datagram, other, self.receives), None
            except ProtocolError as exc:
                if exc.code != "bad_signature":   # it verified: an unsupported version under this key
                    return other, None, exc
        return keys, None, error

    def _refuse_unopened(self, datagram, addr, msg_id, keys, exc, wall_ms, now):
        if exc.code == "unsupported_version":   # sealed (or MDP/1-signed) with our key: tell it
            self.addresses.heard(addr, len(datagram), now)
            self.refuse(addr, msg_id, exc, keys, wall_ms, now)
        return [Refusal(addr, exc.code, exc.message, msg_id)]

    def _on_duplicate(self, packet, addr, keys, wall_ms, now):
        entry = self.outbox.entry(packet.msg_id)
        if entry is not None and packet.index == 0:
            if entry.addr != addr:   # a replay from another address: never reflected there
                return [Refusal(addr, "foreign_duplicate", "a request first seen from another address",
                                packet.msg_id)]
            allowance = self.addresses.allowance(addr, now)
            if allowance is None or entry.cost - OUTBOX_ENTRY_COST <= allowance:
                self._queue(addr, entry.datagrams, entry, counted=True)
            else:
                self._challenge(addr, packet.msg_id, len(entry.datagrams), keys, wall_ms, now)
        return [Duplicate(addr, packet.kind, packet.msg_id, keys)]

    def _on_resend(self, packet, datagram, addr, wall_ms, now):
        # A RESEND is answered once: it is remembered by its tag, unique to its bytes.
        entry = self.outbox.entry(packet.msg_id)
        if entry is None:
            return []   # aged out, or never ours
        if entry.addr != addr:   # checked first, so a forged copy cannot use up the real one
            return [Refusal(addr, "foreign_resend", "a RESEND for a message sent elsewhere", packet.msg_id)]
        resend_id = datagram[-16:]
        if self.guard.seen("resend", resend_id):
            return [Refusal(addr, "duplicate", "a RESEND already answered", packet.msg_id)]
        self.guard.remember("resend", resend_id, packet.timestamp_ms, wall_ms)
        try:
            obj = decode_body(packet.flags, packet.body)
            wanted = resend_indices(obj, len(entry.datagrams))
        except ProtocolError as exc:
            return [Refusal(addr, exc.code, exc.message, packet.msg_id)]
        if entry.originated:
            self._queue(addr, entry.datagrams, entry, wanted)
            return []
        if "token" in obj:
            self.addresses.prove(addr, obj["token"], now)
        allowance = self.addresses.allowance(addr, now)
        if allowance is not None:   # not proven: only what fits the budget, lowest indices first
            fit, used = [], 0
            for i in wanted:
                used += len(entry.datagrams[i])
                if used > allowance:
                    break
                fit.append(i)
            wanted = fit
        self._queue(addr, entry.datagrams, entry, wanted, counted=True)
        return []

    def _on_challenge(self, packet, addr, keys, wall_ms, now):
        """The agent holds our reply until we prove this address: echo its token in a RESEND."""
        try:
            obj = decode_body(packet.flags, packet.body)
            token, count = obj["token"], obj["count"]
            if not isinstance(token, str) or not isinstance(count, int) or not 0 < count <= MAX_USEFUL_CHUNKS:
                raise ValueError("bad challenge")
        except (ProtocolError, KeyError, TypeError, ValueError):
            return [Refusal(addr, "bad_payload", "a CHALLENGE without a token and count", packet.msg_id)]
        payload = resend_payload(range(min(count, MAX_RESEND_INDICES)), self.max_datagram)
        payload["token"] = token
        self.send(addr, RESEND, payload, keys, wall_ms, now, packet.msg_id, response=False, cache=False,
                  compress=False)
        return []

    # --- time -------------------------------------------------------------------------------------

    def tick(self, wall_ms, now):
        """Ask for the missing chunks of quiet partial messages; age out partials and sent messages."""
        self.reassembler.expire(now)
        self.outbox.expire(now)
        self.stamps.expire(now)
        fit = resend_capacity(self.max_datagram)
        for addr, msg_id, missing in self.reassembler.missing(now, limit=fit):
            keys = self.keys_for(addr[0], msg_id)
            if keys is not None and missing:
                self.send(addr, RESEND, {"missing": missing}, keys, wall_ms, now, msg_id, response=False,
                          cache=False, compress=False)

    def forget(self, msg_id):
        """Drop a sent message from the outbox (a report acknowledged, a request answered)."""
        self.outbox.pop(msg_id)
