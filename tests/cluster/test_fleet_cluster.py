"""Cluster mode on the booted test fleet, end to end: deploy.yml's agents, playbooks/cluster.yml
(the mdp.core.cluster role + the seed's cluster_info through mdp_send), real Syncthing on three real
hosts (bullseye 1.12, bookworm 1.19, trixie 1.29), files written and read over SSH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from harness import wait_for

from mdp_controller import client
from mdp_controller import cluster as controller

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FOLDER = "/srv/mdp-cluster-test"
SYNC_S = 90
RUN = uuid.uuid4().hex[:8]   # file names unique to this run: the folder outlives it on the shared fleet


def ansible(*args, timeout=1200):
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CONFIG", None)
    result = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return result.stdout


def cluster_play(fleet, hosts, *extra):
    return ansible("ansible-playbook", "-i", str(fleet.inventory), "playbooks/cluster.yml", *extra,
                   "-e", f"mdp_cluster_hosts={':'.join(h.name for h in hosts)}", "-e", f"mdp_cluster_folder={FOLDER}")


def recap(out):
    return [line for line in out.splitlines() if line.startswith("fleet") and "changed=" in line]


def read(host, name):
    result = host.ssh(f"cat {FOLDER}/{RUN}-{name}", check=False)
    return result.stdout if result.returncode == 0 else None


def write(host, name, text):
    path = f"{FOLDER}/{RUN}-{name}"
    host.ssh(f"printf %s '{text}' > {path}.tmp && mv {path}.tmp {path}")


def everywhere(hosts, name, text):
    return all(read(h, name) == text for h in hosts)


@pytest.fixture(scope="module")
def cluster(fleet):
    hosts = list(fleet.hosts[:3])
    ips = [h.ip for h in hosts]
    pings = client.send_sync(ips, ["ping"], timeout=10)
    if not all(reply.get("status") for reply in pings.values()):
        ansible("ansible-playbook", "-i", str(fleet.inventory), "deploy.yml")
    cluster_play(fleet, hosts)
    return hosts


def test_the_playbook_twice_changes_nothing_the_second_time(fleet, cluster):
    out = cluster_play(fleet, cluster)
    for host in cluster:
        assert f"{host.name} " in out
    assert recap(out) and all("changed=0" in line for line in recap(out)), out[-4000:]


def requests_seen(hosts) -> dict[str, int]:
    replies = client.send_sync([h.ip for h in hosts], ["agent.stats"], timeout=15)
    return {ip: reply["operations"][0]["result"]["requests"] for ip, reply in replies.items()}


def test_check_mode_on_a_clustered_fleet_predicts_no_change(fleet, cluster):
    before = requests_seen(cluster)
    out = cluster_play(fleet, cluster, "--check")
    assert recap(out) and all("changed=0" in line and "failed=0" in line for line in recap(out)), out[-4000:]
    # Nothing reached the agents (their own counters): only this second agent.stats.
    assert requests_seen(cluster) == {ip: n + 1 for ip, n in before.items()}, out[-4000:]


def test_check_mode_never_sends_cluster_leave(fleet, cluster):
    before = requests_seen(cluster)
    out = cluster_play(fleet, cluster, "--check", "-e", "mdp_cluster_leave=true")
    assert "skipping" in out.lower() or "SKIPPED" in out, out[-4000:]
    assert requests_seen(cluster) == {ip: n + 1 for ip, n in before.items()}, out[-4000:]
    status = controller.status_sync([h.ip for h in cluster], timeout=10)
    assert all(s.get("cluster_machines") == [h.ip for h in cluster] for s in status.values()), status


def test_create_change_delete_propagate_across_syncthing_versions(cluster):
    one, two, three = cluster
    write(one, "a.txt", "from bullseye")
    wait_for(lambda: everywhere(cluster, "a.txt", "from bullseye"), SYNC_S, "a.txt on every host")
    write(three, "a.txt", "changed on trixie")
    wait_for(lambda: everywhere(cluster, "a.txt", "changed on trixie"), SYNC_S, "the change on every host")
    two.ssh(f"rm {FOLDER}/{RUN}-a.txt")
    wait_for(lambda: all(read(h, "a.txt") is None for h in cluster), SYNC_S, "the deletion on every host")


def test_edits_while_apart_leave_a_conflict_copy_and_lose_nothing(cluster):
    one, two, _ = cluster
    write(one, "c.txt", "base")
    wait_for(lambda: everywhere(cluster, "c.txt", "base"), SYNC_S, "the base version")
    one.ssh("systemctl stop mdp-syncthing")
    write(one, "c.txt", "edit on one")
    write(two, "c.txt", "edit on two")
    one.ssh("systemctl start mdp-syncthing")

    def versions(host):
        out = host.ssh(f"cd {FOLDER} && for f in {RUN}-c*.txt; do cat \"$f\"; echo; done").stdout
        return sorted(line for line in out.splitlines() if line)

    wait_for(lambda: all(versions(h) == ["edit on one", "edit on two"] for h in cluster), SYNC_S,
             "both edits on every host (one as a .sync-conflict copy)")


def test_agent_restart_keeps_the_cluster(cluster):
    one, two, three = cluster
    two.ssh("systemctl restart mdp-agent")
    wait_for(lambda: client.send_sync([two.ip], ["ping"], timeout=5)[two.ip]["status"], 60, "the agent back")
    status = controller.status_sync([two.ip], timeout=10)[two.ip]
    assert status["cluster_machines"] == [h.ip for h in cluster]
    write(three, "r.txt", "after the restart")
    wait_for(lambda: everywhere(cluster, "r.txt", "after the restart"), SYNC_S, "r.txt on every host")


def test_removed_host_stops_receiving_and_catches_up_when_added_back(fleet, cluster):
    one, two, three = cluster
    cluster_play(fleet, [one, two])
    write(one, "while-out.txt", "three was out")
    wait_for(lambda: read(two, "while-out.txt") == "three was out", SYNC_S, "the file on two")
    assert read(three, "while-out.txt") is None
    status = controller.status_sync([one.ip], timeout=10)[one.ip]
    assert [p["ip"] for p in status["peers"]] == [two.ip]

    cluster_play(fleet, cluster)
    wait_for(lambda: read(three, "while-out.txt") == "three was out", SYNC_S, "three to catch up")


OPTIONS = ("python3 -c \"import json,urllib.request; k=open('/var/lib/mdp-agent/syncthing-api-key').read().strip(); "
           "print(json.dumps(json.load(urllib.request.urlopen(urllib.request.Request("
           "'http://127.0.0.1:8384/rest/config/options', headers={'X-API-Key': k})))))\"")


def test_syncthing_is_lan_only_with_the_api_on_loopback(cluster):
    for host in cluster:
        options = json.loads(host.ssh(OPTIONS).stdout)
        assert options["listenAddresses"] == ["tcp://0.0.0.0:22000"]
        assert not options["globalAnnounceEnabled"] and not options["localAnnounceEnabled"]
        assert not options["relaysEnabled"] and not options["natEnabled"]
        assert options["urAccepted"] == -1 and not options["crashReportingEnabled"]
        assert options["autoUpgradeIntervalH"] == 0
        listening = host.ssh("ss -Hlntu | awk '{print $5}'").stdout.split()
        assert "127.0.0.1:8384" in listening and not any(a.endswith(":8384") and a != "127.0.0.1:8384"
                                                         for a in listening)
        assert not any(a.endswith(":21027") for a in listening)      # no local discovery
        modes = host.ssh("stat -c %a /var/lib/mdp-agent/syncthing-api-key /var/lib/mdp-syncthing/config.xml").stdout
        assert modes.split() == ["600", "600"]


def test_the_seeds_message_as_written_through_ansible_ad_hoc(fleet, cluster):
    """`ansible ... -m mdp_send -a '{"cluster_info": <the seed's message>}'`: no identities in it,
    no operations; the action plugin gathers the identities and every machine answers the seed's
    shape. Runs last: it makes FOLDER the cluster's folder again, as the module fixture left it."""
    seed = {"cluster_machines": [h.ip for h in cluster],
            "cluster_mode": [{"name": "sync_folders", "folder": FOLDER}]}
    out = ansible("ansible", "-i", str(fleet.inventory), ",".join(h.name for h in cluster), "-o",
                  "-m", "mdp_send", "-a", json.dumps({"cluster_info": seed}))
    for host in cluster:
        line = next(line for line in out.splitlines() if line.startswith(f"{host.name} |"))
        answer = json.loads(line.split("=>", 1)[1])["cluster_info"]
        assert answer["cluster_machines"] == host.ip
        assert [m["name"] for m in answer["machine_mode"]] == ["sync_folders"]
        assert 1 <= answer["machine_mode"][0]["performance"] <= 9
        assert answer["missing_identities"] == []
    write(cluster[1], "seed.txt", "written after the seed message")
    wait_for(lambda: everywhere(cluster, "seed.txt", "written after the seed message"), SYNC_S, "seed.txt on every host")
