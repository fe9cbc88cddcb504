"""Coverage-guided fuzzing (atheris, libFuzzer) of the receive path: protocol.Endpoint and the request parser.

    .venv/bin/python tests/fuzz/fuzz_receiver.py -max_total_time=600 tests/fuzz/corpus   # by hand, longer
    (make test runs it for a short bounded time through tests/fuzz/test_fuzz.py)

Each input is one or more datagrams. The first byte picks what to do with the rest:
  0  feed it as is to an agent's Endpoint (a stranger's datagram: must be refused cheaply);
  1  seal it with the agent's key first (header fields from the input), so the mutations reach the
     reassembler, the decompressor, the JSON parser and the request parser behind the tag;
  2  the same towards a collector's Endpoint (reports, HELLOs);
  3  parse it as a request payload (parse_text, parse_request, parse_operation);
  4  the enrolment parsers: parse_hello (the collector's), open_welcome (the agent's).
After every input the invariants hold: only ProtocolError escapes, reassembly stays within its bound,
and no address was sent more than AMPLIFICATION_FACTOR times what it sent.
"""

import os
import struct
import sys

import atheris

with atheris.instrument_imports():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "agent_src"))
    from mdp_agent import kex
    from mdp_agent import protocol as p

KEYS = p.KeyPair(bytes(range(32)))
AGREEMENT = kex.KeyAgreement(int.from_bytes(bytes(range(1, 41)), "big"))
NOW_MS = 1767225600000
ADDRS = [("192.0.2.%d" % i, 40000 + i) for i in range(1, 5)]


def new_endpoints():
    agent = p.Endpoint(p.TO_AGENT, lambda ip, msg_id: KEYS, dedup={p.REQUEST: False}, answer_errors=True,
                       reassembly_bytes=p.AGENT_REASSEMBLY_BYTES_TOTAL)
    collector = p.Endpoint(p.TO_CONTROLLER, lambda ip, msg_id: KEYS, dedup={p.REPORT: True})
    return agent, collector


AGENT, COLLECTOR = new_endpoints()
RECEIVED = {}
SENT = {}


def signed(data, direction):
    """A datagram sealed with KEYS whose header fields come from the first 12 input bytes."""
    head = (data + bytes(12))[:12]
    kind, flags, index, count = head[0] % 8, head[1] % 4, struct.unpack("!H", head[2:4])[0], \
        struct.unpack("!H", head[4:6])[0]
    msg_id = head[6:12] + b"id"
    header = p.HEADER.pack(p.MAGIC, p.PROTOCOL_VERSION, kind, flags, 0, index % 8, count % 9, msg_id, NOW_MS)
    body = data[12:]
    return p.seal_datagram(KEYS.for_direction(direction), header, body)


def feed(endpoint, datagram, addr, now):
    RECEIVED[addr] = RECEIVED.get(addr, 0) + len(datagram)
    events = endpoint.feed(datagram, addr, NOW_MS, now)
    for event in events:
        assert isinstance(event, (p.Message, p.Duplicate, p.Refusal))
        if isinstance(event, p.Message) and event.kind == p.REQUEST:
            try:
                operations, _ = p.parse_request(event.obj)
            except p.ProtocolError:
                continue
            endpoint.send(addr, p.REPLY, p.make_reply([{"name": "x", "result": operations[:3]}]), KEYS, NOW_MS,
                          now, event.msg_id)
    for to, out in endpoint.datagrams_to_send():
        SENT[to] = SENT.get(to, 0) + len(out)


def test_one(data):
    if len(data) < 2:
        return
    mode, rest = data[0] % 5, data[1:]
    parts = rest.split(b"\x00MDSPLIT\x00")[:16]
    for n, part in enumerate(parts):
        addr = ADDRS[(data[1] + n) % len(ADDRS)]
        now = 1.0 + n * 0.05
        if mode == 0:
            feed(AGENT, part, addr, now)
        elif mode == 1:
            feed(AGENT, signed(part, p.TO_AGENT), addr, now)
        elif mode == 2:
            feed(COLLECTOR, signed(part, p.TO_CONTROLLER), addr, now)
        elif mode == 4:
            assert p.parse_hello(part) in (None, (part[10:18], part[26:]))
            try:
                p.open_welcome(part, AGREEMENT, part[10:18])
            except p.ProtocolError:
                pass
        else:
            try:
                obj = p.parse_text(part.decode("utf-8", "replace"))
                operations, _ = p.parse_request(obj)
                for item in operations[:8]:
                    try:
                        p.parse_operation(item)
                    except ValueError:
                        pass
            except p.ProtocolError:
                pass
    AGENT.tick(NOW_MS, 2.0)
    for to, out in AGENT.datagrams_to_send():
        SENT[to] = SENT.get(to, 0) + len(out)
    assert AGENT.reassembler.total <= p.AGENT_REASSEMBLY_BYTES_TOTAL
    assert COLLECTOR.reassembler.total <= p.REASSEMBLY_BYTES_TOTAL
    for addr, total in SENT.items():
        assert total <= p.AMPLIFICATION_FACTOR * RECEIVED.get(addr, 0), (addr, total, RECEIVED.get(addr))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
