"""`mdp status` beside a monitor that serves HTTP: readable durations, the page's address, --since, --watch."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

from integration.harness import MDP, PYTHON, mdp_env, run_mdp, wait_for


def test_status_shows_the_page_history_and_redraws(fleet_on_loopback):
    monitor = fleet_on_loopback.monitor()
    agent = fleet_on_loopback.agent("127.0.0.2", monitor)
    wait_for(lambda: monitor.report_count(agent.ip) >= 3, "three reports", timeout=30)

    table = run_mdp("status", "--db", monitor.db, "--known-machines", monitor.known_machines)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].split()[:2] == ["127.0.0.2", "up"] and re.search(r" \d+[smhd] ago ", lines[1]), lines[1]
    assert re.search(r"  up \d+[smhd]( \d+[hm])?$", lines[1]), lines[1]   # "up 42m" or "up 3d 4h", not "up 0.0d"
    assert lines[-1] == f"page: http://{monitor.http}/  (metrics: http://{monitor.http}/metrics)"

    since = run_mdp("status", "--db", monitor.db, "--since", "10m", agent.ip)
    assert since.returncode == 0, since.stderr
    head, *rows = since.stdout.splitlines()
    assert head.startswith(f"{agent.ip}: ") and head.endswith("report(s) in the last 10m") and len(rows) >= 3
    assert all(" ok " in row and "load " in row for row in rows)
    as_json = json.loads(run_mdp("status", "--db", monitor.db, "--since", "10m", "--json").stdout)
    assert list(as_json) == [agent.ip] and as_json[agent.ip][0]["report"]["operations"]

    argv = [MDP] if MDP else [PYTHON, "-m", "mdp_controller.cli"]
    watch = subprocess.Popen(argv + ["status", "--db", str(monitor.db), "--watch", "0.2"], stdout=subprocess.PIPE,
                             text=True, env=mdp_env())
    try:
        seen = []
        deadline = time.monotonic() + 20
        while sum(1 for line in seen if line.startswith("every 0.2s")) < 2 and time.monotonic() < deadline:
            seen.append(watch.stdout.readline())
        assert sum(1 for line in seen if line.startswith("every 0.2s")) == 2, seen
        assert any(line.startswith("127.0.0.2") for line in seen)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(30) == 0   # a deadline, generous for a loaded 2-core machine
    finally:
        watch.kill()

    monitor.stop()
    after = run_mdp("status", "--db", monitor.db)
    assert "page:" not in after.stdout   # the monitor is gone, so is its page


def test_a_running_monitor_prunes_reports_past_its_retention_and_keeps_collecting(fleet_on_loopback):
    """--retention 3s: the pruner on the monitor's loop (first pass at start, then every IDLE_PAUSE_S = 30 s)."""
    from mdp_controller.retention import IDLE_PAUSE_S

    from .conftest import http_get

    monitor = fleet_on_loopback.monitor(flags=["--retention", "3s"])
    agent = fleet_on_loopback.agent("127.0.0.3", monitor)
    wait_for(lambda: monitor.report_count(agent.ip) >= 5, "five reports", timeout=30)

    def pruned() -> float:
        for line in http_get(f"http://{monitor.http}/metrics")[2].decode().splitlines():
            if line.startswith("mdp_monitor_reports_pruned_total "):
                return float(line.split()[1])
        return 0.0

    wait_for(lambda: pruned() > 0, "the first pruning pass", timeout=IDLE_PAUSE_S + 30, interval=0.5)
    oldest = monitor.query("SELECT MIN(received_at) FROM reports")[0][0]
    assert oldest > time.time() - 3 - IDLE_PAUSE_S - 5
    rows = monitor.query("SELECT reports FROM machines WHERE ip = ?", agent.ip)[0][0]
    assert rows > monitor.report_count(agent.ip)   # history pruned, the machine and its count kept
    since = time.time()
    wait_for(lambda: monitor.report_count(agent.ip, since=since) >= 2, "reports after pruning", timeout=30)
