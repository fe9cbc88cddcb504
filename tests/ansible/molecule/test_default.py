"""molecule verify (pytest-testinfra) for each fleet host after deploy.yml.

Molecule runs this with its own inventory (the generated fleet inventory), one test per host.
"""

from __future__ import annotations

import os

import testinfra.utils.ansible_runner

# The whole inventory directory: molecule's generated file plus the linked fleet inventory.
testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])).get_hosts("mdp_agents")


def test_python3_present(host):
    assert host.exists("python3")
    assert host.run("python3 -c 'import sys; print(sys.version_info[0])'").stdout.strip() == "3"


def test_agent_enabled_and_running(host):
    service = host.service("mdp-agent")
    assert service.is_enabled
    assert service.is_running


def test_udp_12345_bound(host):
    assert host.socket("udp://0.0.0.0:12345").is_listening


def test_key_is_private(host):
    state = host.file("/var/lib/mdp-agent")
    key = host.file("/var/lib/mdp-agent/agent.key")
    assert state.is_directory and state.mode == 0o700 and state.user == "root"
    assert key.is_file and key.mode == 0o600
    assert len(key.content_string.strip()) == 64


def test_unit_is_hardened(host):
    show = host.run("systemctl show mdp-agent -p NoNewPrivileges -p ProtectSystem -p PrivateTmp -p Restart "
                    "-p ProtectHome -p ReadWritePaths").stdout
    values = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    assert values["NoNewPrivileges"] == "yes"
    assert values["ProtectSystem"] == "strict"
    assert values["PrivateTmp"] == "yes"
    assert values["Restart"] == "always"
    assert values["ProtectHome"] == "read-only"
    assert "/var/lib/mdp-agent" in values["ReadWritePaths"]


def test_release_is_linked_without_bytecode(host):
    current = host.file("/opt/mdp-agent/current")
    assert current.is_symlink and current.linked_to.startswith("/opt/mdp-agent/releases/")
    assert host.run("find -L /opt/mdp-agent/current -name '__pycache__' -o -name '*.pyc'").stdout == ""


def test_a_real_mdp_send_answers(host):
    """The controller library asks the agent, signed, with the key deploy.yml fetched."""
    from mdp_controller.client import send_sync

    ip = host.ansible.get_variables()["ansible_host"]
    reply = send_sync([ip], ["ping", "system.uptime"], known_machines=os.environ["MDP_KNOWN_MACHINES"],
                      timeout=10)[ip]
    assert reply["status"] is True, reply
    assert reply["operations"][0]["result"]["reply"] == "pong"
