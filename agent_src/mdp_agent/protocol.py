"""The MDP wire protocol, version 1: the one implementation, sans-I/O (bytes in, objects out).

The agent, the controller library, the collector and the Ansible plugin all use this module; nothing
here opens a socket or reads a clock it was not handed. docs/protocol.md explains every field and
limit, and tests/vectors/ holds exact bytes that another implementation can check itself against.

A datagram is::

    header (26 bytes) | body | mac (32 bytes)

    header = "MD" | version u8 | kind u8 | flags u8 | reserved u8 (0)
             | chunk_index u16 | chunk_count u16 | msg_id 8 bytes | timestamp_ms u64   (network order)
    mac    = HMAC-SHA256(direction_key, header | body)

A message (a JSON object, optionally zlib-compressed) is cut into chunk_count bodies; every chunk is
signed on its own, so a forged or damaged chunk is dropped before reassembly.

Must run on Python 3.4, standard library only (the agent imports it).
"""

import binascii
import hashlib
import hmac
import json
import os
import struct
import zlib
from collections import OrderedDict, namedtuple

PROTOCOL_VERSION = 1            # header byte; a new major version changes the layout after byte 3
VERSION_STRING = "1.0"          # the payload's "version" field: "major.minor"
MAGIC = b"MD"

# Message kinds. Which side may send which kind is fixed; a receiver drops any other.
REQUEST = 1   # controller -> agent: {"version", "operations", "cluster_info"}
REPLY = 2     # agent -> controller: {"status", "version", "operations", "cluster_info"}; msg_id = request's
REPORT = 3    # agent -> monitor: a reply-shaped object pushed every interval
HELLO = 4     # agent -> monitor: enrolment, carries the agent's key (trust on first use, opt-in)
RESEND = 5    # either way: {"missing": [chunk indices]} for the message with this msg_id
ACK = 6       # monitor -> agent: {"ack": "report"|"hello", "state": ...} after a verified report/hello
KIND_NAMES = {REQUEST: "request", REPLY: "reply", REPORT: "report", HELLO: "hello", RESEND: "resend", ACK: "ack"}

# Directions. Each direction signs with its own key derived from the machine key, so a datagram
# signed for one direction never verifies for the other, whatever its kind byte says.
TO_AGENT = b"to-agent"
TO_CONTROLLER = b"to-controller"
KINDS_BY_DIRECTION = {TO_AGENT: (REQUEST, RESEND, ACK), TO_CONTROLLER: (REPLY, REPORT, HELLO, RESEND)}

FLAG_ZLIB = 0x01                # the message bytes (all chunks joined) are a zlib stream

