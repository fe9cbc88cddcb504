"""report.subscribe through the real CLI: subscribed operations join the reports the monitor stores,
survive an agent restart (they live in the state dir), and stop on unsubscribe."""

from __future__ import annotations

import json
import stat

from .harness import run_mdp, wait_for

TOP = {"name": "process.top", "args": {"n": 2}}


def subscribed_reports(monitor, ip, since=0.0):
    return monitor.report_count(ip, since=since, containing='"name":"process.count"')


def last_reports(monitor, ip, n):
    rows = monitor.query("SELECT body FROM reports WHERE ip = ? ORDER BY id DESC LIMIT ?", ip, n)
    return [[op["name"] for op in json.loads(row["body"])["operations"]] for row in rows]


def test_subscriptions_report_persist_across_restart_and_stop(spawn_agent, spawn_monitor, tmp_path,
                                                              known_machines, port):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    agent = spawn_agent("127.0.0.6", flags=["--monitor", monitor.address, "--interval", "1"]).trust(monitor_keys)

    def send(*args):
        out = run_mdp("send", "--known-machines", known_machines, "--port", port, "--json", agent.ip, *args)
        return out.returncode, json.loads(out.stdout)[agent.ip]

    code, reply = send("report.subscribe", "--args", json.dumps({"operations": ["process.count", TOP], "every": 1}))
    assert code == 0, reply
    assert reply["operations"][0]["result"] == [{"operation": "process.count", "every": 1.0},
                                                {"operation": TOP, "every": 1.0}]
    wait_for(lambda: subscribed_reports(monitor, agent.ip) >= 2, "two reports carrying process.count")
    latest = {row["name"]: row for row in monitor.query("SELECT * FROM latest WHERE ip = ?", agent.ip)}
    assert json.loads(latest["process.count"]["result"])["total"] > 0
    assert len(json.loads(latest["process.top"]["result"])) == 2
    state_file = agent.state_dir / "subscriptions.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600

    # Refusals are item errors, and refused subscriptions are not added.
    code, reply = send('{"name": "report.subscribe", "args": {"operations": ["no.such_operation"]}}',
                       '{"name": "report.subscribe", "args": {"operations": ["load.avg"], "every": 0.1}}')
    assert code == 1
    assert [op["error"]["code"] for op in reply["operations"]] == ["unknown_operation", "bad_arguments"]
    assert "every must be at least 1 seconds" in reply["operations"][1]["error"]["message"]

    assert agent.stop() == 0
    restarted_at = monitor.query("SELECT MAX(received_at) FROM reports")[0][0]
    agent.start()
    wait_for(lambda: subscribed_reports(monitor, agent.ip, since=restarted_at) >= 1,
             "a report carrying process.count from the restarted agent")
    code, reply = send("report.subscriptions")
    assert reply["operations"][0]["result"] == [{"operation": "process.count", "every": 1.0},
                                                {"operation": TOP, "every": 1.0}]

    code, reply = send("report.unsubscribe", "--args", '{"operations": ["process.count"]}')
    assert reply["operations"][0]["result"] == [{"operation": TOP, "every": 1.0}]
    count = monitor.report_count(agent.ip)
    # A report already running when the reply left may still carry it; the one after it may not.
    wait_for(lambda: monitor.report_count(agent.ip) >= count + 2, "two more reports")
    [names] = last_reports(monitor, agent.ip, 1)
    assert "process.count" not in names and "process.top" in names

    code, reply = send("report.unsubscribe")
    assert code == 0 and reply["operations"][0]["result"] == []
    assert json.loads(state_file.read_text()) == []


def test_a_subscription_with_bad_arguments_is_refused_at_once(spawn_agent):
    agent = spawn_agent("127.0.0.6")
    reply = agent.request([{"name": "report.subscribe",
                            "args": {"operations": [{"name": "system.ping", "args": {"no_such_argument": 1}}]}}])
    assert reply["operations"][0].get("error", {}).get("code") == "bad_arguments", reply["operations"][0]
    assert agent.result("report.subscriptions") == []
