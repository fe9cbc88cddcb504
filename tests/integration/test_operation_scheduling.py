"""How one agent schedules operations: results in request order, slow ones off the loop, a per-operation timeout."""

from __future__ import annotations

import asyncio

from mdp_controller.client import Client
from mdp_controller.keystore import KeyStore

from .harness import wait_for, write_config

SLOW = {"name": "cpu.usage", "args": {"interval": 5}}   # the first call in a process samples for `interval` s


def test_results_come_in_request_order_and_a_slow_one_times_out_alone(spawn_agent, tmp_path):
    config = write_config(tmp_path / "agent.conf", operation_timeout=1)
    agent = spawn_agent("127.0.0.2", config=config)
    operations = [SLOW, "system.ping", "no.such_operation", {"name": "process.top", "args": {"n": 3}},
                  "load.avg", "get_machine_memory"]
    reply = agent.request(operations, timeout=10)
    results = reply["operations"]
    assert [r["name"] for r in results] == ["cpu.usage", "system.ping", "no.such_operation", "process.top",
                                            "load.avg", "get_machine_memory"]
    assert results[0]["error"] == {"code": "timeout", "message": "cpu.usage did not finish within 1 s"}
    assert results[1]["result"]["reply"] == "pong"
    assert results[2]["error"]["code"] == "unknown_operation"
    assert len(results[3]["result"]) == 3
    assert "load1" in results[4]["result"]
    assert results[5]["result"]["total"] > 0   # a legacy alias answers under the name it was asked by
    assert reply["status"] is False


def test_a_slow_operation_never_blocks_pings(spawn_agent, known_machines, port):
    agent = spawn_agent("127.0.0.2")

    async def race():
        async with Client(KeyStore(known_machines)) as client:
            async def ask(*operations):
                return (await client.send_many([agent.ip], list(operations), port=port, timeout=10))[agent.ip]

            slow = asyncio.create_task(ask(SLOW))
            for _ in range(200):   # until the agent says the slow operation is running on its pool
                stats = (await ask("agent.stats"))["operations"][0]["result"]
                if stats["pending_operations"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert stats["pending_operations"] == 1, stats
            pings = [await ask("system.ping", "ping") for _ in range(5)]
            # Still running at the agent after every ping was answered (asked of the agent, not a clock).
            after = (await ask("agent.stats"))["operations"][0]["result"]
            still_running = after["pending_operations"] == 1 and not slow.done()
            return pings, still_running, await slow

    pings, still_running, slow_reply = asyncio.run(race())
    assert all(p["status"] and p["operations"][0]["result"]["reply"] == "pong" for p in pings)
    assert still_running   # every ping was answered while the slow operation was still working
    assert slow_reply["status"] is True and slow_reply["operations"][0]["result"]["seconds"] > 0
    wait_for(lambda: agent.stats()["pending_operations"] == 0, "the pool to drain")
