"""No secret in any output: the roles run with --diff -vvv (what AWX's "Show Changes" and a debug run
print) on the booted fleet, and the whole output is searched for the text of every key.

The secrets: each agent's key (the hex text of agent.key, which the agent role fetches and the
monitor role copies) and each host's Syncthing API key (the cluster role writes it and sends it as
X-API-Key). So that the monitor's key copy really runs (on the fleet the monitor is the controller
and reads the controller's own key directory, so nothing is copied), a second monitor instance is
given a directory of its own; the monitor role's uninstall entry point removes it afterwards.
"""

from __future__ import annotations

import shutil

import pytest
import yaml
from mdp_ansible import run

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

SECOND_MONITOR = {
    "mdp_monitor_service_name": "mdp-monitor-nosecret",
    "mdp_monitor_install_dir": "/opt/mdp-monitor-nosecret",
    "mdp_monitor_state_dir": "/var/lib/mdp-monitor-nosecret",
}
HIDDEN = "output has been hidden due to the fact that"  # ... 'no_log: true' was specified for this result


def secrets_of(fleet) -> dict[str, str]:
    secrets = {}
    for host in fleet.hosts:
        secrets[f"{host.name} agent key"] = host.ssh("cat /var/lib/mdp-agent/agent.key").stdout.strip()
        secrets[f"{host.name} Syncthing API key"] = host.ssh("cat /var/lib/mdp-agent/syncthing-api-key").stdout.strip()
    for name, text in secrets.items():
        assert len(text) >= 32, f"{name} is not a real key: {text!r}"
    return secrets


def test_roles_with_diff_and_vvv_print_no_key(fleet, tmp_path):
    playbook = tmp_path / "roles.yml"
    monitor_vars = dict(SECOND_MONITOR, mdp_monitor_known_machines=str(tmp_path / "monitor-keys"),
                        mdp_monitor_listen=f"{fleet.bridge_ip}:12398")
    playbook.write_text(yaml.safe_dump([
        {"name": "Cluster mode", "hosts": "mdp_agents", "become": True, "roles": ["mdp.core.cluster"]},
        {"name": "A second monitor with its own copy of the keys", "hosts": "mdp_monitor", "become": True,
         "vars": monitor_vars, "roles": ["mdp.core.monitor"]},
        {"name": "Remove the second monitor", "hosts": "mdp_monitor", "become": True, "vars": monitor_vars,
         "tasks": [{"name": "Uninstall", "ansible.builtin.include_role": {"name": "mdp.core.monitor",
                                                                          "tasks_from": "uninstall.yml"}}]},
    ], sort_keys=False))
    outputs = []
    try:
        # A key directory of the test's own (the agents' keys are fetched there, whatever the
        # checkout's .known_machines holds); the checkout's monitor is left alone (-l mdp_agents).
        for argv in (["deploy.yml", "-l", "mdp_agents"], [playbook]):
            result = run(["ansible-playbook", "-i", fleet.inventory, *argv, "--diff", "-vvv"], timeout=1800,
                         known_machines=tmp_path / "controller-keys")
            outputs.append(result.stdout + result.stderr)
            assert result.returncode == 0, outputs[-1][-6000:]
    finally:
        shutil.rmtree(SECOND_MONITOR["mdp_monitor_state_dir"], ignore_errors=True)
    output = "\n".join(outputs)

    # The tasks that handle the keys did run, and said nothing about them.
    copy = output.split("TASK [mdp.core.monitor : Copy the trusted agent keys to the monitoring host]")[1]
    assert "changed: [localhost]" in copy.split("TASK [")[0] and HIDDEN in copy.split("TASK [")[0]
    assert output.count("TASK [mdp.core.cluster : Wait until Syncthing's API answers]") == 1
    assert len(list((tmp_path / "monitor-keys").glob("*.txt"))) >= len(fleet.hosts)

    leaked = [name for name, text in secrets_of(fleet).items() if text in output]
    assert leaked == [], f"printed with --diff -vvv: {leaked}"
