"""playbooks/uninstall.yml on one fleet host: the roles' uninstall entry points remove what the roles
installed, at the paths the role variables name (here moved away from the defaults, so a hard-coded
path would be caught), Syncthing's package, repository, home and API key included; then the host is
deployed again so the rest of the suite finds the fleet as it was.
"""

from __future__ import annotations

import pytest
import yaml
from mdp_ansible import run

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def test_uninstall_removes_what_the_roles_installed(fleet, tmp_path):
    host = fleet.hosts[-1]
    known = tmp_path / "known"
    moved = ["-e", "mdp_agent_state_dir=/var/lib/mdp-agent-moved", "-e", "mdp_agent_install_dir=/opt/mdp-agent-moved",
             "-e", "mdp_agent_config_file=/etc/mdp-moved/agent.conf", "-e", f"mdp_agent_known_machines={known}"]
    cluster = tmp_path / "cluster.yml"
    cluster.write_text(yaml.safe_dump([{"name": "Syncthing", "hosts": host.name, "become": True,
                                        "roles": ["mdp.core.cluster"]}]))
    host.ssh("mkdir -p /srv/mdp-uninstall-test")
    for playbook in ("deploy.yml", cluster):
        result = run(["ansible-playbook", "-i", fleet.inventory, playbook, "-l", host.name, *moved], timeout=1500)
        assert result.returncode == 0, result.stdout[-6000:]
    assert host.ssh("test -s /var/lib/mdp-agent-moved/syncthing-api-key && dpkg -s syncthing", check=False
                    ).returncode == 0  # the API key file follows mdp_agent_state_dir
    assert (known / f"{host.ip}.txt").exists()

    result = run(["ansible-playbook", "-i", fleet.inventory, "playbooks/uninstall.yml", "-l", host.name, *moved,
                  "-e", "mdp_uninstall_remove_keys=true"], timeout=900)
    assert result.returncode == 0, result.stdout[-6000:]
    left = host.ssh("for p in /opt/mdp-agent-moved /etc/mdp-moved /var/lib/mdp-agent-moved /var/lib/mdp-syncthing "
                    "/usr/local/lib/mdp-cluster /etc/systemd/system/mdp-agent.service "
                    "/etc/systemd/system/mdp-syncthing.service; do [ ! -e $p ] || echo $p; done; "
                    "dpkg -s syncthing >/dev/null 2>&1 && echo syncthing-package; "
                    "systemctl is-active mdp-agent mdp-syncthing || true", check=False).stdout.split()
    assert [word for word in left if word != "inactive"] == [], left
    assert not (known / f"{host.ip}.txt").exists()
    assert host.ssh("test -d /srv/mdp-uninstall-test", check=False).returncode == 0  # folders are the site's
    host.ssh("rmdir /srv/mdp-uninstall-test")

    # Back to the suite's layout: the default paths, a new key the controller then trusts.
    again = run(["ansible-playbook", "-i", fleet.inventory, "deploy.yml", "-l", host.name,
                 "-e", "mdp_agent_rotate_key=true"], timeout=1500)
    assert again.returncode == 0, again.stdout[-6000:]
