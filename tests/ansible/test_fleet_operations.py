"""Issue 12 on the booted test fleet (bullseye, bookworm, trixie): every new operation, the mutating
switch over real service control, and site operations deployed by the mdp_agent role.

1. deploy.yml with mdp_agent_operation_files (a good module, a broken one, one that would shadow
   `system.*`) and file_paths/cert_paths set: every new operation answers on each host, or says
   "not_available" (documented: no smartctl, no DMI in a container...); site operations load and the
   failures show in agent.stats; a restart is refused with the reason.
2. A changed site module written on the host and SIGHUP (systemctl reload): the new code answers.
3. deploy.yml again with mdp_agent_enable_mutating=true: service.restart really restarts a unit
   this test made (its MainPID and ActiveEnterTimestamp change).
Teardown removes the test unit and the site modules and deploys the defaults again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mdp_ansible import REPO, deploy

from mdp_controller import client

sys.path.insert(0, str(REPO / "tests" / "agent"))
from integration.harness import wait_for  # noqa: E402
from test_operations_more import EXAMPLE_ARGS, NEW_OPERATIONS  # noqa: E402

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

# A key store of this module's own: the shared fleet may have been booted afresh (new host keys)
# since this checkout's .known_machines was written, and deploy.yml rightly refuses to replace keys.
KNOWN = {}
CERT_DIR = "/etc/mdp-test-certs"
UNIT = "mdp-test-sleeper"
UNIT_TEXT = """[Unit]
Description=MDP fleet test: a harmless unit to restart
[Service]
ExecStart=/bin/sleep infinity
"""
SITE_GOOD = '''"""Fleet site checks."""
from mdp_operations import mutating


def hello(who="fleet"):
    """Say hello from a site module.

    who: a name. Returns {"hello": who, "version": 1}.
    """
    return {"hello": who, "version": VERSION}


@mutating
def touch():
    """Pretend to change something (mutating)."""
    return True


VERSION = 1
'''
SITE_BROKEN = "import mdp_no_such_module\n"
SITE_SHADOW = 'def info():\n    """A fake system.info."""\n    return "fake"\n'


def send(ips, operations, timeout=30):
    return client.send_sync(ips, operations, known_machines=KNOWN["dir"], timeout=timeout)


def wait_until(predicate, what, timeout=60):
    """The harness's one wait-on-a-condition, polled every 0.5 s (each poll is an ssh round trip)."""
    return wait_for(predicate, what, timeout, interval=0.5)


