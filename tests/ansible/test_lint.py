"""Static checks of the Ansible side: ansible-lint (production profile), syntax, ansible-doc.

The collection's ansible-test sanity + units on each ansible-core line run from `make test-collection`
(tests/ansible/collection_tests.sh), outside pytest: each line needs its own venv and interpreter."""

from __future__ import annotations

import pytest
from mdp_ansible import run

PLAYBOOKS = ["deploy.yml", "playbooks/send.yml", "playbooks/uninstall.yml", "playbooks/rotate_keys.yml",
             "playbooks/cluster.yml", "mdp.core.deploy", "mdp.core.cluster", "mdp.core.uninstall", "mdp.core.rotate_keys"]


def test_ansible_lint_production_profile_is_clean():
    result = run(["ansible-lint", "--nocolor"], timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert "Profile 'production' was required, and it passed" in result.stderr + result.stdout


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook):
    result = run(["ansible-playbook", "-i", "inventories/example", "--syntax-check", playbook])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["mdp.core.mdp_send", "mdp_send"])
def test_ansible_doc_shows_mdp_send(name):
    result = run(["ansible-doc", name])
    assert result.returncode == 0, result.stderr
    assert "Sends a signed request to the MDP agent" in result.stdout
    assert "known_machines" in result.stdout and "This module has a corresponding action plugin" in result.stdout


def test_role_argument_specs_are_documented():
    result = run(["ansible-doc", "-t", "role", "-l"])
    assert result.returncode == 0, result.stderr
    for role in ("mdp.core.bootstrap", "mdp.core.agent", "mdp.core.monitor", "mdp.core.cluster"):
        assert role in result.stdout


@pytest.mark.parametrize("extra", [[], ["-e", "mdp_cluster_hosts=web"]])
def test_cluster_playbook_fails_when_its_hosts_match_nothing(extra, tmp_path):
    """No mdp_cluster group (or a pattern of no host) is an error, not a run that did nothing."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    mdp_agents:\n      hosts:\n        node1:\n"
                         "          ansible_host: 192.0.2.10\n")
    result = run(["ansible-playbook", "-i", inventory, "playbooks/cluster.yml", "-e", "mdp_cluster_folder=/srv/x",
                  *extra])
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "matches no host of the inventory" in output
    assert "node1" not in output.split("PLAY RECAP")[0].split("Fail when the host pattern matches no host")[1]
