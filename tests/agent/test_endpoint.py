"""The protocol's Endpoint, sans I/O: amplification, replays, RESEND chains, floods, restarts.

Two endpoints talk by handing each other the datagrams they queue, so every rule is checked on real
bytes without sockets. Runs under Python 3.6 too (stdlib + pytest + hypothesis).
"""

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mdp_agent import protocol as p

KEYS = p.KeyPair(bytes(bytearray(range(32))))
NOW_MS = 1767225600000
CONTROLLER = ("192.0.2.10", 40000)
VICTIM = ("198.51.100.7", 53)
AGENT_ADDR = ("192.0.2.20", 12345)


def agent_endpoint(**kwargs):
    return p.Endpoint(p.TO_AGENT, lambda ip, msg_id: KEYS, dedup={p.REQUEST: False}, answer_errors=True,
                      reassembly_bytes=p.AGENT_REASSEMBLY_BYTES_TOTAL, **kwargs)


def client_endpoint(pending):
    return p.Endpoint(p.TO_CONTROLLER, lambda ip, msg_id: KEYS if msg_id in pending else None)


def request(operations, msg_id=None, timestamp_ms=NOW_MS):
    return p.encode(p.REQUEST, p.make_request(operations), KEYS, p.TO_AGENT, msg_id, timestamp_ms)


def serve(agent, datagrams, addr, reply_obj=None, now=0.0):
    """Feed datagrams to the agent endpoint; answer a complete request with reply_obj. Returns what it queued."""
    for datagram in datagrams:
        for event in agent.feed(datagram, addr, NOW_MS, now):
            if isinstance(event, p.Message) and event.kind == p.REQUEST and reply_obj is not None:
                agent.send(event.addr, p.REPLY, reply_obj, KEYS, NOW_MS, now, event.msg_id)
    return agent.datagrams_to_send()


def big_reply(n=60):
    rows = [{"name": "op.%d" % i, "summary": os.urandom(12).hex()} for i in range(n)]
    return p.make_reply([{"name": "get_available_methods", "result": rows}])


def bytes_to(queued, addr):
    return sum(len(d) for a, d in queued if a == addr)


def test_a_small_reply_goes_straight_back():
    agent = agent_endpoint()
    msg_id, datagrams = request(["ping"])
    out = serve(agent, datagrams, CONTROLLER, p.make_reply([{"name": "ping", "result": "pong"}]))
    assert [a for a, _ in out] == [CONTROLLER]
    assert bytes_to(out, CONTROLLER) <= p.AMPLIFICATION_FACTOR * sum(len(d) for d in datagrams)


def test_a_big_reply_waits_behind_a_challenge_until_the_address_proves_itself():
    agent = agent_endpoint()
    msg_id, datagrams = request(["get_available_methods"])
    out = serve(agent, datagrams, CONTROLLER, big_reply())
    sent = sum(len(d) for d in datagrams)
    assert len(out) == 1 and bytes_to(out, CONTROLLER) <= p.AMPLIFICATION_FACTOR * sent
    assert p.open_datagram(out[0][1], KEYS, p.TO_CONTROLLER).kind == p.CHALLENGE
    # The controller answers the challenge (its own endpoint does it) and gets the whole reply.
    client = client_endpoint({msg_id})
    assert client.feed(out[0][1], AGENT_ADDR, NOW_MS, 0.0) == []
    [(to, resend)] = client.datagrams_to_send()
    assert to == AGENT_ADDR and p.open_datagram(resend, KEYS, p.TO_AGENT).kind == p.RESEND
    chunks = serve(agent, [resend], CONTROLLER)
    events = [e for _, d in chunks for e in client.feed(d, AGENT_ADDR, NOW_MS, 0.1)]
    [message] = [e for e in events if isinstance(e, p.Message)]
    assert message.obj["operations"][0]["name"] == "get_available_methods"


def test_a_replayed_request_is_answered_only_to_its_first_sender():
    agent = agent_endpoint()
    msg_id, datagrams = request(["ping"])
    serve(agent, datagrams, CONTROLLER, p.make_reply([{"name": "ping", "result": "pong"}]))
    for _ in range(20):
        assert serve(agent, datagrams, VICTIM) == []
    # The real sender's retransmission is answered, at most MAX_SENDS_PER_DATAGRAM times in all.
    answered = sum(len(serve(agent, datagrams, CONTROLLER)) for _ in range(10))
    assert answered == p.MAX_SENDS_PER_DATAGRAM - 1