HEADER = struct.Struct("!2sBBBBHH8sQ")
HEADER_SIZE = HEADER.size       # 26
MAC_SIZE = 32                   # HMAC-SHA256, never truncated
OVERHEAD = HEADER_SIZE + MAC_SIZE
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
# Compression only pays above a few hundred bytes (zlib's header and a small JSON object).
COMPRESS_MIN_BYTES = 256
# Replay window: a request more than 60 s older or newer than the receiver's clock is refused (and
# the refusal says by how much). NTP keeps real fleets within milliseconds; 60 s tolerates a sloppy one.
DEFAULT_REPLAY_WINDOW_S = 60.0
# Seen message ids kept for duplicate detection. At 10,000 messages/s the window holds more than
# this; when full, the oldest id is forgotten and the window's lower edge moves up to its timestamp,
# so anything older is refused as stale rather than risking a replay: ~20 MB at most (measured).
REPLAY_CACHE_ENTRIES = 100000
# Reassembly: partial messages per peer, bytes per peer and overall, and how long a partial message
# may wait for its next chunk before it is dropped (bounded memory whatever a peer sends).
REASSEMBLY_MESSAGES_PER_PEER = 8
REASSEMBLY_BYTES_TOTAL = 64 * 1024 * 1024
REASSEMBLY_IDLE_S = 10.0
# What each held chunk costs beyond its body (dict slot, bytes object): counted so that a flood of
# empty chunks is bounded like a flood of full ones.
CHUNK_COST = 100
REASSEMBLY_BYTES_PER_PEER = MAX_MESSAGE_BYTES + CHUNK_COST * (MAX_MESSAGE_BYTES // (MIN_DATAGRAM - OVERHEAD) + 1)
# Sent messages kept to answer duplicates and RESENDs: bytes overall, and for how long.
OUTBOX_BYTES = 16 * 1024 * 1024
# What each kept message costs beyond its datagrams' bytes (dict entry, key and value tuples, list,
# bytes headers), counted so that OUTBOX_BYTES bounds real memory even for tiny replies.
OUTBOX_ENTRY_COST = 400
OUTBOX_TTL_S = 2 * DEFAULT_REPLAY_WINDOW_S
MAX_RESEND_INDICES = 4096       # indices one RESEND may ask for

# Retransmission, after CoAP (RFC 7252 s4.8): the first wait is ACK_TIMEOUT randomised up to
# ACK_RANDOM_FACTOR times, doubling after each try, at most MAX_RETRANSMIT retransmissions, all within
# the caller's overall deadline. Worst case 2 s * 1.5 * (1+2+4+8+16) = 93 s; callers cap it lower.
ACK_TIMEOUT_S = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
# A receiver missing chunks asks for them after this much silence (well above a LAN burst's spread).
RESEND_GAP_S = 0.2


class ProtocolError(Exception):
    """A datagram or message we must refuse. `code` is stable (for tests and logs); message is prose."""

    def __init__(self, code, message, **details):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self):
        out = {"code": self.code, "message": self.message}
        out.update(self.details)
        return out


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


def direction_key(key, direction):
    """The per-direction MAC key: HMAC-SHA256(machine key, "MDP/1 " + direction)."""
    return hmac.new(key, b"MDP/1 " + direction, hashlib.sha256).digest()


class KeyPair(object):
    """A machine key with both direction keys derived once (derivation costs two HMACs)."""

    __slots__ = ("key", "to_agent", "to_controller")

    def __init__(self, key):
        if len(key) != KEY_SIZE:
            raise ValueError("machine key must be %d bytes" % KEY_SIZE)
        self.key = key
        self.to_agent = direction_key(key, TO_AGENT)
        self.to_controller = direction_key(key, TO_CONTROLLER)

    def for_direction(self, direction):
        return self.to_agent if direction == TO_AGENT else self.to_controller

    @classmethod
    def from_text(cls, text):
        return cls(parse_key_text(text))


_hmac_digest = getattr(hmac, "digest", None)  # Python 3.7+: one C call; 3.4-3.6 fall back below


def _mac(dkey, data):
    if _hmac_digest is not None:
        return _hmac_digest(dkey, data, "sha256")
    return hmac.new(dkey, data, hashlib.sha256).digest()


# --- Messages <-> bytes -------------------------------------------------------------------------

# One encoder for every message: json.dumps with non-default options builds a new encoder per call
# (~10 us, as much as the rest of a ping). allow_nan=False: NaN and Infinity are not JSON (RFC 8259).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dump_json(obj):
    """Compact UTF-8 JSON, the form every message body takes before compression."""
    return _ENCODER.encode(obj).encode("utf-8")


def new_msg_id():
    return os.urandom(8)


