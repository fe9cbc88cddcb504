"""Retransmission, deduplication and RESEND through a relay that loses, duplicates and reorders datagrams.

The controller talks to the relay's address (127.0.0.9), which holds the agent's key in the key store;
the relay forwards to the real agent on 127.0.0.2. Losses are seeded, so each run meets the same fate.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import os
import random
import socket

import pytest

from mdp_agent import protocol
from mdp_controller.client import Client
from mdp_controller.keystore import KeyStore

from .harness import receive_reply, signed_request, wait_for
from .lossy_relay import Impairment, LossyRelay

RELAY_IP = "127.0.0.9"


@pytest.fixture
def agent(spawn_agent):
    return spawn_agent("127.0.0.2").trust(as_ip=RELAY_IP)


def relay_for(agent, port, **kwargs):
    return LossyRelay((RELAY_IP, port), (agent.ip, port), **kwargs)


def test_a_lost_request_is_retransmitted_and_answered(agent, port):
    with relay_for(agent, port, up=Impairment(drop_indices=frozenset({0}))) as relay:
        reply = agent.request(["system.ping"], ip=RELAY_IP, timeout=15)
    assert reply["status"] is True
    assert relay.stats["up"].dropped == 1 and relay.stats["up"].seen == 2
    stats = agent.stats()
    assert (stats["requests"], stats["duplicates"]) == (2, 0)   # the relayed ping, then this agent.stats


def test_a_lost_reply_is_answered_again_without_running_again(agent, port):
    with relay_for(agent, port, down=Impairment(drop_indices=frozenset({0}))) as relay:
        reply = agent.request(["system.ping", "load.avg"], ip=RELAY_IP, timeout=15)
    assert reply["status"] is True
    assert relay.stats["up"].seen == 2   # the controller retransmitted
    stats = agent.stats()
    assert (stats["requests"], stats["duplicates"]) == (2, 1)   # the retransmission got the cached reply


def test_a_duplicated_request_runs_once(agent, port):
    # Every datagram towards the agent arrives twice; the copy lands while the operation is still running
    # (cpu.usage samples for 0.5 s on its first call) or after the reply was cached: either way, no rerun.
    operations = ["system.ping", {"name": "cpu.usage", "args": {"interval": 0.5}}]
    with relay_for(agent, port, up=Impairment(duplicate=1.0, max_delay_s=0.01)) as relay:
        reply = agent.request(operations, ip=RELAY_IP, timeout=15)
    assert reply["status"] is True
    assert relay.stats["up"].duplicated >= 1
    stats = agent.stats()
    assert stats["requests"] == 2 and stats["duplicates"] >= 1


def test_concurrent_requests_through_loss_duplication_and_reordering_each_run_once(agent, known_machines, port):
    impairment = Impairment(drop=0.1, duplicate=0.15, reorder=0.3)

    async def many(count):
        # A seeded client too, so its retransmission timers repeat from run to run; 50 s allows five tries
        # (at 0, ~2.5, ~7.5, ~17.5 and ~37.5 s), though nearly every request is done by the second.
        async with Client(KeyStore(known_machines), rng=random.Random(7)) as client:
            asks = [client.send_many([RELAY_IP], [{"name": "system.ping"}, "load.avg"], port=port, timeout=50)
                    for _ in range(count)]
            return [r[RELAY_IP] for r in await asyncio.gather(*asks)]

    with relay_for(agent, port, up=impairment, down=impairment, seed=7) as relay:
        replies = asyncio.run(many(10))
    assert all(r["status"] for r in replies), [r.get("error") for r in replies if not r["status"]]
    assert relay.stats["up"].dropped and relay.stats["down"].dropped and relay.stats["up"].duplicated
    assert agent.stats()["requests"] == 10 + 1   # each ran exactly once, whatever arrived twice


def test_a_one_mebibyte_result_survives_loss_via_resend(agent, port):
    # No operation returns a megabyte by itself, so subscriptions carrying long arguments make one:
    # report.subscribe answers with every subscription. Random hex barely compresses (~500 chunks).
    pads = [binascii.hexlify(os.urandom(16500)).decode() for _ in range(32)]
    subscriptions = [{"name": "service.status", "args": {"name": pad}} for pad in pads]
    request = {"name": "report.subscribe", "args": {"operations": subscriptions, "every": 3600}}
    impairment = Impairment(drop=0.03, duplicate=0.01, reorder=0.05)
    with relay_for(agent, port, up=impairment, down=impairment, seed=3) as relay:
        reply = agent.request([request], ip=RELAY_IP, timeout=40)
    assert reply["status"] is True, reply.get("error") or reply["operations"][0].get("error")
    result = reply["operations"][0]["result"]
    assert len(protocol.dump_json(result)) >= 1024 * 1024
    assert sorted(entry["operation"]["args"]["name"] for entry in result) == sorted(pads)
    up, down = relay.stats["up"], relay.stats["down"]
    assert up.dropped and down.dropped
    # Both sides asked for what they missed instead of starting over: the agent for request chunks,
    # the controller for reply chunks.
    assert down.kinds[protocol.RESEND] >= 1 and up.kinds[protocol.RESEND] >= 1
    assert agent.stats()["requests"] == 2


def test_a_request_replayed_from_another_port_neither_runs_again_nor_is_answered_there(agent, port):
    """A captured request replayed from a forged address must not be reflected at that address."""
    keys = protocol.KeyPair.from_text(agent.key_text)
    msg_id, datagrams = signed_request(keys, ["system.ping"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        first.sendto(datagrams[0], (agent.ip, port))
        receive_reply(first, keys, msg_id)
        other.sendto(datagrams[0], (agent.ip, port))   # same bytes from another port (a forged source)
        # A fresh request from the same socket is answered after the replay was handled: anything
        # the replay drew would have arrived first.
        fresh_id, fresh = signed_request(keys, ["system.ping"])
        other.sendto(fresh[0], (agent.ip, port))
        other.settimeout(5)
        data, _ = other.recvfrom(protocol.MAX_DATAGRAM)
        assert protocol.peek_msg_id(data) == fresh_id
        # The original sender still gets its retransmission answered.
        first.sendto(datagrams[0], (agent.ip, port))
        receive_reply(first, keys, msg_id)
    stats = agent.stats()
    assert (stats["requests"], stats["duplicates"], stats["dropped"]["foreign_duplicate"]) == (3, 1, 1)


def test_chunked_reports_reach_the_monitor_through_loss(spawn_agent, spawn_monitor, tmp_path, port):
    # The agent reports to the relay, which forwards to the monitor: the monitor sees the relay's address,
    # so that is where it keeps the agent's key. get_available_methods makes each report several chunks.
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    agent = spawn_agent("127.0.0.2", flags=["--monitor", f"{RELAY_IP}:{port}", "--interval", "1"])
    agent.trust(monitor_keys, as_ip=RELAY_IP)
    loss = Impairment(drop=0.2, reorder=0.2)
    with LossyRelay((RELAY_IP, port), (monitor.address.split(":")[0], port), up=loss, down=loss, seed=5) as relay:
        agent.result({"name": "report.subscribe", "args": {"operations": ["get_available_methods"], "every": 1}})
        wait_for(lambda: monitor.report_count(RELAY_IP, containing='"name":"get_available_methods"') >= 3,
                 "three chunked reports", timeout=20)
    assert relay.stats["up"].dropped and relay.stats["down"].kinds[protocol.RESEND] >= 1
    [row] = monitor.query("SELECT result FROM latest WHERE ip = ? AND name = 'get_available_methods'", RELAY_IP)
    assert "agent.stats" in {op["name"] for op in json.loads(row["result"])}
