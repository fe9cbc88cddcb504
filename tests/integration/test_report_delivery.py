"""Reports are delivered at least once and stored exactly once: real agents, a real monitor, real kills.

The monitor ACKs only what a committed transaction holds; the agent keeps every unacknowledged report
in its spool (memory and state dir) and sends it again with backoff; the database stores each msg_id
once. Killing the monitor, or the agent, loses nothing and duplicates nothing.
"""

from __future__ import annotations

import time

from .harness import wait_for


def _reporting_pair(spawn_agent, spawn_monitor, tmp_path):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    agent = spawn_agent("127.0.0.2", flags=["--monitor", monitor.address, "--interval", "1"])
    agent.trust(monitor_keys)
    wait_for(lambda: monitor.report_count(agent.ip) >= 3, "the first reports", timeout=20)
    return monitor, agent


def _stored(monitor, ip):
    [row] = monitor.query("SELECT COUNT(*) AS n, COUNT(DISTINCT msg_id) AS distinct_ids FROM reports WHERE ip = ?", ip)
    return row["n"], row["distinct_ids"]


def _stored_at_least(monitor, ip, count: float):
    """(stored, distinct) once at least `count` reports from ip are stored: the newest report may still
    be between the agent and the monitor's next commit (FLUSH_GAP_S). Fails after 10 s of fewer."""
    def enough():
        stored = _stored(monitor, ip)
        return stored if stored[0] >= count else None
    return wait_for(enough, f"at least {count:g} reports stored from {ip}", timeout=10)


def _outage(seconds: float):
    """The outage itself lasts a fixed time: that is the scenario, not a wait for a result."""
    start = time.monotonic()
    wait_for(lambda: time.monotonic() - start >= seconds, f"{seconds:g} s of outage", timeout=seconds + 5,
             interval=0.2)


def test_a_monitor_killed_for_10_s_loses_no_report_and_stores_none_twice(spawn_agent, spawn_monitor, tmp_path):
    monitor, agent = _reporting_pair(spawn_agent, spawn_monitor, tmp_path)
    monitor.kill()                      # SIGKILL: no flush, no goodbye
    _outage(10)
    spooled = agent.stats()["spooled_reports"]
    assert spooled >= 8, "reports made during the outage wait in the agent's spool"
    monitor.start()
    wait_for(lambda: agent.stats()["spooled_reports"] == 0, "the spool to drain", timeout=90, interval=0.5)
    generated = agent.stats()["reports"]
    stored, distinct = _stored_at_least(monitor, agent.ip, 0.99 * generated)
    print(f"monitor outage 10 s: {generated} reports generated, {stored} stored, {distinct} distinct, "
          f"{spooled} were spooled during the outage")
    assert stored == distinct, "no report stored twice"
    assert stored >= 0.99 * generated
    assert agent.stats()["spool_dropped"] == 0


def test_an_agent_killed_while_the_monitor_is_down_sends_its_spool_after_restart(spawn_agent, spawn_monitor,
                                                                                tmp_path):
    monitor, agent = _reporting_pair(spawn_agent, spawn_monitor, tmp_path)
    monitor.kill()
    _outage(5)
    before = agent.stats()["reports"]
    spool = agent.state_dir / "spool"
    assert len(list(spool.glob("*.json"))) >= 3, "unacknowledged reports are on disk, not only in memory"
    agent.kill()                        # SIGKILL too: the spool must already be on disk
    monitor.start()
    agent.start()
    wait_for(lambda: agent.stats()["spooled_reports"] == 0 and not list(spool.glob("*.json")),
             "the restarted agent to deliver the old spool", timeout=90, interval=0.5)
    generated = before + agent.stats()["reports"]
    stored, distinct = _stored_at_least(monitor, agent.ip, 0.99 * generated)
    print(f"agent restart during an outage: {generated} reports generated (at least), {stored} stored")
    assert stored == distinct
    assert stored >= 0.99 * generated


def test_a_database_that_refuses_writes_gets_no_acks_and_recovers_by_itself(spawn_agent, spawn_monitor,
                                                                             tmp_path):
    import sqlite3

    monitor, agent = _reporting_pair(spawn_agent, spawn_monitor, tmp_path)
    blocker = sqlite3.connect(str(monitor.db), timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")   # the database is locked, as a full disk would refuse it
    try:
        acked = agent.stats()["reports_acked"]
        wait_for(lambda: agent.stats()["spooled_reports"] >= 4, "reports to queue up unacknowledged", timeout=30)
        assert agent.stats()["reports_acked"] <= acked + 1   # at most one commit was already under way
    finally:
        blocker.rollback()
        blocker.close()
    wait_for(lambda: agent.stats()["spooled_reports"] == 0, "the monitor to recover and ACK", timeout=90,
             interval=0.5)
    stored, distinct = _stored_at_least(monitor, agent.ip, 0.99 * agent.stats()["reports"])
    assert stored == distinct
    assert "Traceback" not in monitor.log()


def test_a_request_stamped_before_the_agent_started_is_retried_fresh_without_the_user_noticing(
        spawn_agent, known_machines, port, tmp_path):
    """The client stamps and sends while the agent is down; the agent starts; the retransmission (stamped
    before the agent's start) is refused as `restarted`, and the client sends a fresh copy that runs."""
    import asyncio

    from mdp_controller.client import Client
    from mdp_controller.keystore import KeyStore

    agent = spawn_agent("127.0.0.2")
    agent.stop()   # its key stays trusted; it is down now

    async def ask_while_it_starts():
        async with Client(KeyStore(known_machines)) as client:
            asking = asyncio.create_task(client.send_many([agent.ip], ["system.ping"], port=port, timeout=20))
            await asyncio.sleep(0.3)   # the first copy is out (and lost: nobody listens)
            await asyncio.get_running_loop().run_in_executor(None, agent.start)
            return (await asking)[agent.ip]

    reply = asyncio.run(ask_while_it_starts())
    assert reply["status"] is True, reply
    assert agent.stats()["dropped"]["restarted"] >= 1


def test_cpu_and_process_sampling_never_hold_each_other_up(tmp_path):
    """A long first sample (cpu.usage interval 5) does not block a concurrent sample of either kind."""
    import threading

    from mdp_operations import cpu, process

    cpu._previous.update(key=None, stat=None, at=None)
    process._previous.update(key=None, ticks=None, procs=None)
    slow = threading.Thread(target=cpu.usage, kwargs={"interval": 5})
    slow.start()
    wait_for(lambda: cpu._lock.acquire(timeout=0.01) and (cpu._lock.release() or True), "the lock to be free")
    quick = process.top(n=3, by="cpu", interval=0.05)
    other = cpu.usage(interval=0.05)
    assert quick and other["seconds"] >= 0 and slow.is_alive()   # both answered while the slow one slept
    slow.join()