def test_a_replay_that_beats_the_original_to_the_agent_gets_at_most_three_times_its_bytes():
    agent = agent_endpoint()
    msg_id, datagrams = request(["get_available_methods"])
    received = 0
    sent = 0
    for _ in range(30):   # the attacker's copy arrives first, then again and again
        out = serve(agent, datagrams, VICTIM, big_reply())
        sent += sum(len(d) for d in datagrams)
        received += bytes_to(out, VICTIM)
    assert received <= p.AMPLIFICATION_FACTOR * sent
    # And however often it is replayed, each datagram of the reply goes out a bounded number of times.
    reply_bytes = sum(len(d) for d in agent.outbox.get(msg_id))
    assert received <= p.MAX_SENDS_PER_DATAGRAM * reply_bytes + 30 * 200   # plus the challenges


def test_a_captured_resend_replayed_from_elsewhere_or_again_draws_nothing():
    agent = agent_endpoint()
    msg_id, datagrams = request(["get_available_methods"])
    [(_, challenge)] = serve(agent, datagrams, CONTROLLER, big_reply())
    client = client_endpoint({msg_id})
    client.feed(challenge, AGENT_ADDR, NOW_MS, 0.0)
    [(_, resend)] = client.datagrams_to_send()
    assert serve(agent, [resend], VICTIM) == []               # replayed from the victim's address
    first = serve(agent, [resend], CONTROLLER)
    assert first and serve(agent, [resend], CONTROLLER) == []  # the same RESEND again: answered once


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["request", "resend", "stale", "garbage"]), min_size=1, max_size=60),
       st.integers(0, 2 ** 32))
def test_whatever_is_replayed_from_a_forged_address_it_gets_at_most_three_times_the_bytes(plan, seed):
    """Captured traffic of a real exchange (requests, the controller's RESENDs, stale requests), replayed
    from a forged address in any order and number: the address receives at most 3x what it sent."""
    rng = random.Random(seed)
    agent = agent_endpoint()
    msg_id, datagrams = request(["get_available_methods"])
    [(_, challenge)] = serve(agent, datagrams, CONTROLLER, big_reply())
    client = client_endpoint({msg_id})
    client.feed(challenge, AGENT_ADDR, NOW_MS, 0.0)
    [(_, resend)] = client.datagrams_to_send()
    serve(agent, [resend], CONTROLLER)
    _, stale = request(["ping"], timestamp_ms=NOW_MS - 3600 * 1000)
    captured = {"request": datagrams, "resend": [resend], "stale": stale,
                "garbage": [bytes(rng.getrandbits(8) for _ in range(80))]}
    sent = received = 0
    for step, item in enumerate(plan):
        for datagram in captured[item]:
            sent += len(datagram)
            out = []
            for event in agent.feed(datagram, VICTIM, NOW_MS, 1.0 + step * 0.01):
                assert not isinstance(event, p.Message) or event.msg_id != msg_id
            out = agent.datagrams_to_send()
            received += bytes_to(out, VICTIM)
    assert received <= p.AMPLIFICATION_FACTOR * sent


def test_error_replies_to_a_replayed_stale_request_are_rate_limited_and_within_budget():
    agent = agent_endpoint()
    _, stale = request(["ping"], timestamp_ms=NOW_MS - 3600 * 1000)
    replies = [serve(agent, stale, VICTIM, now=i * 0.01) for i in range(200)]   # 200 in 2 s
    answered = [r for r in replies if r]
    assert 1 <= len(answered) <= p.ERROR_REPLY_BURST + 2
    assert sum(bytes_to(r, VICTIM) for r in replies) <= p.AMPLIFICATION_FACTOR * 200 * len(stale[0])


def test_an_error_reply_is_shortened_to_fit_rather_than_sent_over_budget():
    agent = agent_endpoint()
    head = p.HEADER.pack(p.MAGIC, p.PROTOCOL_VERSION, p.REQUEST, 0, 0, 0, 1, b"notjson!", NOW_MS)
    body = b"\xff" * 17   # a 59-byte request: three times that holds a shortened refusal, not the full one
    datagram = p.seal_datagram(KEYS.to_agent, head, body)
    out = serve(agent, [datagram], CONTROLLER)
    [(_, reply)] = out
    assert len(reply) <= p.AMPLIFICATION_FACTOR * len(datagram)
    packet = p.open_datagram(reply, KEYS, p.TO_CONTROLLER)
    assert p.decode_body(packet.flags, packet.body)["error"]["code"] == "bad_payload"


