"""service.status under each init system.

sysv is real: real init scripts in a temporary /etc/init.d, run as real processes. systemd and
upstart are stand-ins: this machine's PID 1 is neither, and upstart (Ubuntu 14.04) cannot run
here at all, so small shell scripts play systemctl and initctl with the output formats of
systemd's `systemctl show` and upstart 1.12's `initctl status`. The booted test fleet checks the
systemd path against a real systemd.
"""

import os
import stat

import pytest

from mdp_operations import _host, service

HERE = os.path.dirname(os.path.abspath(__file__))
TRUSTY_PROC = os.path.join(HERE, "..", "fixtures", "proc", "trusty")

FAKE_INITCTL = """#!/bin/sh
case "$1" in
  version) echo "initctl (upstart 1.12.1)" ;;
  status)
    case "$2" in
      ssh) echo "ssh start/running, process 812" ;;
      tty9) echo "tty9 stop/waiting" ;;
      hang) sleep 30 ;;
      *) echo "initctl: Unknown job: $2" >&2; exit 1 ;;
    esac ;;
esac
"""

FAKE_SYSTEMCTL = """#!/bin/sh
# called as: systemctl show --no-pager --property=... NAME
case "$4" in
  ssh|ssh.service)
    printf 'LoadState=loaded\\nActiveState=active\\nSubState=running\\nUnitFileState=enabled\\n'
    printf 'MainPID=812\\nDescription=OpenBSD Secure Shell server\\n' ;;
  envcheck)
    printf 'LoadState=loaded\\nActiveState=inactive\\nMainPID=0\\nDescription=%s|%s\\n' "$MDP_TEST_SECRET" "$PATH" ;;
  *)
    printf 'LoadState=not-found\\nActiveState=inactive\\nSubState=dead\\nUnitFileState=\\n'
    printf 'MainPID=0\\nDescription=%s\\n' "$4" ;;
esac
"""


