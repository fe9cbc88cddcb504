"""mdp.core.cluster's service definitions, rendered from the role's own text.

No upstart host can boot here (Ubuntu 14.04's upstart does not run under systemd-nspawn on this
machine), so the upstart job and the init-system choice are checked as rendered text for a host whose
ansible_service_mgr fact is faked; the systemd unit is also checked by systemd-analyze, and runs for
real on the fleet (test_fleet_cluster.py).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from role_render import ROLES, render_template, service_vars, template_task
from role_render import render as render_in
from role_render import role_vars as vars_of

ROLE = ROLES / "cluster"


def role_vars(service_mgr: str, version: str, **overrides) -> dict:
    """mdp.core.cluster's variables for a fake Ubuntu host with this service manager and Syncthing."""
    return vars_of("cluster", {"ansible_distribution": "Ubuntu", "ansible_service_mgr": service_mgr,
                                   "mdp_cluster_version": version}, **overrides)


def render(text: str, variables: dict):
    return render_in("cluster", text, variables)


def unit_task() -> dict:
    """The internal service role's template task, which writes the unit the cluster role asks for."""
    return template_task("service", "main.yml")


@pytest.mark.parametrize("manager, template, dest", [
    ("upstart", "mdp-syncthing.upstart.j2", "/etc/init/mdp-syncthing.conf"),
    ("systemd", "mdp-syncthing.service.j2", "/etc/systemd/system/mdp-syncthing.service"),
])
def test_service_manager_fact_picks_the_definition(manager, template, dest):
    task, variables = unit_task(), service_vars("cluster", "run.yml", role_vars(manager, "1.19.2"))
    assert render(task["src"], variables) == template
    assert render(task["dest"], variables) == dest


@pytest.mark.parametrize("version, args", [
    ("1.12.1", "-home=/var/lib/mdp-syncthing -no-browser -no-restart"),
    ("1.19.2", "serve --home=/var/lib/mdp-syncthing --no-browser --no-restart"),
    ("2.0.0", "serve --home=/var/lib/mdp-syncthing --no-browser --no-restart"),
])
def test_command_line_form_follows_the_version(version, args):
    assert render("{{ mdp_cluster_cli_args }}", role_vars("systemd", version)).strip() == args


def test_upstart_job_for_ubuntu_14_04():
    variables = role_vars("upstart", "1.27.0")
    text = render_template("cluster", "mdp-syncthing.upstart.j2", variables)
    lines = [line.strip() for line in text.splitlines()]
    assert "respawn" in lines
    assert "start on (local-filesystems and net-device-up IFACE!=lo)" in lines
    assert "env STNOUPGRADE=1" in lines and "env STNODEFAULTFOLDER=1" in lines
    assert "exec /usr/bin/syncthing serve --home=/var/lib/mdp-syncthing --no-browser --no-restart" in lines
    assert not any(line.startswith("setuid") for line in lines)       # root by default
    dedicated = render_template("cluster", "mdp-syncthing.upstart.j2",
                       role_vars("upstart", "1.27.0", mdp_cluster_user="mdpsync"))
    assert "setuid mdpsync" in dedicated


def test_ubuntu_uses_syncthings_repository_and_debian_its_own_package():
    assert render("{{ mdp_cluster_upstream_repo_enabled }}", role_vars("upstart", "0")) in (True, "True")
    debian = role_vars("systemd", "0", ansible_distribution="Debian")
    assert render("{{ mdp_cluster_upstream_repo_enabled }}", debian) in (False, "False")


def test_systemd_unit_passes_systemd_analyze(tmp_path):
    text = render_template("cluster", "mdp-syncthing.service.j2", role_vars("systemd", "1.19.2"))
    assert "ExecStart=/usr/bin/syncthing serve --home=/var/lib/mdp-syncthing --no-browser --no-restart" in text
    assert "ProtectSystem=full" in text and "NoNewPrivileges=yes" in text
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "mdp-syncthing.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    problems = [line for line in result.stderr.splitlines()
                if "mdp-syncthing.service" in line and "Unknown" in line]
    assert not problems, result.stderr


@pytest.mark.parametrize("release, line", [
    ("trusty", "deb https://apt.syncthing.net/ syncthing stable"),
    ("jammy", "deb [signed-by=/usr/share/keyrings/syncthing-archive-keyring.gpg] https://apt.syncthing.net/ "
              "syncthing stable"),
])
def test_repository_line_suits_the_apt_version(release, line):
    variables = role_vars("upstart", "0", ansible_distribution_release=release)
    assert render("{{ mdp_cluster_repo_line }}", variables).strip() == line
