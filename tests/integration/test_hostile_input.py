"""Datagrams an agent must refuse: each is counted by reason in agent.stats, none stops it answering,
and a flood of them does not grow its memory."""

from __future__ import annotations

import os
import random
import socket
import time

from mdp_agent import protocol

from .harness import raw_datagram, receive_reply, signed_request, wait_for, write_config

REPLAY_WINDOW_S = 1   # short, so a captured request becomes a stale replay within the test


def test_bad_datagrams_are_counted_by_reason_and_the_agent_keeps_answering(spawn_agent, tmp_path, port):
    agent = spawn_agent("127.0.0.2", config=write_config(tmp_path / "agent.conf", replay_window=REPLAY_WINDOW_S))
    keys = protocol.KeyPair.from_text(agent.key_text)
    stranger = protocol.KeyPair(os.urandom(32))
    rng = random.Random(5)
    _, valid = signed_request(keys, ["system.ping"])
    expected = {
        "bad_magic": [bytes(rng.getrandbits(8) for _ in range(rng.randrange(58, 1400))).replace(b"M", b"m")
                      for _ in range(5)] + [b"X" * protocol.MAX_DATAGRAM],
        "truncated": [b"", valid[0][:40], b"MD"],
        "bad_signature": [
            raw_datagram(keys, sign=False),                                   # unsigned
            signed_request(stranger, ["system.ping"])[1][0],                  # signed with another key
            valid[0][:-1] + bytes([valid[0][-1] ^ 1]),                        # damaged MAC
            valid[0][:30] + b"X" + valid[0][31:],                             # damaged body
            b"MD" + os.urandom(protocol.MAX_DATAGRAM - 2),                    # oversized: 65507 bytes
        ],
        "bad_kind": [raw_datagram(keys, kind=protocol.REPLY)],               # a controller-bound kind
        "bad_header": [raw_datagram(keys, count=0), raw_datagram(keys, index=3, count=2)],
    }
    sent = sum(len(v) for v in expected.values())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flood(sock, agent, port, [d for datagrams in expected.values() for d in datagrams], batch=1)
        # Signed, whole, but not a request the agent can read: refused with a signed answer.
        not_json = raw_datagram(keys, body=b"\xff not json", msg_id=b"notjson!")
        sock.sendto(not_json, (agent.ip, port))
        assert receive_reply(sock, keys, b"notjson!")["error"]["code"] == "bad_payload"
        not_a_list = raw_datagram(keys, body=b'{"operations": "ping"}', msg_id=b"notalist")
        sock.sendto(not_a_list, (agent.ip, port))
        refusal = receive_reply(sock, keys, b"notalist")["error"]
        assert refusal == {"code": "bad_request", "message": '"operations" must be a list'}

        # A replay within the window gets the cached reply (byte for byte) and runs nothing again ...
        msg_id, request = signed_request(keys, ["system.ping"])
        sock.sendto(request[0], (agent.ip, port))
        first = receive_reply(sock, keys, msg_id)
        sock.sendto(request[0], (agent.ip, port))
        assert receive_reply(sock, keys, msg_id) == first
        # ... and once it is older than the window it is refused as clock skew.
        sent_at = time.time()
        wait_for(lambda: time.time() - sent_at > REPLAY_WINDOW_S + 0.1, "the request to age past the window")
        sock.sendto(request[0], (agent.ip, port))
        assert receive_reply(sock, keys, msg_id)["error"]["code"] == "clock_skew"

    stats = agent.stats()
    assert stats["received"] == sent + 5 + 1   # + not_json, not_a_list, request, replay, stale replay, agent.stats
    dropped = stats["dropped"]
    for reason, datagrams in expected.items():
        assert dropped.get(reason) == len(datagrams), (reason, dropped)
    assert dropped["bad_payload"] == 1 and dropped["bad_request"] == 1 and dropped["clock_skew"] == 1
    assert "internal_error" not in dropped
    assert (stats["requests"], stats["duplicates"]) == (2, 1)   # the ping once, then agent.stats
    assert agent.result("system.ping")["reply"] == "pong"


def garbage(rng, keys, count):
    """A mix of junk: random bytes, MD-prefixed junk, oversized datagrams, and signed chunks of
    messages that never complete (they must not pile up in the reassembler)."""
    for i in range(count):
        roll = rng.random()
        if i % 100 == 0:
            yield b"MD" + os.urandom(protocol.MAX_DATAGRAM - 2)
        elif roll < 0.1:
            yield raw_datagram(keys, body=os.urandom(rng.randrange(1, 1100)), count=50, index=rng.randrange(50))
        elif roll < 0.4:
            yield b"MD" + os.urandom(rng.randrange(0, 1400))
        else:
            yield os.urandom(rng.randrange(0, 1400))


def socket_queue(ip, port):
    """(bytes waiting in the receive queue, datagrams the kernel dropped) of the UDP socket on ip:port.

    None when the line is missing: /proc/net/udp is read page by page, and other sockets coming and
    going meanwhile (the benchmarks open thousands) can make one line slip between pages.
    """
    local = f"{bytes(reversed(socket.inet_aton(ip))).hex().upper()}:{port:04X}"   # host byte order
    with open("/proc/net/udp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local:
                return int(fields[4].split(":")[1], 16), int(fields[-1])
    return None


def drained(ip, port):
    queue = socket_queue(ip, port)
    return queue is not None and queue[0] == 0


def flood(sock, agent, port, datagrams, batch=40):
    """Send in batches that fit the agent's default socket buffer, each time waiting until it has read
    them all, so nothing is lost in the kernel. No requests meanwhile: their cached replies are memory too."""
    sent = 0
    for datagram in datagrams:
        sock.sendto(datagram, (agent.ip, port))
        sent += 1
        if sent % batch == 0:
            wait_for(lambda: drained(agent.ip, port), "the agent to read a batch", interval=0.001)
    wait_for(lambda: drained(agent.ip, port), "the agent to read the last batch", interval=0.001)
    return sent


def test_rss_stays_flat_under_20000_garbage_datagrams(spawn_agent, port):
    agent = spawn_agent("127.0.0.2")
    keys = protocol.KeyPair.from_text(agent.key_text)
    rng = random.Random(11)
    base = agent.stats()["received"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:   # one peer, as far as the agent knows
        warmup = flood(sock, agent, port, garbage(rng, keys, 2000))   # warm the allocator and code paths
        before = agent.rss_kib()
        sent = flood(sock, agent, port, garbage(rng, keys, 20000))
        after = agent.rss_kib()
    assert wait_for(lambda: socket_queue(agent.ip, port), "the socket's line")[1] == 0   # no kernel drops
    stats = agent.stats()
    assert stats["received"] == base + warmup + sent + 1
    refused = sum(stats["dropped"].values())
    assert refused >= 0.85 * (warmup + sent)   # all but the signed chunks of never-completed messages
    assert "internal_error" not in stats["dropped"]
    assert stats["partial_messages"] <= protocol.REASSEMBLY_MESSAGES_PER_PEER
    print(f"agent RSS {before} KiB -> {after} KiB after {sent} garbage datagrams ({refused} refused)")
    assert after - before < 3 * 1024, (before, after)
    assert agent.result("system.ping")["reply"] == "pong"
