"""Fixtures for the Ansible side: real agents on loopback, the booted fleet (tests/fleet)."""

from __future__ import annotations

import os
import sys

import pytest
from mdp_ansible import REPO

sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "fleet"))

from integration.harness import Agent, free_port  # noqa: E402
from mdp_fleet import fleet  # noqa: E402,F401  (the session-scoped booted test fleet)

# molecule/default's testinfra checks run only under `molecule verify` (test_molecule.py runs that).
collect_ignore = [] if "MOLECULE_INVENTORY_FILE" in os.environ else ["molecule"]


@pytest.fixture
def loopback_agent(tmp_path):
    """A real agent on 127.0.0.9 (random port) whose key the test's known-machines dir trusts."""
    known = tmp_path / "known_machines"
    agent = Agent(tmp_path, "127.0.0.9", free_port(), known)
    agent.start()
    agent.trust()
    yield agent
    agent.kill()
