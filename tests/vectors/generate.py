"""Regenerate the MDP/2 test vectors (tests/vectors/*.json) from fixed keys, ids and timestamps.

    PYTHONPATH=agent_src python3 tests/vectors/generate.py          # rewrite the files
    PYTHONPATH=agent_src python3 tests/vectors/generate.py --check  # exit 1 if any file would change

Nothing here is random, so the output is the same on every run: tests/agent/test_vectors.py checks
that the files on disk are exactly what this script makes, and that protocol.py reproduces them.
Compressed vectors hold zlib level-6 output; another deflate may produce other (equally valid) bytes,
so an implementation that compresses differently checks those vectors by decoding them instead.
Every vector records the keys an implementation derives on the way (direction key, message key), so
a mismatch says which step differs. tests/agent/test_vectors.py checks them all with a reference
decoder that uses only `cryptography`'s AESGCM, hmac, hashlib, zlib, struct and json.
"""

import binascii
import hashlib
import json
import os
import struct
import sys

from mdp_agent import kex
from mdp_agent import protocol as p

HERE = os.path.dirname(os.path.abspath(__file__))
# The machine key of every vector: SHA-256("MDP test vector key"), far from any real key.
KEY_HEX = "5d86dd30e29ec719c4713daf470538633899a38dae0ea9db45300ca99a0c64c1"
TIMESTAMP_MS = 1767225600000      # 2026-01-01T00:00:00Z
DIRECTION_NAMES = {p.TO_AGENT: "to-agent", p.TO_CONTROLLER: "to-controller"}


def _hex(data):
    return binascii.hexlify(data).decode("ascii")


def _text(obj):
    """The exact payload text of a vector (what dump_json makes: compact, UTF-8, not ASCII-escaped)."""
    return p.dump_json(obj).decode("utf-8")


def _chunked_result():
    rows = []
    for pid in range(1, 13):
        rows.append({"pid": pid * 101, "name": f"worker-{pid:02d}", "cpu_percent": round(pid * 1.25, 2),
                     "rss_bytes": pid * 1048576 + pid * 7})
    return {"status": True, "version": "2.0", "cluster_info": {},
            "operations": [{"name": "process.top", "result": rows}]}


def _compressible_result():
    mounts = [{"mount": f"/srv/data{i}", "fstype": "ext4", "total_bytes": 107374182400,
               "free_bytes": 53687091200 - i * 4096, "read_only": False} for i in range(16)]
    return {"status": True, "version": "2.0", "cluster_info": {},
            "operations": [{"name": "filesystem.usage", "result": mounts}]}


def _scrambled_lines(n):
    """Lines that deflate only so far (multiplicative hashing), so compressed text still needs chunks."""
    return [f"{i:05d} {_hex(struct.pack('!I', i * 2654435761 & 0xFFFFFFFF))}" for i in range(n)]


