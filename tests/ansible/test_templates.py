"""The service definitions and the init-system choice, rendered from the roles' own text.

No upstart host can boot here (Ubuntu 14.04 has no debootstrap-able upstart userland that runs under
systemd-nspawn on this machine), so the upstart job is tested as rendered text, and the choice between
systemd and upstart by rendering the role's own `src`/`dest` expressions for a host whose
ansible_service_mgr fact is faked as upstart. The systemd unit is also checked by systemd-analyze.
"""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess

import pytest
import yaml
from mdp_ansible import REPO
from role_render import ROLES, render_template, service_vars, template_task
from role_render import render as render_in
from role_render import role_vars as vars_of

from mdp_agent import lastrun

ROLE = ROLES / "agent"


def role_vars(service_mgr: str, **overrides) -> dict:
    """mdp.core.agent's variables for one fake host whose service manager is service_mgr; the agent
    source is where a checkout's preflight finds it (the controller library's agent_src/)."""
    return vars_of("agent", {"ansible_host": "192.168.33.20", "ansible_service_mgr": service_mgr,
                             "ansible_config_file": str(REPO / "ansible.cfg"),
                             "_mdp_agent_source": str(REPO / "agent_src")}, **overrides)


def render(text: str, variables: dict):
    return render_in("agent", text, variables)


def service_task() -> dict:
    """The internal service role's template task, which writes the unit the agent role asks for."""
    return template_task("service", "main.yml")


@pytest.mark.parametrize("manager, template, dest", [
    ("upstart", "mdp-agent.upstart.j2", "/etc/init/mdp-agent.conf"),
    ("systemd", "mdp-agent.service.j2", "/etc/systemd/system/mdp-agent.service"),
])
def test_service_manager_fact_picks_the_definition(manager, template, dest):
    task = service_task()
    variables = service_vars("agent", "service.yml", role_vars(manager))
    assert render(task["src"], variables) == template
    assert render(task["dest"], variables) == dest


def test_unsupported_init_system_fails_with_its_name():
    tasks = yaml.safe_load((ROLES / "service" / "tasks" / "preflight.yml").read_text())
    check = tasks[0]["ansible.builtin.assert"]

    def preflight_vars(manager):
        return service_vars("agent", "preflight.yml", role_vars(manager), entry="preflight.yml")
    variables = preflight_vars("sysvinit")
    assert render("{{ %s }}" % check["that"], variables) is False
    message = render(check["fail_msg"], variables)
    assert '"sysvinit"' in message and "mdp.core.agent" in message and "mdp_agent_service_manager" in message
    assert render("{{ %s }}" % check["that"], preflight_vars("upstart")) is True


def test_upstart_job_respawns_the_agent_with_its_code_and_config():
    job = render_template("agent", "mdp-agent.upstart.j2", role_vars("upstart"))
    lines = [line.strip() for line in job.splitlines()]
    assert "# Ansible managed" in lines
    assert "respawn" in lines and "respawn limit 10 5" in lines
    assert "start on (local-filesystems and net-device-up IFACE!=lo)" in lines
    assert "stop on runlevel [!2345]" in lines
    assert "env PYTHONPATH=/opt/mdp-agent/current" in lines
    assert "exec /usr/bin/python3 -m mdp_agent --config /etc/mdp/agent.conf" in lines
    # Upstart stanzas only: a systemd key here would be a syntax error for init-checkconf.
    assert not any(line.startswith(("ExecStart", "[Service]", "Restart=")) for line in lines)


def unit_service(variables: dict):
    """The [Service] section of the agent's unit rendered with variables."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(render_template("agent", "mdp-agent.service.j2", variables))
    return parser["Service"]


def test_systemd_unit_is_hardened_and_restarts():
    unit = render_template("agent", "mdp-agent.service.j2",
                  role_vars("systemd", mdp_agent_systemd_read_write_paths=["/srv/sync"]))
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(unit)
    service = parser["Service"]
    assert service["ExecStart"] == "/usr/bin/python3 -m mdp_agent --config /etc/mdp/agent.conf"
    assert service["Restart"] == "always"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/mdp-agent /srv/sync"
    assert service["PrivateTmp"] == "yes"
    assert service["ProtectHome"] == "read-only"
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_caps_the_agent_with_the_documented_defaults():
    service = unit_service(role_vars("systemd"))
    assert service["MemoryMax"] == "96M" and service["CPUQuota"] == "50%"
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    for name in ("mdp_agent_memory_max", "mdp_agent_cpu_quota", "mdp_agent_address_space_max", "mdp_agent_nice"):
        assert specs[name]["default"] == defaults[name], name
    uncapped = unit_service(role_vars("systemd", mdp_agent_memory_max="", mdp_agent_cpu_quota=""))
    assert "MemoryMax" not in uncapped and "CPUQuota" not in uncapped


def test_systemd_unit_records_the_stop_where_the_agent_reads_it(tmp_path):
    """ExecStopPost as systemd runs it: `$$` is systemd's escaped `$`, the quoting is systemd's (as
    shlex splits it), the variables are those systemd passes after a MemoryMax kill. The file it writes
    must read back through the agent's own parser."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    service = unit_service(role_vars("systemd", mdp_agent_state_dir=str(state_dir)))
    argv = shlex.split(service["ExecStopPost"].replace("$$", "$"))
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3
    assert f'"{state_dir}/{lastrun.SERVICE_EXIT_FILE}"' in argv[2]
    subprocess.run(argv, check=True, timeout=30, env={"PATH": "/usr/bin:/bin", "SERVICE_RESULT": "oom-kill",
                                                      "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"})
    record = lastrun.previous_run(str(state_dir))
    assert record == {"clean": False, "service_result": "oom-kill", "exit_code": "killed", "exit_status": "KILL"}
    assert "going over its memory cap (MemoryMax)" in lastrun.describe(record)


