"""mdp_send from Ansible, against a real agent process on loopback (no fleet needed).

Runs `ansible` exactly as an operator would from the project root, so ansible.cfg's paths are what
make both the FQCN and the short name resolve.
"""

from __future__ import annotations

import itertools
import json

import pytest
from mdp_ansible import run_tree

_calls = itertools.count()


def assert_failed(result, res):
    """A failure as every ansible-core line must show it: exit status and FAILED, with the cause in msg.
    (On ansible-core 2.21 a plugin that only copied AnsibleActionFail.result printed SUCCESS here.)"""
    assert result.returncode != 0, result.stdout
    assert res.get("msg"), res
    assert "FAILED" in result.stdout and "SUCCESS" not in result.stdout, result.stdout
    assert "exception" not in res and "Traceback" not in result.stdout + result.stderr, result.stdout


def send(agent, module, args, *flags, known_machines=None):
    """(process, this host's result) of one ad-hoc mdp_send."""
    tree = agent.state_dir.parent / f"tree-{next(_calls)}"
    result, last = run_tree(["ansible", "all", "-i", f"{agent.ip},", "-c", "local", "-m", module, "-a", args,
                             *flags], tree, known_machines=known_machines or agent.known_machines)
    return result, last.get(agent.ip, {})


@pytest.mark.parametrize("module", ["mdp.core.mdp_send", "mdp_send"])
def test_fqcn_and_short_name_answer(loopback_agent, module):
    result, res = send(loopback_agent, module, f"operations=ping,load.avg port={loopback_agent.port}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert res["status"] is True and res["changed"] is False
    assert [op["name"] for op in res["operations"]] == ["ping", "load.avg"]
    assert res["operations"][0]["result"]["reply"] == "pong"
    assert res["operations"][1]["result"]["load1"] >= 0


def test_operation_with_args_in_a_playbook(loopback_agent, tmp_path):
    """playbooks/send.yml passes {name, args} mappings through as they are."""
    result, last = run_tree(["ansible-playbook", "-i", f"{loopback_agent.ip},", "-c", "local", "playbooks/send.yml",
                             "-e", "mdp_send_hosts=all", "-e", f"mdp_send_port={loopback_agent.port}",
                             "-e", '{"mdp_send_operations": [{"name": "process.top", "args": {"n": 2}}]}'],
                            tmp_path / "tree", known_machines=loopback_agent.known_machines)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = last[loopback_agent.ip]["msg"]  # the debug task prints the operations' results
    assert shown[0]["name"] == "process.top"
    assert 1 <= len(shown[0]["result"]) <= 2 and "pid" in shown[0]["result"][0]


def test_no_key_fails_naming_the_directory(loopback_agent, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    result, res = send(loopback_agent, "mdp_send", f"operations=ping port={loopback_agent.port}", known_machines=empty)
    assert_failed(result, res)
    assert f"no key for {loopback_agent.ip} in {empty}" in res["msg"]


def test_wrong_key_fails_and_nothing_runs(loopback_agent, tmp_path):
    """A controller holding a different key: the agent cannot verify the request and stays silent."""
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    (other / f"{loopback_agent.ip}.txt").write_text("ab" * 32 + "\n")
    (other / f"{loopback_agent.ip}.txt").chmod(0o600)
    result, res = send(loopback_agent, "mdp_send", f"operations=ping port={loopback_agent.port} timeout=2",
                       known_machines=other)
    assert_failed(result, res)
    assert res["msg"].startswith(f"mdp_send to {loopback_agent.ip}:{loopback_agent.port}: ")
    assert "signature" in res["msg"] or "timeout" in res["msg"], res["msg"]


def test_unknown_operation_names_it(loopback_agent):
    result, res = send(loopback_agent, "mdp_send", f"operations=ping,no.such port={loopback_agent.port}")
    assert_failed(result, res)
    assert "no.such (unknown_operation" in res["msg"]


def test_malformed_operation_fails_before_sending(loopback_agent):
    result, res = send(loopback_agent, "mdp_send",
                       '{"operations": [{"name": "ping", "argz": {}}], "port": %d}' % loopback_agent.port)
    assert_failed(result, res)
    assert "operations[0]: unknown field(s) argz" in res["msg"]


def test_nobody_listening_times_out_with_the_cause(loopback_agent):
    result, res = send(loopback_agent, "mdp_send", f"operations=ping port={loopback_agent.port + 1} timeout=1")
    assert_failed(result, res)
    assert "timeout" in res["msg"]


@pytest.mark.parametrize("args, cause", [("port=70000", "port must be 1-65535, not 70000"),
                                         ("port=0", "port must be 1-65535, not 0"),
                                         ("timeout=0", "timeout must be more than 0 seconds, not 0")])
def test_out_of_range_arguments_are_argument_errors(loopback_agent, args, cause):
    before = loopback_agent.stats()["received"]
    result, res = send(loopback_agent, "mdp_send", f"operations=ping port={loopback_agent.port} {args}")
    assert_failed(result, res)
    assert res["msg"] == cause
    assert loopback_agent.stats()["received"] == before + 1   # only the second agent.stats arrived


def test_check_mode_runs_reads(loopback_agent):
    before = loopback_agent.stats()["requests"]
    reads, res = send(loopback_agent, "mdp_send", f"operations=ping port={loopback_agent.port}", "--check")
    assert reads.returncode == 0, reads.stdout
    assert res["operations"][0]["result"]["reply"] == "pong"
    assert loopback_agent.stats()["requests"] == before + 2   # the ping, then this agent.stats


@pytest.mark.parametrize("cluster_info", [
    {"cluster_machines": ["127.0.0.9"], "cluster_mode": [{"name": "sync_folders", "folder": "/srv/x"}]},
    {"cluster_leave": True},
])
def test_check_mode_sends_nothing_that_changes_the_cluster(loopback_agent, cluster_info):
    """Skipped, and the agent's own counters show no datagram reached it (not only the word SKIPPED)."""
    before = loopback_agent.stats()["received"]
    cluster, _ = send(loopback_agent, "mdp_send", json.dumps(
        {"operations": ["ping"], "cluster_info": cluster_info, "port": loopback_agent.port}), "--check")
    assert cluster.returncode == 0, cluster.stdout
    assert "SKIPPED" in cluster.stdout, cluster.stdout
    assert loopback_agent.stats()["received"] == before + 1   # only the second agent.stats arrived


def _action_plugin():
    import importlib.util

    from mdp_ansible import REPO

    path = REPO / "collections/ansible_collections/mdp/core/plugins/action/mdp_send.py"
    spec = importlib.util.spec_from_file_location("mdp_send_action", path)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    return plugin


def test_check_mode_holds_back_mutating_operations(monkeypatch):
    """The plugin asks the agent's own registry which operations change the host."""
    from mdp_agent.registry import Registry

    plugin = _action_plugin()
    registry = Registry(enable_mutating=True)
    registry.register("system.ping", lambda: "pong")
    registry.register("t.restart", lambda name: None, mutating=True)
    registry.register("t.remember", lambda: None, changes_state=True)
    monkeypatch.setattr(plugin, "load_default_registry", lambda enable_mutating: registry)
    assert plugin.mutating_operations(["system.ping", {"name": "t.restart", "args": {"name": "x"}}, "t.remember"]) == [
        "t.restart", "t.remember"]
    assert plugin.mutating_operations(["system.ping", "no.such"]) == []


def test_check_mode_holds_back_the_shipped_service_control_and_subscriptions():
    """The real registry, as the controller loads it: service control is mutating, report.subscribe
    and report.unsubscribe change the agent's state; reads pass."""
    plugin = _action_plugin()
    asked = ["system.ping", "service.status", {"name": "service.restart", "args": {"name": "cron"}},
             "service.stop", "report.subscribe", "report.unsubscribe", "report.subscriptions", "agent.stats"]
    assert plugin.mutating_operations(asked) == ["service.restart", "service.stop", "report.subscribe",
                                                 "report.unsubscribe"]