def test_requests_stamped_before_the_agent_started_are_refused_retryably():
    agent = agent_endpoint(not_before_ms=NOW_MS)
    msg_id, datagrams = request(["report.subscribe"], timestamp_ms=NOW_MS - 1000)
    events = []
    for d in datagrams:
        events.extend(agent.feed(d, CONTROLLER, NOW_MS, 0.0))
    assert [e.code for e in events] == ["restarted"]
    [(_, reply)] = agent.datagrams_to_send()
    packet = p.open_datagram(reply, KEYS, p.TO_CONTROLLER)
    error = p.decode_body(packet.flags, packet.body)["error"]
    assert (error["code"], error["retry"]) == ("restarted", True)


def test_unsupported_version_is_answered_but_not_cached():
    agent = agent_endpoint()
    head = p.HEADER.pack(p.MAGIC, 9, p.REQUEST, 0, 0, 0, 1, b"version9", NOW_MS)
    body = b'{"operations":["ping"]}'
    datagram = p.seal_datagram(KEYS.to_agent, head, body)
    out = serve(agent, [datagram], CONTROLLER)
    assert len(out) == 1 and len(agent.outbox) == 0


def test_impossible_chunk_counts_are_refused_before_reassembly():
    agent = agent_endpoint()
    refused = []
    # Empty full chunks; full chunks smaller than the smallest datagram allows; more chunks than a
    # 4 MiB message needs at this chunk's size; more than it needs at any size.
    for count, body in ((65535, b""), (3000, b"x" * 58), (3700, b"x" * 1142), (p.MAX_USEFUL_CHUNKS + 1, b"x" * 1142)):
        head = p.HEADER.pack(p.MAGIC, p.PROTOCOL_VERSION, p.REQUEST, 0, 0, 0, count, os.urandom(8), NOW_MS)
        events = agent.feed(p.seal_datagram(KEYS.to_agent, head, body), CONTROLLER, NOW_MS, 0.0)
        refused.extend(e.code for e in events)
    assert refused == ["bad_header"] * 4 and agent.reassembler.pending() == 0


def test_a_key_holders_flood_of_partials_stays_within_the_agents_reassembly_bound():
    agent = agent_endpoint()
    for n in range(2000):   # full-size first chunks of 3,600-chunk messages, from 40 ports of 50 hosts
        addr = ("10.9.%d.%d" % (n % 50, 1), 30000 + n % 40)
        head = p.HEADER.pack(p.MAGIC, p.PROTOCOL_VERSION, p.REQUEST, 0, 0, 0, 3600, os.urandom(8), NOW_MS)
        body = b"y" * (p.DEFAULT_MAX_DATAGRAM - p.OVERHEAD)
        agent.feed(p.seal_datagram(KEYS.to_agent, head, body), addr, NOW_MS, 0.0)
    assert agent.reassembler.total <= p.AGENT_REASSEMBLY_BYTES_TOTAL
    assert agent.reassembler.pending() <= 50 * p.REASSEMBLY_MESSAGES_PER_PEER   # per IP, not per port
    # Asking for what is missing builds only what one RESEND carries, for every partial.
    agent.tick(NOW_MS, 1.0)
    out = agent.datagrams_to_send()
    assert out and all(len(d) <= p.DEFAULT_MAX_DATAGRAM for _, d in out)


def test_a_chunk_of_a_message_already_seen_never_reaches_reassembly():
    collector = p.Endpoint(p.TO_CONTROLLER, lambda ip, msg_id: KEYS, dedup={p.REPORT: True})
    payload = p.dump_json(big_reply(200))
    msg_id = p.new_msg_id()
    datagrams = p.encode_message(p.REPORT, payload, KEYS.to_controller, msg_id, NOW_MS, 300, compress=False)
    events = [e for d in datagrams for e in collector.feed(d, AGENT_ADDR, NOW_MS, 0.0)]
    assert [type(e) for e in events] == [p.Message]
    replayed = [e for d in datagrams[:5] for e in collector.feed(d, AGENT_ADDR, NOW_MS, 0.1)]
    assert all(isinstance(e, p.Duplicate) for e in replayed) and collector.reassembler.pending() == 0


def test_key_fingerprints_are_short_stable_and_compared_forgivingly():
    fingerprint = p.key_fingerprint(KEYS.key)
    assert len(fingerprint) == 19 and fingerprint.count("-") == 3 and fingerprint == p.key_fingerprint(KEYS.key)
    assert p.key_fingerprint(b"\x01" * 32) != fingerprint
    assert p.same_fingerprint(fingerprint.lower().replace("-", ""), fingerprint)
    assert not p.same_fingerprint(fingerprint[:-1] + "A" if fingerprint[-1] != "A" else "B", fingerprint)