def encode_message(kind, payload, dkey, msg_id, timestamp_ms, max_datagram=DEFAULT_MAX_DATAGRAM,
                   compress=True):
    """Sign `payload` (bytes) as one message and cut it into datagrams. Returns a list of bytes.

    Compresses with zlib when that makes the message smaller; chunks when it still does not fit.
    """
    if not MIN_DATAGRAM <= max_datagram <= MAX_DATAGRAM:
        raise ValueError("max_datagram must be between %d and %d" % (MIN_DATAGRAM, MAX_DATAGRAM))
    if len(msg_id) != 8:
        raise ValueError("msg_id must be 8 bytes")
    if len(payload) > MAX_MESSAGE_BYTES:   # receivers refuse to inflate past this, so never send it
        raise ProtocolError("too_large", "message is %d bytes, the limit is %d" % (len(payload), MAX_MESSAGE_BYTES))
    flags = 0
    if compress and len(payload) >= COMPRESS_MIN_BYTES:
        packed = zlib.compress(payload, 6)
        if len(packed) < len(payload):
            payload, flags = packed, FLAG_ZLIB
    room = max_datagram - OVERHEAD
    count = max(1, (len(payload) + room - 1) // room)
    datagrams = []
    for index in range(count):
        body = payload[index * room:(index + 1) * room]
        head = HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, flags, 0, index, count, msg_id, timestamp_ms)
        datagrams.append(head + body + _mac(dkey, head + body))
    return datagrams


def encode(kind, obj, keys, direction, msg_id=None, timestamp_ms=0, max_datagram=DEFAULT_MAX_DATAGRAM,
           compress=True):
    """Encode a JSON-able object as signed datagrams. Returns (msg_id, [datagram, ...])."""
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
    """Verify one datagram and return its Packet. Raises ProtocolError; nothing is parsed before the MAC.

    Every version keeps the magic first and the MAC last, so the MAC is checked before the version:
    an unknown version from a peer holding the key gets a clear answer, a stranger gets nothing.
    """
    if len(datagram) < OVERHEAD:
        raise ProtocolError("truncated", "datagram of %d bytes is shorter than the %d-byte minimum"
                            % (len(datagram), OVERHEAD))
    if datagram[:2] != MAGIC:
        raise ProtocolError("bad_magic", "not an MDP datagram")
    signed, mac = datagram[:-MAC_SIZE], datagram[-MAC_SIZE:]
    if not hmac.compare_digest(_mac(keys.for_direction(direction), signed), mac):
        raise ProtocolError("bad_signature", "signature does not verify with this machine's key")
    _, version, kind, flags, _, index, count, msg_id, timestamp_ms = HEADER.unpack_from(signed)
    if version != PROTOCOL_VERSION:
        raise ProtocolError("unsupported_version", "protocol version %d is not supported; this side speaks %d"
                            % (version, PROTOCOL_VERSION), supported=[PROTOCOL_VERSION])
    if kind not in KINDS_BY_DIRECTION[direction]:
        raise ProtocolError("bad_kind", "message kind %d is not valid %s" % (kind, direction.decode()))
    if count == 0 or index >= count or flags & ~FLAG_ZLIB:
        raise ProtocolError("bad_header", "chunk %d of %d, flags %#x" % (index, count, flags))
    return Packet(kind, flags, index, count, msg_id, timestamp_ms, signed[HEADER_SIZE:])


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
        obj = json.loads(text)
    except ValueError as exc:
        raise ProtocolError("bad_payload", "payload is not JSON: %s" % exc)
    if not isinstance(obj, dict):
        raise ProtocolError("bad_payload", "payload must be a JSON object")
    return obj


def decode_body(flags, data):
    """A complete message's bytes -> the JSON object (a dict). Decompression is bounded."""
    return parse_text(decode_text(flags, data))


def check_payload_version(obj):
    """Refuse a payload whose "version" has another major number (a missing version means 1)."""
    version = obj.get("version", VERSION_STRING)
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
    __slots__ = ("kind", "flags", "count", "timestamp_ms", "chunks", "size", "last_seen", "asked_at")

    def __init__(self, packet, now):
        self.kind, self.flags, self.count = packet.kind, packet.flags, packet.count
        self.timestamp_ms = packet.timestamp_ms
        self.chunks = {}
        self.size = 0
        self.last_seen = now
        self.asked_at = now


