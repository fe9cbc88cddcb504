"""deploy.yml on the booted test fleet: the AWX engine's run, idempotence, check mode, key safety.

The hosts are booted anew first (`fleet.sh reset`: fresh overlays, never deployed, no python), and
their old keys leave the project's key store, so the deploy is a first one. Then one real deploy
(through ansible-runner's Python API, the engine AWX runs jobs with), a second run that must change
nothing, a check-mode run that sends nothing to the agents, and the refusal to replace a trusted key.
The fleet is shared with the rest of the suite and left deployed.
"""

from __future__ import annotations

import json
import os
import re
import time

import ansible_runner
import pytest
from mdp_ansible import BIN, REPO, run
from mdp_fleet import load, run_script

from mdp_controller import client

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

PING_TASK = "Wait until the agent answers a signed ping"


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines -> {host: {ok, changed, unreachable, failed, ...}}."""
    hosts = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return hosts


def has_python(host) -> bool:
    return host.ssh("command -v python3", check=False).returncode == 0


@pytest.fixture(scope="module")
def fresh_fleet(fleet):
    """The fleet's hosts booted anew (the session holds the fleet lock), none of them with python, and
    the keys of the hosts that were there before out of the project's key store."""
    result = run_script("reset", str(len(fleet.hosts)))
    assert result.returncode == 0, f"fleet.sh reset failed:\n{result.stderr}"
    fresh = load(fleet.inventory, booted=fleet.booted)
    for host in fresh.hosts:
        (REPO / ".known_machines" / f"{host.ip}.txt").unlink(missing_ok=True)
    return fresh, {host.name: has_python(host) for host in fresh.hosts}


@pytest.fixture(scope="module")
def deployed(fresh_fleet, tmp_path_factory):
    """deploy.yml through ansible-runner, as an AWX job template would run it, on never-deployed hosts."""
    fleet, _ = fresh_fleet
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"  # ansible-runner starts ansible-playbook from PATH
    data_dir = tmp_path_factory.mktemp("runner")
    result = ansible_runner.run(
        private_data_dir=str(data_dir),
        project_dir=str(REPO),
        playbook="deploy.yml",
        inventory=str(fleet.inventory),
        quiet=True,
        timeout=1200,
    )
    # The monitor deploy.yml started here stops with the fleet (fleet.sh down), whoever booted it.
    yield fleet, result


def test_runner_deploy_succeeds_with_stats_and_events(deployed):
    fleet, result = deployed
    stdout = result.stdout.read()
    assert result.status == "successful" and result.rc == 0, stdout[-4000:]
    stats = result.stats
    assert stats["failures"] == {} and stats["dark"] == {}
    names = {h.name for h in fleet.hosts}
    assert names <= set(stats["ok"])
    assert "localhost" in stats["ok"]  # the monitor play ran
    events = list(result.events)
    pinged = {e["event_data"]["host"] for e in events
              if e["event"] == "runner_on_ok" and e["event_data"].get("task") == PING_TASK}
    assert pinged == names
    assert events[-1]["event"] == "playbook_on_stats"


def test_bootstrap_installed_python_itself(fresh_fleet, deployed):
    fleet, had_python = fresh_fleet
    assert had_python == {h.name: False for h in fleet.hosts}   # booted without python...
    assert {h.name: has_python(h) for h in fleet.hosts} == {h.name: True for h in fleet.hosts}   # ...deployed with


def test_service_status_asks_the_hosts_real_systemd(deployed):
    """service.status of ssh through the agent, answered by the host's systemd (the agent runs in its
    hardened unit), and the same main PID as systemctl reports over SSH."""
    fleet, _ = deployed
    ips = [h.ip for h in fleet.hosts]
    replies = client.send_sync(ips, [{"name": "service.status", "args": {"name": "ssh"}}], timeout=15)
    for host in fleet.hosts:
        reply = replies[host.ip]
        assert reply["status"] is True, reply
        result = reply["operations"][0]["result"]
        assert (result["init"], result["known"], result["active"], result["state"]) == (
            "systemd", True, True, "active"), result
        assert result["pid"] == int(host.ssh("systemctl show -p MainPID --value ssh").stdout)