def write_program(directory, name, text):
    path = directory / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def upstart(tmp_path, monkeypatch):
    bin_dir = tmp_path / "sbin"
    bin_dir.mkdir()
    write_program(bin_dir, "initctl", FAKE_INITCTL)
    monkeypatch.setattr(service, "PROGRAM_DIRS", [str(bin_dir)])
    with _host.roots(proc=TRUSTY_PROC):  # PID 1 is upstart's "init" there
        yield


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "comm").write_text("systemd\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_program(bin_dir, "systemctl", FAKE_SYSTEMCTL)
    monkeypatch.setattr(service, "PROGRAM_DIRS", [str(bin_dir)])
    with _host.roots(proc=str(proc)):
        yield


@pytest.fixture
def sysv(tmp_path, monkeypatch):
    """A non-systemd PID 1 with no initctl anywhere: LSB init scripts in a temporary /etc."""
    monkeypatch.setattr(service, "PROGRAM_DIRS", [str(tmp_path / "empty")])
    init_d = tmp_path / "etc" / "init.d"
    init_d.mkdir(parents=True)
    write_program(init_d, "running", '#!/bin/sh\n[ "$1" = status ] && echo "running is running" && exit 0\n')
    write_program(init_d, "stopped", '#!/bin/sh\n[ "$1" = status ] && echo "stopped is not running" && exit 3\n')
    write_program(init_d, "odd", '#!/bin/sh\nexit 4\n')
    with _host.roots(proc=TRUSTY_PROC, etc=str(tmp_path / "etc")):
        yield


def test_upstart_running_job(upstart):
    result = service.status("ssh")
    assert result == {"name": "ssh", "init": "upstart", "known": True, "active": True, "state": "running",
                      "pid": 812, "detail": {"goal": "start", "output": "ssh start/running, process 812"}}


def test_upstart_stopped_and_unknown_jobs(upstart):
    stopped = service.status("tty9")
    assert (stopped["known"], stopped["active"], stopped["state"], stopped["pid"]) == (True, False, "waiting", None)
    unknown = service.status("nosuch")
    assert (unknown["known"], unknown["active"]) == (False, False)


def test_upstart_hanging_status_times_out(upstart, monkeypatch):
    monkeypatch.setattr(service, "TIMEOUT", 0.5)
    with pytest.raises(RuntimeError) as err:
        service.status("hang")
    assert "did not answer" in str(err.value)


def test_systemd_active_unit(systemd):
    result = service.status("ssh.service")
    assert result["init"] == "systemd"
    assert (result["known"], result["active"], result["state"], result["pid"]) == (True, True, "active", 812)
    assert result["detail"]["UnitFileState"] == "enabled"


def test_systemd_unknown_unit(systemd):
    result = service.status("nosuch")
    assert (result["known"], result["active"], result["pid"]) == (False, False, None)


def test_programs_get_a_minimal_environment(systemd, monkeypatch):
    monkeypatch.setenv("MDP_TEST_SECRET", "do-not-leak")
    description = service.status("envcheck")["detail"]["Description"]
    secret, path = description.split("|")
    assert secret == ""
    assert path == _host.MINIMAL_ENV["PATH"]


def test_sysv_scripts_by_lsb_exit_code(sysv):
    running = service.status("running")
    assert (running["init"], running["known"], running["active"], running["state"]) == ("sysv", True, True, "running")
    assert running["detail"]["output"] == "running is running"
    stopped = service.status("stopped")
    assert (stopped["active"], stopped["state"], stopped["detail"]["exit_code"]) == (False, "stopped", 3)
    assert service.status("odd")["state"] == "unknown"
    missing = service.status("missing")
    assert (missing["known"], missing["active"]) == (False, False)


@pytest.mark.parametrize("name", [
    "", "-h", "--version", "../../../bin/sh", "ssh;reboot", "a b", "x" * 129, "ssh\n", "/etc/passwd",
    "$(reboot)", None, 5, ["ssh"],
])
def test_service_name_pattern_rejects(name, sysv):
    with pytest.raises(ValueError):
        service.status(name)


def test_service_name_pattern_accepts_real_unit_names(systemd):
    for name in ("ssh", "getty@tty1.service", "systemd-journald.service", "dbus.socket", "a:b_c-d.e"):
        assert service.status(name)["name"] == name


# --- service control (mutating), service.list, service.failed ------------------------------------

CONTROL_SYSTEMCTL = """#!/bin/sh
# A systemctl stand-in that records control actions in $0.log and lists units as 252 prints them.
case "$1" in
  start|stop|restart|reload) echo "$1 $2" >> "$0.log"; [ "$2" = broken ] && { echo "Job failed" >&2; exit 1; }; exit 0 ;;
  show) printf 'LoadState=loaded\\nActiveState=active\\nSubState=running\\nMainPID=99\\n' ;;
  list-units)
    case "$*" in
      *--failed*) printf 'nginx.service loaded failed failed A high performance web server\\n' ;;
      *) printf 'cron.service loaded active running Regular background program processing daemon\\n'
         printf 'nginx.service loaded failed failed A high performance web server\\n' ;;
    esac ;;
esac
"""

CONTROL_INITCTL = """#!/bin/sh
case "$1" in
  version) echo "initctl (upstart 1.12.1)" ;;
  status) echo "$2 start/running, process 900" ;;
  list) printf 'ssh start/running, process 812\\ntty9 stop/waiting\\nnetwork-interface (eth0) start/running\\n' ;;
  start|stop|restart|reload) echo "$1 $2" >> "$0.log" ;;
esac
"""


@pytest.fixture
def systemd_control(tmp_path, monkeypatch):
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "comm").write_text("systemd\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = write_program(bin_dir, "systemctl", CONTROL_SYSTEMCTL)
    monkeypatch.setattr(service, "PROGRAM_DIRS", [str(bin_dir)])
    with _host.roots(proc=str(proc)):
        yield tmp_path / "bin" / (program.name + ".log")


def test_systemd_control_runs_the_action_and_reports_the_state_after(systemd_control):
    for action in ("start", "stop", "restart", "reload"):
        result = getattr(service, action)("cron.service")
        assert (result["action"], result["init"], result["active"], result["pid"]) == (action, "systemd", True, 99)
    assert systemd_control.read_text().split("\n")[:4] == ["start cron.service", "stop cron.service",
                                                           "restart cron.service", "reload cron.service"]


def test_systemd_control_failure_says_why(systemd_control):
    with pytest.raises(RuntimeError) as err:
        service.restart("broken")
    assert "exit 1" in str(err.value) and "Job failed" in str(err.value)


def test_control_operations_are_marked_mutating_and_refused_by_default():
    from mdp_agent.registry import OperationError, load_default_registry

    registry = load_default_registry()
    for action in ("start", "stop", "restart", "reload"):
        with pytest.raises(OperationError) as err:
            registry.lookup("service." + action)
        assert err.value.code == "not_allowed"
        assert "mutating operations are disabled" in err.value.message
    assert load_default_registry(enable_mutating=True).lookup("service.restart").mutating is True
    assert not load_default_registry().lookup("service.list").mutating


@pytest.mark.parametrize("name", ["-h", "../x", "a b", "", None])
def test_control_checks_the_name_before_running_anything(name, systemd_control):
    with pytest.raises(ValueError):
        service.restart(name)
    assert not systemd_control.exists()


def test_systemd_list_and_failed(systemd_control):
    listed = service.list()
    assert listed["init"] == "systemd" and listed["count"] == 2 and listed["truncated"] is False
    assert listed["services"][0] == {"name": "cron.service", "load": "loaded", "active": "active", "sub": "running",
                                     "description": "Regular background program processing daemon"}
    failed = service.failed()
    assert failed == {"init": "systemd", "count": 1, "units": [
        {"name": "nginx.service", "load": "loaded", "active": "failed", "sub": "failed",
         "description": "A high performance web server"}]}


def test_upstart_list_and_control(tmp_path, monkeypatch):
    """upstart cannot run here: an initctl stand-in with upstart 1.12's output formats."""
    bin_dir = tmp_path / "sbin"
    bin_dir.mkdir()
    write_program(bin_dir, "initctl", CONTROL_INITCTL)
    monkeypatch.setattr(service, "PROGRAM_DIRS", [str(bin_dir)])
    with _host.roots(proc=TRUSTY_PROC):
        listed = service.list()
        assert listed["init"] == "upstart"
        assert listed["services"][:2] == [{"name": "ssh", "active": True, "state": "running", "pid": 812},
                                          {"name": "tty9", "active": False, "state": "waiting", "pid": None}]
        with pytest.raises(Exception) as err:
            service.failed()
        assert type(err.value).__name__ == "NotAvailable"
        assert service.restart("ssh")["action"] == "restart"
    assert (bin_dir / "initctl.log").read_text() == "restart ssh\n"


def test_sysv_control_runs_the_real_script(sysv, tmp_path):
    log = tmp_path / "actions"
    write_program(tmp_path / "etc" / "init.d", "recorder",
                  '#!/bin/sh\necho "$1" >> %s\n[ "$1" = status ] && exit 0\nexit 0\n' % log)
    assert service.restart("recorder")["active"] is True
    assert log.read_text() == "restart\nstatus\n"
    with pytest.raises(ValueError):
        service.start("nosuchscript")
    assert {"name": "recorder", "active": None, "state": None} in service.list()["services"]