def unit_state(host):
    out = host.ssh(f"systemctl show -p MainPID -p ActiveEnterTimestamp -p ActiveState {UNIT}").stdout
    return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def site(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site-ops")
    KNOWN["dir"] = str(tmp / "known_machines")
    files = []
    for name, text in (("fleetcheck.py", SITE_GOOD), ("fleetbroken.py", SITE_BROKEN), ("system.py", SITE_SHADOW)):
        (tmp / name).write_text(text)
        files.append(str(tmp / name))
    common = {"mdp_agent_operation_files": files,
              "mdp_agent_extra_config": {"file_paths": "/etc", "cert_paths": "/etc/ssl/certs, " + CERT_DIR}}
    # A minbase host may have no CA store: give each one certificate to find (this machine's ISRG root).
    certificate = Path("/etc/ssl/certs/ISRG_Root_X1.pem").read_text()
    for host in fleet.hosts:
        host.ssh(f"mkdir -p {CERT_DIR} && cat > {CERT_DIR}/isrg-root-x1.pem <<'PEM'\n{certificate}PEM")
    for host in fleet.hosts:
        host.ssh(f"printf '%s' '{UNIT_TEXT}' > /etc/systemd/system/{UNIT}.service && systemctl daemon-reload"
                 f" && systemctl start {UNIT}")
    deploy(fleet, KNOWN["dir"], tmp, **common)
    yield fleet, tmp, common
    for host in fleet.hosts:
        host.ssh(f"systemctl stop {UNIT}; rm -f /etc/systemd/system/{UNIT}.service; systemctl daemon-reload;"
                 " rm -f /etc/mdp/operations.d/fleetcheck.py /etc/mdp/operations.d/fleetbroken.py"
                 f" /etc/mdp/operations.d/system.py; rm -rf {CERT_DIR}", check=False)
    deploy(fleet, KNOWN["dir"], tmp)   # the defaults again, for the rest of the suite


def test_every_new_operation_answers_on_each_suite(site):
    fleet, _, _ = site
    ips = [h.ip for h in fleet.hosts]
    suites = {h.ip: h.suite for h in fleet.hosts}
    asked = [{"name": n, "args": EXAMPLE_ARGS[n]} if n in EXAMPLE_ARGS else n for n in NEW_OPERATIONS]
    answers = {}
    # A few at a time: each host has 4 workers and a 10 s operation_timeout.
    for start in range(0, len(asked), 6):
        replies = send(ips, asked[start:start + 6], timeout=60)
        for ip, reply in replies.items():
            assert reply.get("operations"), (suites[ip], reply)
            for op in reply["operations"]:
                answers.setdefault(ip, {})[op["name"]] = op
    summary, wrong = {}, []
    for ip, ops in answers.items():
        assert set(ops) == set(NEW_OPERATIONS), suites[ip]
        for name, op in ops.items():
            error = op.get("error")
            if error is not None and error["code"] != "not_available":
                wrong.append((suites[ip], name, error))
            summary.setdefault(suites[ip], []).append(name if error is None else "%s (%s)" % (name, error["code"]))
        # What a booted systemd host must answer, whatever the suite.
        for name in ("packages.installed", "packages.upgradable", "service.failed", "service.list", "users.logins",
                     "kernel.sysctl", "network.routes", "network.dns", "files.stat", "files.certificates",
                     "logs.tail", "hardware.cpu", "clock.sync", "containers.list"):
            if ops[name].get("error") is not None:
                wrong.append((suites[ip], name, ops[name]["error"]))
    print("answered per suite:", json.dumps(summary, indent=1))
    bookworm = next(ip for ip, suite in suites.items() if suite == "bookworm")
    for name in ("service.list", "service.failed", "packages.upgradable", "clock.sync", "logs.kernel"):
        print("sample", name, json.dumps(answers[bookworm][name])[:600])
    assert not wrong, wrong   # every suite and operation at once, not only the first
    for ip, ops in answers.items():
        assert ops["service.list"]["result"]["init"] == "systemd"
        assert ops["packages.installed"]["result"]["total"] > 50
        assert ops["files.stat"]["result"]["sha256"]
        found = {c["subject_cn"] for c in ops["files.certificates"]["result"]["certificates"]}
        assert "ISRG Root X1" in found, suites[ip]


def test_site_operations_load_and_failures_are_counted(site):
    fleet, _, _ = site
    ips = [h.ip for h in fleet.hosts]
    replies = send(ips, [{"name": "fleetcheck.hello", "args": {"who": "ops"}}, "agent.stats", "system.info",
                         "fleetcheck.touch", "get_available_methods"])
    for ip, reply in replies.items():
        hello, stats, info, touch, methods = reply["operations"]
        assert hello["result"] == {"hello": "ops", "version": 1}, reply
        site_modules = stats["result"]["site_modules"]
        assert site_modules["loaded"] == ["fleetcheck.py"]
        assert site_modules["failed_count"] == 2
        assert "mdp_no_such_module" in site_modules["failed"]["fleetbroken.py"]
        assert "would shadow built-in operation" in site_modules["failed"]["system.py"]
        assert info["result"]["hostname"]   # the built-in, not the shadow
        assert touch["error"]["code"] == "not_allowed" and "mutating" in touch["error"]["message"]
        described = {m["name"]: m for m in methods["result"]}
        assert described["fleetcheck.hello"]["summary"] == "Say hello from a site module."
        assert described["report.subscribe"]["changes_state"] is True


def test_restart_is_refused_while_mutating_is_disabled(site):
    fleet, _, _ = site
    before = {h.ip: unit_state(h) for h in fleet.hosts}
    replies = send([h.ip for h in fleet.hosts], [{"name": "service.restart", "args": {"name": UNIT}}])
    for host in fleet.hosts:
        error = replies[host.ip]["operations"][0]["error"]
        assert error["code"] == "not_allowed"
        assert error["message"] == "service.restart changes the machine and mutating operations are disabled"
        assert unit_state(host)["MainPID"] == before[host.ip]["MainPID"]


def test_sighup_reloads_a_changed_site_module(site):
    fleet, _, _ = site
    for host in fleet.hosts:
        host.ssh("sed -i 's/^VERSION = 1$/VERSION = 2/' /etc/mdp/operations.d/fleetcheck.py"
                 " && systemctl reload mdp-agent")

    def reloaded():
        replies = send([h.ip for h in fleet.hosts], ["fleetcheck.hello"], timeout=10)
        return all((r["operations"][0].get("result") or {}).get("version") == 2 for r in replies.values())

    wait_until(reloaded, "every agent to answer from the changed module after SIGHUP")


def test_restart_really_restarts_when_the_role_enables_mutating(site):
    fleet, tmp, common = site
    deploy(fleet, KNOWN["dir"], tmp, mdp_agent_enable_mutating=True, **common)
    before = {h.ip: unit_state(h) for h in fleet.hosts}
    # Started before the first deploy, minutes ago: a restart now gets a later ActiveEnterTimestamp.
    assert all(s["ActiveState"] == "active" for s in before.values()), before
    replies = send([h.ip for h in fleet.hosts], [{"name": "service.restart", "args": {"name": UNIT}}])
    for host in fleet.hosts:
        op = replies[host.ip]["operations"][0]
        assert op.get("error") is None, (host.suite, op)
        assert op["result"]["action"] == "restart" and op["result"]["active"] is True
        after = unit_state(host)
        assert after["MainPID"] != before[host.ip]["MainPID"], host.suite
        assert after["ActiveEnterTimestamp"] != before[host.ip]["ActiveEnterTimestamp"], host.suite
        assert op["result"]["pid"] == int(after["MainPID"])
        print("sample service.restart", host.suite, json.dumps(op)[:600])
