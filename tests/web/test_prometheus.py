"""A real Prometheus (Debian's) scraping real monitors fed by real agents on 127.0.0.x.

- mdp_machine_up through PromQL: 1 for three reporting machines, 0 for one after its agent stops;
- `promtool check metrics` on a live /metrics;
- every PromQL expression of the Grafana dashboards in dashboards/ evaluates without error, and
  returns data (every family they use exists in this setup);
- two monitors, each owning part of the fleet, and one Prometheus that sees the union;
- a monitor on a non-loopback address refuses to start without a token, and /metrics needs it.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess

import pytest
from integration.harness import REPO, run_mdp, wait_for

from .conftest import ensure_debian_package, http_get

pytestmark = [pytest.mark.web, pytest.mark.slow]

DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))


def up_by_machine(prometheus) -> dict[str, float]:
    return {r["metric"]["machine"]: float(r["value"][1]) for r in prometheus.query("mdp_machine_up")}


def dashboard_expressions() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every target of every panel."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


def grafana_to_promql(expr: str, machine: str) -> str:
    """Grafana's variables as Grafana would fill them in for one machine and a 1 s scrape interval."""
    return expr.replace("$machine", machine).replace("$__rate_interval", "15s").replace("$__interval", "1s")


def test_prometheus_sees_three_machines_up_and_a_stopped_one_go_down(fleet_on_loopback, prometheus):
    monitor = fleet_on_loopback.monitor()
    agents = [fleet_on_loopback.agent(ip, monitor) for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")]
    server = prometheus([monitor.http])
    ips = {a.ip for a in agents}
    wait_for(lambda: set(r["metric"]["machine"] for r in server.query("mdp_machine_up == 1")) == ips,
             "PromQL mdp_machine_up == 1 for the three machines", timeout=60, interval=0.5)

    # The live exposition passes Prometheus's own linter.
    status, headers, body = http_get(f"http://{monitor.http}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    promtool = ensure_debian_package("prometheus", "promtool")
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked
    for name in ("mdp_load1", "mdp_memory_available_bytes", "mdp_filesystem_size_bytes",
                 "mdp_network_receive_bytes_total", "mdp_cpu_usage_ratio", "mdp_processes",
                 "mdp_monitor_reports_stored_total", "mdp_monitor_write_queue_reports"):
        assert server.query(name), f"{name} is missing from Prometheus"

    stopped = agents[1]
    stopped.stop()
    wait_for(lambda: up_by_machine(server).get(stopped.ip) == 0.0, f"mdp_machine_up{{machine={stopped.ip!r}}} == 0",
             timeout=60, interval=0.5)
    up = up_by_machine(server)
    assert up == {"127.0.0.2": 1.0, "127.0.0.3": 0.0, "127.0.0.4": 1.0}
    assert {r["metric"]["machine"] for r in server.query("mdp_machine_up == 1")} == ips - {stopped.ip}


def test_every_dashboard_expression_evaluates_against_prometheus(fleet_on_loopback, prometheus):
    assert [p.name for p in DASHBOARDS] == ["mdp-fleet-overview.json", "mdp-machine.json"]
    monitor = fleet_on_loopback.monitor()
    agent = fleet_on_loopback.agent("127.0.0.5", monitor)
    server = prometheus([monitor.http])
    # A datagram from an address the monitor does not know, so the refusals panel has a reason to show.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.9", 0))
        stranger.sendto(b"not a report", ("127.0.0.1", monitor.port))
    expressions = dashboard_expressions()
    assert len(expressions) >= 20 and all("$datasource" not in e for _, _, e in expressions)
    # rate() needs a few scrapes; every family these use exists here, so each must return data.
    for board, title, expr in expressions:
        promql = grafana_to_promql(expr, agent.ip)
        assert not re.search(r"\$\w+", promql), f"{board} / {title}: unknown variable in {expr!r}"
        wait_for(lambda promql=promql: server.query(promql), f"{board} / {title}: {promql!r} to return data",
                 timeout=60, interval=0.5)


def test_two_monitors_each_own_part_of_the_fleet_and_prometheus_sees_the_union(fleet_on_loopback, prometheus):
    first, second = fleet_on_loopback.monitor("monitor-a"), fleet_on_loopback.monitor("monitor-b")
    for ip in ("127.0.0.2", "127.0.0.3"):
        fleet_on_loopback.agent(ip, first)
    for ip in ("127.0.0.4", "127.0.0.5"):
        fleet_on_loopback.agent(ip, second)
    server = prometheus([first.http, second.http])

    def owners():
        return {r["metric"]["machine"]: r["metric"]["instance"] for r in server.query("mdp_machine_up == 1")}

    wait_for(lambda: len(owners()) == 4, "all four machines up across the two monitors", timeout=60, interval=0.5)
    assert owners() == {"127.0.0.2": first.http, "127.0.0.3": first.http,
                        "127.0.0.4": second.http, "127.0.0.5": second.http}
    assert server.query("sum(mdp_machine_up)")[0]["value"][1] == "4"
    per_monitor = {r["metric"]["instance"]: r["value"][1] for r in server.query("mdp_monitor_machines")}
    assert per_monitor == {first.http: "2", second.http: "2"}


def test_a_token_guards_a_non_loopback_address_and_prometheus_sends_it(fleet_on_loopback, prometheus, tmp_path):
    refused = run_mdp("monitor", "--listen", "127.0.0.1:1", "--db", tmp_path / "x.db", "--http", "0.0.0.0:1")
    assert refused.returncode == 2 and "not a loopback address" in refused.stderr and "--http-token-file" in refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-for-the-test-0123456789\n")
    token_file.chmod(0o644)
    loose = run_mdp("monitor", "--db", tmp_path / "x.db", "--http", "0.0.0.0:1", "--http-token-file", token_file)
    assert loose.returncode == 2 and "readable by others" in loose.stderr
    token_file.chmod(0o600)

    monitor = fleet_on_loopback.monitor(flags=["--http-token-file", str(token_file)])
    fleet_on_loopback.agent("127.0.0.6", monitor)
    url = f"http://{monitor.http}/metrics"
    status, headers, _ = http_get(url)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert http_get(url, token="s3cret-token-for-the-test-012345678X")[0] == 401
    assert http_get(url, token="s3cret-token-for-the-test-0123456789")[0] == 200
    assert http_get(f"http://{monitor.http}/api/machines")[0] == 401

    server = prometheus([monitor.http], token_file=token_file)
    wait_for(lambda: server.query('mdp_machine_up{machine="127.0.0.6"} == 1'), "an authorised scrape", timeout=60,
             interval=0.5)
