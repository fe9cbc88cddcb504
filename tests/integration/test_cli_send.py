"""`mdp send` against real agents: output forms, exit status, and errors that name the machine and the cause."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import subprocess
import time

import pytest

from mdp_agent import protocol
from mdp_controller.keystore import KeyStore

from .harness import PYTHON, mdp_env, raw_datagram, receive_reply, run_mdp, signed_request, write_config


def send(known_machines, port, *args, timeout=10):
    return run_mdp("send", "--known-machines", known_machines, "--port", port, "--timeout", timeout, *args)


def test_json_maps_each_ip_to_its_reply_and_exits_0_when_all_succeed(spawn_agent, known_machines, port):
    spawn_agent("127.0.0.2")
    spawn_agent("127.0.0.3")
    out = send(known_machines, port, "--json", "127.0.0.2,127.0.0.3", "system.ping", "load.avg")
    assert out.returncode == 0, out.stderr
    replies = json.loads(out.stdout)   # exactly one JSON document
    assert list(replies) == ["127.0.0.2", "127.0.0.3"]
    for reply in replies.values():
        assert reply["status"] is True
        assert [op["name"] for op in reply["operations"]] == ["system.ping", "load.avg"]
        assert reply["operations"][0]["result"]["reply"] == "pong"
        assert set(reply["operations"][1]["result"]) >= {"load1", "load5", "load15"}

    every = send(known_machines, port, "--json", "all", "ping")
    assert every.returncode == 0, every.stderr
    assert sorted(json.loads(every.stdout)) == ["127.0.0.2", "127.0.0.3"]


def test_table_shows_each_machine_and_operation(spawn_agent, known_machines, port):
    """A failed machine's block goes to stderr, the summary to stdout (the convention --help states)."""
    spawn_agent("127.0.0.2")
    out = send(known_machines, port, "127.0.0.2", "system.ping", "no.such_operation")
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[0].split() == ["127.0.0.2", "FAILED"]
    assert re.match(r"\s+system\.ping\s+\{\"reply\":\"pong\"", lines[1])
    assert re.match(r"\s+no\.such_operation\s+ERROR unknown_operation: no operation named no\.such_operation",
                    lines[2])
    assert out.stdout.splitlines() == ["1 machine(s): 0 ok, 1 failed"]


def test_ok_lines_go_to_stdout_and_failure_lines_to_stderr(spawn_agent, known_machines, port):
    spawn_agent("127.0.0.2")
    KeyStore(known_machines).put("127.0.0.3", protocol.generate_key_text())   # nobody answers there
    out = send(known_machines, port, "127.0.0.2,127.0.0.3", "system.ping", timeout=1)
    assert out.returncode == 1
    assert out.stdout.splitlines()[0].split() == ["127.0.0.2", "OK"]
    assert "127.0.0.3" not in out.stdout and "FAILED" not in out.stdout
    assert out.stdout.splitlines()[-1] == "2 machine(s): 1 ok, 1 failed"
    assert out.stderr.startswith("127.0.0.3  FAILED  ") and "timeout" in out.stderr, out.stderr
    assert "127.0.0.2" not in out.stderr
    assert "failures" in run_mdp("send", "--help").stdout.replace("\n", " ")


