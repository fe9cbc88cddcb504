"""The agent as a service sees it: signals, --help, config errors, and its key file on disk."""

from __future__ import annotations

import re
import signal
import socket
import stat
import subprocess

import pytest

from mdp_agent import __main__ as agent_main
from mdp_agent import protocol
from mdp_controller import cli

from .harness import OLDEST_PYTHON, PYTHON, run_mdp, signed_request, wait_for, write_config


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def run_agent(*args, umask=-1):
    return subprocess.run([PYTHON, "-m", "mdp_agent", *map(str, args)], capture_output=True, text=True,
                          timeout=30, umask=umask, check=False)


def test_sigterm_exits_0_promptly(spawn_agent):
    agent = spawn_agent("127.0.0.2")
    assert agent.stop(timeout=5) == 0
    assert "mdp-agent stopped" in agent.log()


def test_sigterm_does_not_wait_for_a_running_operation(spawn_agent, port):
    agent = spawn_agent("127.0.0.2")
    keys = protocol.KeyPair.from_text(agent.key_text)
    msg_id, datagrams = signed_request(keys, [{"name": "cpu.usage", "args": {"interval": 5}}])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagrams[0], (agent.ip, port))
        wait_for(lambda: agent.stats()["pending_operations"] == 1, "the 5 s operation to start")
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(30) == 0
        # It exited with the operation still running: the operation's reply was never sent.
        sock.setblocking(False)
        try:
            replies = [sock.recv(protocol.MAX_DATAGRAM) for _ in range(10)]
        except BlockingIOError:
            replies = []
    assert not any(protocol.peek_msg_id(r) == msg_id for r in replies)
    assert "mdp-agent stopped" in agent.log()


def test_sighup_reloads_the_allow_list_and_keeps_the_old_config_when_the_new_one_is_bad(spawn_agent, tmp_path):
    config = write_config(tmp_path / "agent.conf", allow="*")
    agent = spawn_agent("127.0.0.2", config=config)
    assert "load1" in agent.result("load.avg")

    write_config(config, allow="system.*, agent.*")
    agent.signal(signal.SIGHUP)

    def refused():
        item = agent.request(["load.avg"])["operations"][0]
        return item.get("error")
    error = wait_for(refused, "load.avg to be refused after SIGHUP")
    assert error == {"code": "not_allowed", "message": "load.avg is not matched by the agent's allow list"}
    assert agent.result("system.ping")["reply"] == "pong"

    offset = len(agent.log())
    config.write_text("[agent]\nallow = *\nno_such_setting = 1\n")
    agent.signal(signal.SIGHUP)
    agent.wait_for_log("SIGHUP: keeping the old config", after=offset)
    assert "unknown setting(s) in [agent]: no_such_setting" in agent.log()[offset:]
    assert agent.request(["load.avg"])["operations"][0]["error"]["code"] == "not_allowed"
    assert agent.running()


def _option_strings(parser):
    return [opt for action in parser._actions for opt in action.option_strings]


def test_agent_help_mentions_every_flag():
    out = run_agent("--help")
    assert out.returncode == 0, out.stderr
    for flag in _option_strings(agent_main.build_parser()):
        assert flag in out.stdout, flag
    assert "agent.key" in out.stdout and "SIGHUP" in out.stdout


def _subcommands():
    action = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_mdp_subcommand_help_mentions_every_flag(command):
    out = run_mdp(command, "--help")
    assert out.returncode == 0, out.stderr
    for flag in _option_strings(_subcommands()[command]):
        assert flag in out.stdout, flag


def test_mdp_help_lists_every_subcommand():
    out = run_mdp("--help")
    assert out.returncode == 0
    for command in _subcommands():
        assert re.search(rf"^\s+{command}\s", out.stdout, re.M), command


def test_first_start_writes_a_private_key_whatever_the_umask(tmp_path):
    state = tmp_path / "deep" / "state"
    out = run_agent("--config", "/nonexistent", "--state-dir", state, "--init-only", umask=0)
    assert out.returncode == 0, out.stderr
    key = state / "agent.key"
    assert out.stdout.strip() == str(key)
    assert re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())
    assert mode(key) == 0o600 and mode(state) == 0o700
    assert [p.name for p in state.iterdir()] == ["agent.key"]   # no temp files left behind

    text = key.read_text()
    key.chmod(0o644)
    state.chmod(0o755)
    assert run_agent("--config", "/nonexistent", "--state-dir", state, "--init-only").returncode == 0
    assert key.read_text() == text   # kept, not regenerated
    assert mode(key) == 0o600 and mode(state) == 0o700   # and tightened again


def test_config_errors_and_a_busy_port_are_named(tmp_path, port):
    bad = write_config(tmp_path / "agent.conf", port="abc")
    out = run_agent("--config", bad, "--state-dir", tmp_path / "state")
    assert (out.returncode, out.stderr.strip()) == (2, "mdp-agent: port must be an int, not 'abc'")

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.2", port))
        out = run_agent("--config", "/nonexistent", "--state-dir", tmp_path / "state", "--bind", "127.0.0.2",
                        "--port", port)
    assert out.returncode == 1
    assert out.stderr.strip().endswith(f"mdp-agent: cannot listen on 127.0.0.2:{port}: Address already in use")


@pytest.mark.skipif(OLDEST_PYTHON is None, reason="no old Python 3 under /root/.pyenv/versions")
def test_the_agent_serves_reports_and_stops_on_the_oldest_python(spawn_agent, spawn_monitor, tmp_path):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    agent = spawn_agent("127.0.0.2", flags=["--monitor", monitor.address, "--interval", "1"], python=OLDEST_PYTHON)
    agent.trust(monitor_keys)
    reply = agent.request(["system.ping", {"name": "process.top", "args": {"n": 2}}, "memory.info", "disk.io",
                           "network.interfaces", "filesystem.usage", "cpu.usage", "load.avg", "system.info",
                           {"name": "report.subscribe", "args": {"operations": ["process.count"], "every": 1}}])
    assert reply["status"], [op for op in reply["operations"] if "error" in op]
    assert reply["operations"][8]["result"]["python"] == OLDEST_PYTHON.split("/")[-3]   # e.g. 3.6.15
    wait_for(lambda: monitor.report_count(agent.ip, containing='"name":"process.count"') >= 1,
             "a report with the subscribed operation")
    assert agent.stop(timeout=5) == 0
