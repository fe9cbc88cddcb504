"""`molecule test` of molecule/default on the booted fleet: converge = deploy.yml, idempotence, and the
testinfra checks in tests/ansible/molecule/ (python3, service, UDP 12345, key modes, unit hardening,
a real signed mdp_send)."""

from __future__ import annotations

import pytest
from mdp_ansible import run

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def test_molecule_default_scenario(fleet):
    result = run(["molecule", "test"], timeout=1500, ANSIBLE_NOCOLOR="1", NO_COLOR="1", PY_COLORS="0")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    for step in ("converge", "idempotence", "verify"):
        assert f"{step}: Executed: Successful" in output, output[-6000:]
    assert "21 passed" in output  # 7 checks on each of the 3 hosts