# name -> (description, direction, kind, msg_id hex, payload object, max_datagram, compress)
POSITIVE = [
    ("request", "A request for two operations, one with arguments (controller to agent).",
     p.TO_AGENT, p.REQUEST, "0102030405060708",
     {"version": "2.0", "operations": ["system.ping", {"name": "process.top", "args": {"n": 3}}],
      "cluster_info": {}}, 1200, True),
    ("reply", "The reply to the request above: same msg_id, one success and one error result.",
     p.TO_CONTROLLER, p.REPLY, "0102030405060708",
     {"status": False, "version": "2.0", "cluster_info": {},
      "operations": [{"name": "system.ping", "result": "pong"},
                     {"name": "process.top", "error": {"code": "not_allowed",
                                                       "message": "process.top is not matched by the agent's "
                                                                  "allow list"}}]}, 1200, True),
    ("report", "A report pushed to the monitor (reply-shaped, with reported_at); non-ASCII text stays UTF-8.",
     p.TO_CONTROLLER, p.REPORT, "1112131415161718",
     {"status": True, "version": "2.0", "cluster_info": {}, "reported_at": 1767225600.0,
      "operations": [{"name": "load.avg", "result": [0.25, 0.5, 0.75]},
                     {"name": "system.info", "result": {"hostname": "m\u00e5skin-01"}}]}, 1200, True),
    ("resend-to-agent", "The controller asks the agent again for chunks 1 and 3 of reply 0102030405060708.",
     p.TO_AGENT, p.RESEND, "0102030405060708", {"missing": [1, 3]}, 1200, True),
    ("resend-to-controller", "The agent asks the controller for chunk 2 of a chunked request.",
     p.TO_CONTROLLER, p.RESEND, "3132333435363738", {"missing": [2]}, 1200, True),
    ("ack", "The monitor acknowledges report 1112131415161718.",
     p.TO_AGENT, p.ACK, "1112131415161718", {"ack": "report"}, 1200, True),
    ("challenge", "The agent holds a 3-chunk reply until the controller proves its address by echoing the token.",
     p.TO_CONTROLLER, p.CHALLENGE, "0102030405060708", {"token": "00112233445566778899aabbccddeeff", "count": 3},
     1200, False),
    ("reply-compressed", "A reply large and repetitive enough to be sent zlib-compressed (flag 0x01).",
     p.TO_CONTROLLER, p.REPLY, "4142434445464748", _compressible_result(), 1200, True),
    ("reply-chunked", "A reply cut into 3+ chunks at the smallest datagram size, uncompressed.",
     p.TO_CONTROLLER, p.REPLY, "5152535455565758", _chunked_result(), p.MIN_DATAGRAM, False),
    ("reply-chunked-compressed", "A reply compressed first, then cut into chunks (the flag is on every chunk).",
     p.TO_CONTROLLER, p.REPLY, "6162636465666768",
     {"status": True, "version": "2.0", "cluster_info": {},
      "operations": [{"name": "example.lines", "result": _scrambled_lines(120)}]}, p.MIN_DATAGRAM, True),
]


def _seal(dkey, header_fields, body):
    return p.seal_datagram(dkey, p.HEADER.pack(*header_fields), body)


def _flip(data, index):
    data = bytearray(data)
    data[index] ^= 0x01
    return bytes(data)


