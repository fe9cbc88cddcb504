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
