"""Static checks of the Ansible side: ansible-lint (production profile), syntax, ansible-doc.

The collection's ansible-test sanity + units on each ansible-core line run from `make test-collection`
(tests/ansible/collection_tests.sh), outside pytest: each line needs its own venv and interpreter."""

from __future__ import annotations

import pytest
from mdp_ansible import run

PLAYBOOKS = ["deploy.yml", "playbooks/send.yml", "playbooks/uninstall.yml", "playbooks/rotate_keys.yml"]


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
    for role in ("mdp_bootstrap", "mdp_agent", "mdp_monitor"):
        assert role in result.stdout
