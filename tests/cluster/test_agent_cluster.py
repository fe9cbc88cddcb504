"""Cluster mode through the whole path: the controller helper sends signed UDP requests to real
agent processes (python -m mdp_agent) on 127.0.40.x, each driving its own real Syncthing."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import read_or_none, wait_for

from mdp_controller import client
from mdp_controller import cluster as controller

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from integration.harness import Agent, free_port

pytestmark = pytest.mark.slow
FOLDER = "/uploaded_files"
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def agents(tmp_path, node_factory):
    """Three machines: a Syncthing node and an agent configured to drive it, on the same address."""
    port = free_port()
    known = tmp_path / "known_machines"
    started = []
    for index in (1, 2, 3):
        node = node_factory(index)
        conf = tmp_path / f"agent-{node.ip}.conf"
        conf.write_text("[agent]\noperation_timeout = 30\n[cluster]\n"
                        f"syncthing_api = http://{node.ip}:8384\n"
                        f"syncthing_api_key_file = {node.key_file}\n"
                        f"folder_root = {node.root}\nreconnect_s = 5\n")
        agent = Agent(tmp_path, node.ip, port, known, config=conf).start().trust()
        started.append((node, agent))
    yield started, {"known_machines": str(known), "port": port, "timeout": 30}
    for _, agent in started:
        agent.kill()


def test_activate_sync_status_and_leave_through_the_agents(agents):
    machines, send = agents
    nodes = [node for node, _ in machines]
    ips = [node.ip for node in nodes]

    result = asyncio.run(controller.activate(None, ips, FOLDER, **send))
    assert result["ok"], result
    for node in nodes:
        answer = result["machines"][node.ip]["cluster_info"]
        assert answer["cluster_machines"] == node.ip
        assert answer["machine_mode"][0]["name"] == "sync_folders"
        assert 1 <= answer["machine_mode"][0]["performance"] <= 9
        assert answer["device_id"] == node.device_id

    nodes[0].path(FOLDER, "via-agent.txt").write_bytes(b"hello cluster")
    wait_for(lambda: all(read_or_none(n.path(FOLDER, "via-agent.txt")) == b"hello cluster" for n in nodes),
             120, "the file on every node")

    status = asyncio.run(controller.status(None, ips, **send))
    for node in nodes:
        assert status[node.ip]["cluster_machines"] == ips
        assert status[node.ip]["folders"][0]["folder"] == FOLDER

    left = asyncio.run(controller.leave(None, [ips[2]], **send))
    assert left[ips[2]]["ok"] and left[ips[2]]["cluster_info"]["left"] is True
    assert [f["paused"] for f in nodes[2].api.config()["folders"]] == [True]


def test_the_seed_message_as_is_and_a_bad_one(agents):
    machines, send = agents
    nodes = [node for node, _ in machines]
    ips = [node.ip for node in nodes]
    seed = controller.seed_cluster_info(ips, FOLDER)
    replies = client.send_sync(ips, [], seed, **send)
    for node in nodes:
        info = replies[node.ip]["cluster_info"]
        assert replies[node.ip]["status"] is True
        assert info["cluster_machines"] == node.ip
        assert sorted(info["missing_identities"]) == sorted(set(ips) - {node.ip})

    bad = controller.seed_cluster_info(ips, "/etc")
    replies = client.send_sync(ips[:1], [], bad, **send)
    reply = replies[ips[0]]
    assert reply["status"] is False
    assert reply["cluster_info"]["error"]["code"] == "bad_folder"
    assert "/etc" in reply["cluster_info"]["error"]["message"]


def test_ansible_ad_hoc_seed_message_activates_once_for_every_host(agents):
    """`ansible -m mdp_send` with the seed's message on three hosts: each host's result is its own
    machine's answer, and each agent got exactly one identity request and one cluster_info, because
    the action plugin runs the library's activation once for the run (asking every machine from every
    host's task cost each agent N + 1 requests)."""
    machines, send = agents
    ips = [node.ip for node, _ in machines]
    before = {agent.ip: agent.stats()["requests"] for _, agent in machines}
    seed = controller.seed_cluster_info(ips, FOLDER)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", ANSIBLE_NOCOLOR="1",
               MDP_KNOWN_MACHINES=send["known_machines"])
    env.pop("ANSIBLE_CONFIG", None)
    result = subprocess.run([str(BIN / "ansible"), "all", "-i", ",".join(ips) + ",", "-c", "local", "-o",
                             "-m", "mdp_send", "-a", json.dumps({"cluster_info": seed, "port": send["port"],
                                                                 "timeout": 30})],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for ip in ips:
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"{ip} |"))
        answer = json.loads(line.split("=>", 1)[1])["cluster_info"]
        assert answer["cluster_machines"] == ip
        assert answer["missing_identities"] == []
        assert 1 <= answer["machine_mode"][0]["performance"] <= 9
    after = {agent.ip: agent.stats()["requests"] for _, agent in machines}
    # cluster.identity, the cluster_info, then this second agent.stats
    assert {ip: after[ip] - before[ip] for ip in ips} == {ip: 3 for ip in ips}
