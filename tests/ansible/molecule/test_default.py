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


def test_release_is_linked_and_compiled_for_the_hosts_python(host):
    """The role compiles a release's bytecode when it unpacks it (the agent writes none itself):
    every module has a .pyc for the host's python3 that is current for its source."""
    current = host.file("/opt/mdp-agent/current")
    assert current.is_symlink and current.linked_to.startswith("/opt/mdp-agent/releases/")
    check = host.run(
        "python3 -c 'import glob, importlib.util, os, sys\n"
        "sources = glob.glob(\"/opt/mdp-agent/current/mdp_*/*.py\")\n"
        "stale = [s for s in sources if not os.path.exists(importlib.util.cache_from_source(s))"
        " or os.path.getmtime(importlib.util.cache_from_source(s)) < os.path.getmtime(s)]\n"
        "print(len(sources), stale)\n"
        "sys.exit(1 if stale or not sources else 0)'")
    assert check.rc == 0, check.stdout + check.stderr


def test_a_real_mdp_send_answers(host):
    """The controller library asks the agent, signed, with the key deploy.yml fetched."""
    from mdp_controller.client import send_sync

    ip = host.ansible.get_variables()["ansible_host"]
    reply = send_sync([ip], ["ping", "system.uptime"], known_machines=os.environ["MDP_KNOWN_MACHINES"],
                      timeout=10)[ip]
    assert reply["status"] is True, reply
    assert reply["operations"][0]["result"]["reply"] == "pong"