class Reassembler(object):
    """Joins verified chunks into messages, with bounded memory per peer and overall and an idle deadline.

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

    def add(self, peer, packet, now):
        if packet.count == 1:
            return packet.kind, packet.flags, packet.timestamp_ms, packet.body
        partials = self._peers.setdefault(peer, OrderedDict())
        part = partials.get(packet.msg_id)
        if part is None:
            if len(partials) >= REASSEMBLY_MESSAGES_PER_PEER:
                self._drop(peer, next(iter(partials)))
            part = partials[packet.msg_id] = _Partial(packet, now)
        elif (part.count, part.kind, part.flags, part.timestamp_ms) != (
                packet.count, packet.kind, packet.flags, packet.timestamp_ms):
            return None  # a signed chunk that contradicts its siblings: ignore it, keep the others
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

    def missing(self, now, gap_s=RESEND_GAP_S):
        """[(peer, msg_id, [indices])] for partial messages quiet for gap_s and not asked for since."""
        out = []
        for peer, partials in self._peers.items():
            for msg_id, part in partials.items():
                if now - max(part.last_seen, part.asked_at) >= gap_s:
                    part.asked_at = now
                    out.append((peer, msg_id, [i for i in range(part.count)
                                               if i not in part.chunks][:MAX_RESEND_INDICES]))
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

class Outbox(object):
    """Recently sent messages by (peer, msg_id), bounded in bytes and age (oldest evicted first)."""

    def __init__(self, max_bytes=OUTBOX_BYTES, ttl_s=OUTBOX_TTL_S):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.size = 0
        self._items = OrderedDict()   # (peer, msg_id) -> (sent_at, [datagrams])

    def put(self, peer, msg_id, datagrams, now):
        key = (peer, msg_id)
        if key in self._items:
            self._remove(key)
        self._items[key] = (now, datagrams)
        self.size += _outbox_cost(datagrams)
        self.expire(now)

    def get(self, peer, msg_id):
        item = self._items.get((peer, msg_id))
        return item[1] if item else None

    def expire(self, now):
        while self._items:
            key, (sent_at, _) = next(iter(self._items.items()))
            if self.size <= self.max_bytes and now - sent_at <= self.ttl_s:
                break
            self._remove(key)

    def _remove(self, key):
        _, datagrams = self._items.pop(key)
        self.size -= _outbox_cost(datagrams)

    def __len__(self):
        return len(self._items)


def _outbox_cost(datagrams):
    return OUTBOX_ENTRY_COST + sum(len(d) for d in datagrams)


def resend_payload(indices, max_datagram=DEFAULT_MAX_DATAGRAM):
    """The RESEND body for the lowest missing indices that fit one datagram (the rest: next round).

    Receivers read a RESEND datagram on its own, so it must never need chunking: each index costs
    at most 6 bytes ("65534,") after the 14-byte {"missing":[]} frame.
    """
    fit = min(MAX_RESEND_INDICES, (max_datagram - OVERHEAD - 14) // 6)
    return {"missing": sorted(set(indices))[:fit]}


def parse_resend(obj, datagrams):
    """The datagrams a RESEND asks for, from the list sent; unknown indices are ignored."""
    missing = obj.get("missing")
    if not isinstance(missing, list):
        raise ProtocolError("bad_payload", "RESEND needs a \"missing\" list")
    return [datagrams[i] for i in missing[:MAX_RESEND_INDICES]
            if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(datagrams)]


def retransmit_delays(rng, max_retransmit=MAX_RETRANSMIT, ack_timeout=ACK_TIMEOUT_S,
                      random_factor=ACK_RANDOM_FACTOR):
    """The waits before each retransmission and the last wait: CoAP's doubling, randomised once."""
    first = ack_timeout * rng.uniform(1.0, random_factor)
    return [first * (2 ** i) for i in range(max_retransmit + 1)]