def test_second_run_changes_nothing(deployed):
    fleet, _ = deployed
    result = run(["ansible-playbook", "-i", fleet.inventory, "deploy.yml"])
    assert result.returncode == 0, result.stdout[-4000:]
    counts = recap(result.stdout)
    assert {h.name for h in fleet.hosts} <= set(counts)
    assert {host: c["changed"] for host, c in counts.items()} == {host: 0 for host in counts}, result.stdout[-6000:]


def requests_seen(fleet) -> dict[str, int]:
    replies = client.send_sync([h.ip for h in fleet.hosts], ["agent.stats"], timeout=15)
    return {ip: reply["operations"][0]["result"]["requests"] for ip, reply in replies.items()}


def test_check_mode_on_a_deployed_fleet_predicts_no_change(deployed):
    fleet, _ = deployed
    before = requests_seen(fleet)
    result = run(["ansible-playbook", "-i", fleet.inventory, "deploy.yml", "--check"])
    assert result.returncode == 0, result.stdout[-4000:]
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in recap(result.stdout).values()), result.stdout[-4000:]
    # The agents' own counters: the signed-ping check is the only request check mode sends each one
    # (a read), then this second agent.stats.
    assert requests_seen(fleet) == {ip: n + 2 for ip, n in before.items()}, result.stdout[-4000:]


def test_a_different_trusted_key_is_not_replaced(deployed, tmp_path):
    """A controller that trusts another key for an address refuses to overwrite it unless told to."""
    fleet, _ = deployed
    host = fleet.hosts[0]
    known = tmp_path / "known"
    known.mkdir(mode=0o700)
    stale = known / f"{host.ip}.txt"
    stale.write_text("cd" * 32 + "\n")
    stale.chmod(0o600)
    argv = ["ansible-playbook", "-i", fleet.inventory, "deploy.yml", "-l", host.name,
            "-e", f"mdp_agent_known_machines={known}"]

    refused = run(argv, ANSIBLE_CALLBACK_RESULT_FORMAT="json")  # unfolded msg lines
    assert refused.returncode != 0
    assert f"{stale} already holds a different key for {host.ip}" in refused.stdout
    assert "mdp_agent_rotate_key=true" in refused.stdout
    assert stale.read_text() == "cd" * 32 + "\n"

    rotated = run(argv + ["-e", "mdp_agent_rotate_key=true"])
    assert rotated.returncode == 0, rotated.stdout[-4000:]
    assert stale.read_text() == host.ssh("cat /var/lib/mdp-agent/agent.key").stdout
    assert stale.stat().st_mode & 0o777 == 0o600


def test_adhoc_mdp_send_reaches_every_agent(deployed):
    fleet, _ = deployed
    result = run(["ansible", "-i", fleet.inventory, "mdp_agents", "-m", "mdp_send", "-a", "operations=ping,memory.info",
                  "-o"])
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("SUCCESS") == len(fleet.hosts)
    assert result.stdout.count('"pong"') == len(fleet.hosts)


def test_monitor_collects_every_agents_reports(deployed):
    """The monitor deploy.yml started receives signed reports from each agent (every 60 s by default)."""
    fleet, _ = deployed
    wanted = {h.ip for h in fleet.hosts}
    deadline = time.monotonic() + 180
    while True:
        result = run([BIN / "mdp", "status", "--db", "/var/lib/mdp-monitor/mdp.db", "--json"])
        seen = {m["ip"] for m in json.loads(result.stdout or "[]") if m.get("reports", 0) > 0 and m["status"]}
        if wanted <= seen:
            break
        assert time.monotonic() < deadline, f"no reports from {sorted(wanted - seen)} after 180 s: {result.stderr}"
        time.sleep(2)
