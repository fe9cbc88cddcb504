"""`molecule list` and `molecule syntax` without a fleet; `molecule test` of molecule/default on the
booted fleet: converge = deploy.yml, idempotence, and the testinfra checks in tests/ansible/molecule/ (python3, service, UDP 12345, key modes, unit hardening,
a real signed mdp_send)."""

from __future__ import annotations

import pytest
from mdp_ansible import run


@pytest.mark.parametrize("command, expected", [
    ("list", "fleet3"),
    ("syntax", "syntax: Executed: Successful"),
])
def test_molecule_list_and_syntax_need_no_fleet(command, expected, tmp_path):
    """Without MDP_MOLECULE_INVENTORY the scenario reads inventories/local (committed), not the
    inventories/fleet a booted fleet writes; a scratch MOLECULE_EPHEMERAL_DIRECTORY keeps it apart
    from whatever state a fleet run left."""
    result = run(["molecule", command], timeout=300, NO_COLOR="1", PY_COLORS="0", ANSIBLE_NOCOLOR="1",
                 MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert expected in output, output[-4000:]
    assert "inventories/fleet" not in output


@pytest.mark.fleet
@pytest.mark.slow
def test_molecule_default_scenario(fleet):
    result = run(["molecule", "test"], timeout=1500, ANSIBLE_NOCOLOR="1", NO_COLOR="1", PY_COLORS="0",
                 MDP_MOLECULE_INVENTORY="fleet")  # molecule.yml: inventories/fleet, not the committed copy
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    for step in ("converge", "idempotence", "verify"):
        assert f"{step}: Executed: Successful" in output, output[-6000:]
    assert "21 passed" in output  # 7 checks on each of the 3 hosts