def _negative(keys):
    """name -> (description, direction to open with, [datagram], expected error code)."""
    ka, kc = keys.to_agent, keys.to_controller
    body = _text({"version": "2.0", "operations": ["system.ping"], "cluster_info": {}}).encode("utf-8")
    v = p.PROTOCOL_VERSION
    good = _seal(ka, (p.MAGIC, v, p.REQUEST, 0, 0, 0, 1, b"\x71" * 8, TIMESTAMP_MS), body)
    resend = _seal(ka, (p.MAGIC, v, p.RESEND, 0, 0, 0, 1, b"\x72" * 8, TIMESTAMP_MS), b'{"missing":[0]}')
    legacy = p.encode_legacy(p.REQUEST, body, keys, p.TO_AGENT, b"\x78" * 8, TIMESTAMP_MS)
    return [
        ("flipped-tag", "A request whose last tag byte was changed.", p.TO_AGENT, [_flip(good, len(good) - 1)],
         "bad_signature"),
        ("flipped-ciphertext", "A request with one ciphertext byte changed.", p.TO_AGENT,
         [_flip(good, p.HEADER_SIZE + 5)], "bad_signature"),
        ("header-changed", "A request whose timestamp (in the header, the associated data) was changed after "
         "sealing.", p.TO_AGENT, [_flip(good, p.HEADER_SIZE - 1)], "bad_signature"),
        ("wrong-direction", "A RESEND sealed to-agent, opened as to-controller (RESEND is valid both ways).",
         p.TO_CONTROLLER, [resend], "bad_signature"),
        ("wrong-key", "A request sealed with another machine's key.", p.TO_AGENT,
         [_seal(p.KeyPair(b"\x01" * 32).to_agent, (p.MAGIC, v, p.REQUEST, 0, 0, 0, 1, b"\x71" * 8,
                                                    TIMESTAMP_MS), body)], "bad_signature"),
        ("truncated-short", "Fewer bytes than a header and a tag.", p.TO_AGENT, [good[:p.OVERHEAD - 1]],
         "truncated"),
        ("truncated-tail", "A request missing its last byte.", p.TO_AGENT, [good[:-1]], "bad_signature"),
        ("bad-magic", "Not starting with \"MD\".", p.TO_AGENT, [b"XD" + good[2:]], "bad_magic"),
        ("wrong-kind", "A REPLY, correctly sealed with the to-agent key: replies never travel to an agent.",
         p.TO_AGENT, [_seal(ka, (p.MAGIC, v, p.REPLY, 0, 0, 0, 1, b"\x73" * 8, TIMESTAMP_MS), b"{}")],
         "bad_kind"),
        ("unsupported-version", "Correctly sealed, but header version 3.", p.TO_AGENT,
         [_seal(ka, (p.MAGIC, 3, p.REQUEST, 0, 0, 0, 1, b"\x74" * 8, TIMESTAMP_MS), body)],
         "unsupported_version"),
        ("bad-chunk-index", "Correctly sealed, but chunk_index 3 of chunk_count 3.", p.TO_CONTROLLER,
         [_seal(kc, (p.MAGIC, v, p.REPLY, 0, 0, 3, 3, b"\x75" * 8, TIMESTAMP_MS), b"{}")], "bad_header"),
        ("zero-chunk-count", "Correctly sealed, but chunk_count 0.", p.TO_CONTROLLER,
         [_seal(kc, (p.MAGIC, v, p.REPLY, 0, 0, 0, 0, b"\x76" * 8, TIMESTAMP_MS), b"{}")], "bad_header"),
        ("unknown-flag", "Correctly sealed, but flags 0x02 (only 0x01 is defined).", p.TO_CONTROLLER,
         [_seal(kc, (p.MAGIC, v, p.REPLY, 0x02, 0, 0, 1, b"\x77" * 8, TIMESTAMP_MS), b"{}")], "bad_header"),
        ("mdp1-request", "An MDP/1 request (clear body, HMAC-SHA256 under HMAC(key, \"MDP/1 to-agent\")), signed "
         "with the right key: refused as unsupported_version, answered in MDP/1's format.", p.TO_AGENT, [legacy],
         "unsupported_version"),
        ("mdp1-wrong-key", "An MDP/1 request signed with another key: dropped like any forgery.", p.TO_AGENT,
         [p.encode_legacy(p.REQUEST, body, p.KeyPair(b"\x01" * 32), p.TO_AGENT, b"\x79" * 8, TIMESTAMP_MS)],
         "bad_signature"),
    ]


