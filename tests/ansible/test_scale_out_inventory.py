"""Several monitors: inventories/two-monitors assigns each site's agents to its own monitor by group.

The inventory's variables are resolved by Ansible itself (`ansible -m debug`, which connects to
nothing; no hosts at those addresses exist here), then the roles' own expressions are rendered for
them: the agent role's `monitor =` address and the monitor role's command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from role_render import render, role_vars  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventories" / "two-monitors"
ANSIBLE = REPO / ".venv" / "bin" / "ansible"


def resolved(pattern: str, variable: str) -> dict[str, str]:
    """{host: value} of one variable as Ansible templates it for each host of the pattern."""
    out = subprocess.run([str(ANSIBLE) if ANSIBLE.exists() else "ansible", "-i", str(INVENTORY), pattern, "-o",
                          "-m", "ansible.builtin.debug", "-a", f"var={variable}"],
                         capture_output=True, text=True, timeout=120, check=True, cwd=REPO).stdout
    values = {}
    for line in out.splitlines():
        host, _, rest = line.partition(" | SUCCESS => ")
        values[host.strip()] = json.loads(rest)[variable]
    return values


def test_each_site_reports_to_its_own_monitor():
    addresses = resolved("mdp_agents", "mdp_agent_monitor_address")
    rendered = {host: render("agent", "{{ mdp_agent_monitor }}",
                             role_vars("agent", {}, mdp_agent_monitor_address=address))
                for host, address in addresses.items()}
    assert rendered == {"node1": "192.168.33.2:12345", "node2": "192.168.33.2:12345",
                        "node3": "192.168.34.2:12345", "node4": "192.168.34.2:12345"}


def test_each_monitor_listens_and_serves_http_on_its_own_address_with_a_token():
    own = {name: resolved("mdp_monitor", name) for name in
           ("mdp_monitor_listen", "mdp_monitor_http", "mdp_monitor_http_token_file")}
    for host, address in (("monitor_a", "192.168.33.2"), ("monitor_b", "192.168.34.2")):
        variables = role_vars("monitor", {}, ansible_connection="ssh",
                              **{name: values[host] for name, values in own.items()})
        command = render("monitor", "{{ mdp_monitor_command }}", variables)
        assert f"--listen {address}:12345 " in command
        assert command.endswith(f"--http {address}:9123 --http-token-file /etc/mdp/http.token"), command