def test_version_names_the_package_and_protocol():
    from mdp_agent import __version__

    out = run_mdp("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"mdp {__version__} (protocol {protocol.PROTOCOL_VERSION})"


@pytest.mark.parametrize("operation", ["no such", "a.b.c", "x" * 65, "1ping", "", '{"name": "ping; rm"}',
                                       '{"name": "%s"}' % ("y" * 65)])
def test_impossible_operation_names_are_refused_before_anything_is_sent(spawn_agent, known_machines, port,
                                                                         operation):
    agent = spawn_agent("127.0.0.2")
    before = agent.stats()["received"]
    out = send(known_machines, port, "127.0.0.2", "ping", operation)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("mdp: bad OPERATION ") and "mdp ops" in out.stderr, out.stderr
    assert out.stdout == ""
    # Only the second agent.stats request itself arrived in between: `mdp send` sent nothing.
    assert agent.stats()["received"] == before + 1


def test_unknown_operation_is_an_item_error_and_the_others_still_run(spawn_agent, known_machines, port):
    spawn_agent("127.0.0.2")
    out = send(known_machines, port, "--json", "127.0.0.2", "system.ping", "no.such_operation", "memory.info")
    assert out.returncode == 1
    reply = json.loads(out.stdout)["127.0.0.2"]
    assert reply["status"] is False
    ping, unknown, memory = reply["operations"]
    assert ping == {"name": "system.ping", "result": ping["result"]} and ping["result"]["reply"] == "pong"
    assert unknown == {"name": "no.such_operation",
                       "error": {"code": "unknown_operation", "message": "no operation named no.such_operation"}}
    assert memory["result"]["total"] > 0


def test_missing_key_and_dead_agent_are_named_per_machine(spawn_agent, known_machines, port):
    spawn_agent("127.0.0.2")
    # 127.0.0.8 has a key but no agent; 127.0.0.7 has neither.
    KeyStore(known_machines).put("127.0.0.8", protocol.generate_key_text())
    # 8 s: well past the longest first wait (2 s * 1.5), so the retransmission happens however slow the
    # machine is; what is asserted is that it happened, not when.
    out = send(known_machines, port, "--json", "127.0.0.2,127.0.0.7,127.0.0.8", "ping", timeout=8)
    assert out.returncode == 1
    replies = json.loads(out.stdout)
    assert replies["127.0.0.2"]["status"] is True
    assert replies["127.0.0.7"] == {"status": False, "operations": [], "cluster_info": {},
                                    "error": {"code": "no_key", "message": f"no key for 127.0.0.7 in {known_machines}"}}
    timeout = replies["127.0.0.8"]
    assert timeout["status"] is False
    assert timeout["error"]["code"] == "timeout"
    match = re.match(rf"no reply from 127\.0\.0\.8:{port} after (\d+) tries in 8 s", timeout["error"]["message"])
    assert match, timeout["error"]
    assert int(match.group(1)) >= 2   # it retransmitted before giving up


def _agent_with_wrong_key_in_store(spawn_agent, known_machines, tmp_path):
    """An agent the controller holds a WRONG key for; agent.known_machines keeps the right one for checks."""
    agent = spawn_agent("127.0.0.2", trust=False)
    KeyStore(known_machines).put("127.0.0.2", protocol.generate_key_text())
    agent.known_machines = tmp_path / "right_keys"
    agent.trust()
    return agent


def test_wrong_key_in_store_is_named_as_a_cause_and_the_agent_counts_bad_signatures(spawn_agent, known_machines,
                                                                                     port, tmp_path):
    agent = _agent_with_wrong_key_in_store(spawn_agent, known_machines, tmp_path)
    out = send(known_machines, port, "--json", "127.0.0.2", "ping", timeout=0.5)
    assert out.returncode == 1
    reply = json.loads(out.stdout)["127.0.0.2"]
    # The agent stays silent towards a request it cannot verify, so the timeout lists the key as a suspect.
    assert reply["status"] is False
    assert reply["error"]["code"] == "timeout"
    assert reply["error"]["message"].startswith(f"no reply from 127.0.0.2:{port}") and "key store" in reply["error"]["message"]
    stats = agent.stats()
    assert stats["dropped"]["bad_signature"] >= 1 and stats["requests"] == 1   # refused; only agent.stats ran


def test_clock_skew_gets_a_signed_refusal_saying_by_how_much(spawn_agent, port):
    agent = spawn_agent("127.0.0.2")
    keys = protocol.KeyPair.from_text(agent.key_text)
    msg_id, datagrams = signed_request(keys, ["system.ping"], timestamp_ms=int(time.time() * 1000) - 300_000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagrams[0], (agent.ip, port))
        reply = receive_reply(sock, keys, msg_id)   # verified with the agent's key
    assert reply["status"] is False and reply["operations"] == []
    error = reply["error"]
    assert error["code"] == "clock_skew"
    assert re.match(r"message timestamp is 30\d\.\d s behind this machine's clock \(window 60 s\)", error["message"])
    assert -310 < error["skew_seconds"] <= -300
    stats = agent.stats()
    assert stats["dropped"]["clock_skew"] == 1 and stats["requests"] == 1   # only the stats request ran


def test_unsupported_version_from_a_key_holder_gets_a_clear_answer(spawn_agent, port):
    """An MDP/1 controller holding the key gets an answer it can read: one MDP/1 datagram (clear JSON
    under MDP/1's HMAC) carrying only the refusal. A future version 3 gets a sealed MDP/2 refusal."""
    agent = spawn_agent("127.0.0.2")
    keys = protocol.KeyPair.from_text(agent.key_text)
    msg_id = b"version1"
    datagram = raw_datagram(keys, body=b'{"version": "1.0", "operations": ["ping"]}', msg_id=msg_id, version=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        sock.sendto(datagram, (agent.ip, port))
        answer, _ = sock.recvfrom(protocol.MAX_DATAGRAM)
        head, body, mac = answer[:26], answer[26:-32], answer[-32:]
        key = protocol.legacy_direction_key(keys.key, protocol.TO_CONTROLLER)
        assert hmac.compare_digest(hmac.new(key, head + body, hashlib.sha256).digest(), mac)
        assert protocol.HEADER.unpack(head)[1:4] == (1, protocol.REPLY, 0) and head[10:18] == msg_id
        reply = json.loads(body)
        assert reply["error"]["code"] == "unsupported_version" and reply["error"]["supported"] == [2]
        assert reply["error"]["message"] == "protocol version 1 is not supported; this side speaks 2"
        assert reply["operations"] == [] and set(reply) == {"status", "version", "operations", "cluster_info", "error"}
        future = raw_datagram(keys, body=b'{"version": "3.0", "operations": ["ping"]}', msg_id=b"version3", version=3)
        sock.sendto(future, (agent.ip, port))
        reply = receive_reply(sock, keys, b"version3")
    assert reply["error"]["message"] == "protocol version 3 is not supported; this side speaks 2"


@pytest.mark.parametrize("args", [["not-an-ip", "ping"], ["127.0.0.2", "{bad json"], ["127.0.0.2"],
                                  ["127.0.0.2", '{"name": "cpu.usage", "args": {"interval": NaN}}']])
def test_bad_usage_exits_2(known_machines, port, args):
    out = send(known_machines, port, *args)
    assert out.stderr.startswith("mdp: ")   # a clear message naming the cause...
    assert out.returncode == 2              # ...and the documented exit status


@pytest.mark.parametrize("flag,value", [("--port", "70000"), ("--port", "0"), ("--max-datagram", "100"),
                                        ("--timeout", "0"), ("--timeout", "-1"), ("--concurrency", "0")])
def test_bad_flag_values_are_refused_as_usage_errors(known_machines, port, flag, value):
    KeyStore(known_machines).put("127.0.0.2", protocol.generate_key_text())
    # The last --port/--timeout given wins; the short timeout only matters if a bad value is wrongly accepted.
    out = run_mdp("send", "--known-machines", known_machines, "--port", port, "--timeout", "1", flag, value,
                  "127.0.0.2", "ping", timeout=30)
    assert "Traceback" not in out.stderr
    assert out.returncode == 2 and flag in out.stderr, out.stderr


def test_an_agent_on_the_wildcard_address_answers_for_each_of_its_addresses(spawn_agent, known_machines, port):
    # The wildcard bind holds the session's random port on every address, for this test only; all
    # traffic still goes to 127.0.0.2, which the kernel answers from 127.0.0.1 (the route's source).
    agent = spawn_agent("0.0.0.0", trust=False)
    KeyStore(known_machines).put("127.0.0.2", agent.key_text)
    out = send(known_machines, port, "--json", "127.0.0.2", "ping", timeout=2)
    assert json.loads(out.stdout)["127.0.0.2"]["status"] is True


def test_ops_from_a_machine_lists_only_what_its_allow_list_permits(spawn_agent, known_machines, port, tmp_path):
    config = write_config(tmp_path / "agent.conf", allow="system.*, get_available_methods")
    spawn_agent("127.0.0.2", config=config)
    out = run_mdp("ops", "--from", "127.0.0.2", "--known-machines", known_machines, "--port", port, "--json")
    assert out.returncode == 0, out.stderr
    described = {op["name"]: op for op in json.loads(out.stdout)}
    assert {"get_available_methods", "system.ping", "system.uptime"} <= set(described)
    assert all(name.startswith("system.") or name == "get_available_methods" for name in described), described
    assert described["system.ping"]["summary"] == "Liveness check that does no work."
    refused = send(known_machines, port, "--json", "127.0.0.2", "load.avg")
    assert json.loads(refused.stdout)["127.0.0.2"]["operations"][0]["error"]["code"] == "not_allowed"


def test_ops_without_a_machine_lists_the_agents_own_and_the_mutating_operations_with_their_flags():
    """`mdp ops` from the controller's own registry: agent-internal operations are described too."""
    out = run_mdp("ops", "--json")
    assert out.returncode == 0, out.stderr
    described = {op["name"]: op for op in json.loads(out.stdout)}
    assert described["report.subscribe"]["changes_state"] is True
    assert described["report.subscribe"]["summary"].startswith("Report operations to the monitoring host")
    assert described["service.restart"]["mutating"] is True and described["agent.stats"]["changes_state"] is False
    table = run_mdp("ops").stdout
    assert any(line.startswith("service.restart") and line.endswith("[mutating]") for line in table.splitlines())
    assert any(line.startswith("report.unsubscribe") and line.endswith("[changes agent state]")
               for line in table.splitlines())


# What `mdp send` must not load (issue 11: its start-up is most of its latency). asyncio brings ssl,
# concurrent.futures, subprocess and logging; the others belong to the monitor, the web side, `mdp
# ops` or the agent's own AES-GCM.
NOT_FOR_SEND = ("asyncio", "ssl", "sqlite3", "logging", "concurrent.futures", "subprocess", "ctypes",
                "prometheus_client", "mdp_agent.registry", "mdp_controller.collector", "mdp_controller.storage",
                "mdp_controller.web", "mdp_controller.metrics", "mdp_controller.cluster")


def test_send_loads_only_what_sending_needs(spawn_agent, known_machines, port):
    """The real CLI entry point in a fresh interpreter, against a real agent: it answers, and none of
    NOT_FOR_SEND was imported on the way."""
    spawn_agent("127.0.0.2")
    code = ("import sys\nfrom mdp_controller.cli import main\n"
            f"status = main(['send', '--json', '--known-machines', {str(known_machines)!r}, '--port', '{port}', "
            "'127.0.0.2', 'ping'])\n"
            f"print(sorted(m for m in {NOT_FOR_SEND!r} if m in sys.modules), file=sys.stderr)\n"
            "sys.exit(status)\n")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=mdp_env())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["127.0.0.2"]["status"] is True
    assert out.stderr.strip().splitlines()[-1] == "[]", out.stderr


def test_help_lists_every_command_and_each_command_has_its_help():
    """Lazy imports must not cost the help: every command is listed and documents itself."""
    out = run_mdp("--help")
    assert out.returncode == 0, out.stderr
    commands = ("send", "monitor", "status", "ops", "keys", "cluster")
    for command in commands:
        assert re.search(rf"^\s+{command}\s+\S", out.stdout, re.MULTILINE), (command, out.stdout)
    for command in commands:
        page = run_mdp(command, "--help")
        assert page.returncode == 0 and page.stdout.startswith(f"usage: mdp {command} "), page.stderr
    assert "--http" in run_mdp("monitor", "--help").stdout and "--since" in run_mdp("status", "--help").stdout