def _exponent(label):
    """A fixed 320-bit private exponent (top bit set, as kex.KeyAgreement makes them) from a label."""
    value = int.from_bytes(hashlib.sha512(label).digest()[:kex.PRIVATE_BITS // 8], "big")
    return value | (1 << (kex.PRIVATE_BITS - 1))


def _enrolment():
    """One whole enrolment (HELLO, WELCOME) from fixed exponents: every intermediate value recorded."""
    agent = kex.KeyAgreement(_exponent(b"MDP test vector agent exponent"))
    monitor = kex.KeyAgreement(_exponent(b"MDP test vector monitor exponent"))
    msg_id, identity = binascii.unhexlify("2122232425262728"), "192.0.2.20"
    hello = p.encode_hello(agent.public_bytes, msg_id, TIMESTAMP_MS)
    answer = p.answer_hello(agent.public_bytes, identity, msg_id, TIMESTAMP_MS + 5, agreement=monitor)
    assert p.open_welcome(answer.datagram, agent, msg_id).keys.key == answer.keys.key
    transcript = kex.transcript(identity.encode("ascii"), agent.public_bytes, monitor.public_bytes)
    return {"description": "Enrolment by ffdhe3072 key agreement (RFC 7919, g = 2): the agent's HELLO is "
            "its public value; the monitor's WELCOME is its public value, the address it saw (length byte, "
            "ASCII) and a key confirmation: the AES-GCM tag of an empty plaintext under the new key's "
            "to-agent message key for (kind 8, the HELLO's msg_id, the WELCOME's timestamp), with the "
            "WELCOME's other bytes as associated data. Exponents are fixed here; real ones are random.",
            "agent_private": "%x" % agent._private, "monitor_private": "%x" % monitor._private,
            "agent_public": _hex(agent.public_bytes), "monitor_public": _hex(monitor.public_bytes),
            "identity": identity, "msg_id": _hex(msg_id), "hello_timestamp_ms": TIMESTAMP_MS,
            "welcome_timestamp_ms": TIMESTAMP_MS + 5,
            "shared_secret": _hex(agent.shared_secret(monitor.public_bytes)),
            "transcript_sha256": _hex(hashlib.sha256(transcript).digest()),
            "machine_key": _hex(answer.keys.key), "fingerprint": answer.fingerprint,
            "hello": _hex(hello), "welcome": _hex(answer.datagram)}


def vectors():
    """{file name: file text} of every vector, in a fixed order."""
    key = binascii.unhexlify(KEY_HEX)
    keys = p.KeyPair(key)
    out = {}
    for number, (name, description, direction, kind, msg_id, obj, max_datagram, compress) in enumerate(POSITIVE):
        text = _text(obj)
        dkey = keys.for_direction(direction)
        datagrams = p.encode_message(kind, text.encode("utf-8"), dkey, binascii.unhexlify(msg_id), TIMESTAMP_MS,
                                     max_datagram, compress)
        message_key = dkey.message_key(kind, binascii.unhexlify(msg_id), TIMESTAMP_MS)
        vector = {"description": description, "key": KEY_HEX, "direction": DIRECTION_NAMES[direction],
                  "direction_key": _hex(dkey.key), "message_key": _hex(message_key), "kind": kind,
                  "kind_name": p.KIND_NAMES[kind], "msg_id": msg_id,
                  "timestamp_ms": TIMESTAMP_MS, "max_datagram": max_datagram, "compress": compress,
                  "payload_text": text, "datagrams": [_hex(d) for d in datagrams]}
        out[f"{number + 1:02d}-{name}.json"] = vector
    for number, (name, description, direction, datagrams, code) in enumerate(_negative(keys)):
        vector = {"description": description, "key": KEY_HEX, "direction": DIRECTION_NAMES[direction],
                  "direction_key": _hex(keys.for_direction(direction).key), "datagrams": [_hex(d) for d in datagrams],
                  "expected_error": code}
        out[f"bad-{number + 1:02d}-{name}.json"] = vector
    out["enrol-01-hello-welcome.json"] = _enrolment()
    return {name: json.dumps(v, indent=2, sort_keys=True, ensure_ascii=False) + "\n" for name, v in out.items()}


def main(argv):
    check = "--check" in argv
    wanted = vectors()
    stale = []
    for name, text in sorted(wanted.items()):
        path = os.path.join(HERE, name)
        try:
            with open(path, encoding="utf-8") as handle:
                current = handle.read()
        except OSError:
            current = None
        if current != text:
            stale.append(name)
            if not check:
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(text)
    extra = sorted(n for n in os.listdir(HERE) if n.endswith(".json") and n not in wanted)
    for name in extra:
        stale.append(name)
        if not check:
            os.unlink(os.path.join(HERE, name))
    if check and stale:
        sys.stderr.write("vectors out of date: {} (run tests/vectors/generate.py)\n".format(", ".join(stale)))
        return 1
    print(f"{len(wanted)} vectors " + ("checked" if check else f"written ({len(stale)} changed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