def test_upstart_job_sets_limit_stanzas():
    """Upstart cannot run here: the job's limit stanzas are checked as rendered text."""
    lines = [line.strip() for line in render_template("agent", "mdp-agent.upstart.j2", role_vars("upstart")).splitlines()]
    assert "limit as 805306368 805306368" in lines and "nice 10" in lines and "respawn limit 10 5" in lines
    unlimited = render_template("agent", "mdp-agent.upstart.j2", role_vars("upstart", mdp_agent_address_space_max=0))
    assert "limit as" not in unlimited


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemd_analyze(tmp_path):
    unit = tmp_path / "mdp-agent.service"
    unit.write_text(render_template("agent", "mdp-agent.service.j2", role_vars("systemd")))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            timeout=60)
    # Only complaints about this unit count; a container without systemd as PID 1 adds unrelated noise.
    complaints = [line for line in result.stderr.splitlines() if "mdp-agent.service" in line]
    assert complaints == [], result.stderr


def test_agent_config_is_what_the_agent_parses():
    conf = render_template("agent", "agent.conf.j2",
                  role_vars("systemd", mdp_agent_monitor_address="10.0.0.1", mdp_agent_allow=["system.*", "load.*"],
                            mdp_agent_extra_config={"cluster_dir": "/srv/sync"}))
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(conf)
    agent = parser["agent"]
    assert agent["monitor"] == "10.0.0.1:12345"  # a bare host gets the monitor's default port
    assert agent["allow"] == "system.*, load.*"
    assert agent["enable_mutating"] == "false"
    assert agent["report_operations"] == "system.uptime, load.avg, memory.info, filesystem.usage"
    assert agent["cluster_dir"] == "/srv/sync"


def test_version_is_read_from_the_agent_source():
    init = (REPO / "agent_src" / "mdp_agent" / "__init__.py").read_text()
    assert f'__version__ = "{render("{{ _mdp_agent_release }}", role_vars("systemd"))}"' in init
    assert render("{{ mdp_agent_release_dir }}", role_vars("systemd", mdp_agent_version="9.9")) == \
        "/opt/mdp-agent/releases/9.9"


WHEEL = "/c/roles/monitor/files/mdp_diagnostics-0.1.0-py3-none-any.whl"


@pytest.mark.parametrize("given, bundled, library, package, wanted", [
    ("", [WHEEL], None, WHEEL, "0.1.0"),                                   # a built collection
    ("", [], {"version": "0.1.0", "source": "/src/mdp"}, "/src/mdp", "0.1.0"),  # a checkout (pip install -e)
    ("", [], {"version": "0.1.0", "source": ""}, "mdp-diagnostics==0.1.0", "0.1.0"),  # library from the index
    ("/srv/mdp", [WHEEL], None, "/srv/mdp", ""),                              # the operator's choice first
])
def test_monitor_installs_the_bundled_wheel_else_the_controllers_library(given, bundled, library, package, wanted):
    tasks = yaml.safe_load((ROLES / "monitor" / "tasks" / "install.yml").read_text())
    choice = next(t for t in tasks if t["name"] == "Remember what to install")["ansible.builtin.set_fact"]
    variables = vars_of("monitor", {"ansible_config_file": str(REPO / "ansible.cfg")}, mdp_monitor_package=given,
                        _mdp_monitor_bundled_wheels=bundled,
                        _mdp_monitor_controller_library={"stdout": json.dumps(library)} if library else {"skipped": True})
    assert render_in("monitor", choice["_mdp_monitor_package"], variables) == package
    assert render_in("monitor", choice["_mdp_monitor_wanted"], variables) == wanted
