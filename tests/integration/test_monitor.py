"""A real `mdp monitor` on 127.0.0.1 receiving real agents' reports: SQLite, `mdp status`, enrolment, `mdp keys`."""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import time

import pytest

from mdp_agent import protocol
from mdp_controller.keystore import KeyStore

from .harness import MONITOR_IP, run_mdp, wait_for

REPORT_FLAGS = ["--interval", "1"]


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def keys_cli(known_machines, *args):
    return run_mdp("keys", "--known-machines", known_machines, *args, umask=0)


def reporting_agent(spawn_agent, ip, monitor, enrol=False):
    """An agent reporting to monitor; with enrol, it starts without a key and agrees one by HELLO (once
    it has, the test's controller trusts it too, so agent.stats() can ask it)."""
    agent = spawn_agent(ip, flags=["--monitor", monitor.address, *REPORT_FLAGS] + (["--enrol"] if enrol else []),
                        trust=not enrol)
    if enrol:
        agent.enrolment()
        agent.trust()
    return agent


def test_reports_reach_sqlite_and_status_shows_each_known_machine(spawn_agent, spawn_monitor, tmp_path):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    started = time.time()
    for ip in ("127.0.0.2", "127.0.0.3"):
        reporting_agent(spawn_agent, ip, monitor).trust(monitor_keys)
    KeyStore(monitor_keys).put("127.0.0.8", protocol.generate_key_text())   # known, never reports
    for ip in ("127.0.0.2", "127.0.0.3"):
        wait_for(lambda ip=ip: monitor.report_count(ip) >= 2, f"two reports from {ip} in {monitor.db}")

    out = run_mdp("status", "--db", monitor.db, "--known-machines", monitor_keys, "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["ip"]: row for row in json.loads(out.stdout)}
    assert list(rows) == ["127.0.0.2", "127.0.0.3", "127.0.0.8"]
    for ip in ("127.0.0.2", "127.0.0.3"):
        row = rows[ip]
        assert started < row["last_seen"] <= time.time() and row["reports"] >= 2 and row["status"] is True
        latest = row["latest"]
        assert set(latest) == {"system.uptime", "load.avg", "memory.info", "filesystem.usage"}
        assert latest["system.uptime"]["result"]["seconds"] > 0
        assert "load1" in latest["load.avg"]["result"]
    assert rows["127.0.0.8"] == {"ip": "127.0.0.8", "first_seen": None, "last_seen": None, "reports": 0,
                                 "status": None, "interval": None, "up": False, "latest": {}}

    table = run_mdp("status", "--db", monitor.db, "--known-machines", monitor_keys)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["MACHINE", "STATE", "LAST", "REPORT"]
    assert lines[1].startswith("127.0.0.2") and " up " in lines[1] and " ok " in lines[1] and "load " in lines[1]
    assert lines[3].split()[:4] == ["127.0.0.8", "-", "never", "0"]


def test_enrolment_files_a_pending_key_that_accept_trusts_and_reject_refuses(spawn_agent, spawn_monitor, tmp_path):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys, umask=0)   # the key store must not depend on the umask
    newcomer = reporting_agent(spawn_agent, "127.0.0.3", monitor, enrol=True)
    stranger = reporting_agent(spawn_agent, "127.0.0.4", monitor, enrol=True)
    pending = monitor_keys / "pending"
    for agent in (newcomer, stranger):
        fingerprint, identity = agent.enrolment()
        assert identity == agent.ip                      # the address the monitor saw, echoed
        path = pending / f"{agent.ip}.txt"
        assert path.read_text() == agent.key_text        # both sides hold the one agreed key
        assert mode(path) == 0o600 and mode(agent.state_dir / "agent.key") == 0o600
        assert (pending / f"{agent.ip}.fingerprint").read_text() == fingerprint + "\n"
        assert ("pending", f"enrolment {fingerprint}; accept with `mdp keys accept {agent.ip} --fingerprint "
                f"{fingerprint}`") in monitor.events(agent.ip)
        assert (agent.state_dir / "enrolled").read_text() == \
            f"{monitor.address}\nfingerprint {fingerprint} identity {agent.ip}\n"
    assert mode(monitor_keys) == 0o700 and mode(pending) == 0o700
    listed = json.loads(keys_cli(monitor_keys, "list", "--json").stdout)
    assert [(r["ip"], r["state"], r["fingerprint"]) for r in listed] == [
        ("127.0.0.3", "pending", newcomer.enrolment()[0]), ("127.0.0.4", "pending", stranger.enrolment()[0])]
    # Nothing from a machine with only a pending key is stored.
    assert monitor.report_count(newcomer.ip) == 0

    accepted = keys_cli(monitor_keys, "accept", newcomer.ip)   # no --fingerprint: trust on first use
    assert accepted.returncode == 0, accepted.stderr
    trusted = monitor_keys / f"{newcomer.ip}.txt"
    assert accepted.stdout.strip() == f"accept: {newcomer.ip} -> {trusted}"
    assert trusted.read_text() == newcomer.key_text and mode(trusted) == 0o600
    assert not (pending / f"{newcomer.ip}.txt").exists() and not (pending / f"{newcomer.ip}.fingerprint").exists()
    wait_for(lambda: monitor.report_count(newcomer.ip) >= 1, "reports from the accepted machine")
    stats = newcomer.stats()
    assert stats["enrolled"] is True and stats["hellos"] >= 1

    rejected = keys_cli(monitor_keys, "reject", stranger.ip)
    assert rejected.returncode == 0, rejected.stderr
    assert (monitor_keys / "rejected" / f"{stranger.ip}.txt").read_text() == stranger.key_text
    assert mode(monitor_keys / "rejected" / f"{stranger.ip}.txt") == 0o600
    # The stranger has its key and says no more HELLOs; its reports stay refused.
    reports, hellos = stranger.stats()["reports"], stranger.stats()["hellos"]
    wait_for(lambda: stranger.stats()["reports"] >= reports + 2, "two more reports from the rejected machine")
    assert stranger.stats()["hellos"] == hellos and not (pending / f"{stranger.ip}.txt").exists()
    listed = json.loads(keys_cli(monitor_keys, "list", "--json").stdout)
    assert {(r["ip"], r["state"]) for r in listed} == {("127.0.0.3", "trusted"), ("127.0.0.4", "rejected")}
    assert monitor.report_count(stranger.ip) == 0

    again = keys_cli(monitor_keys, "accept", "127.0.0.5")
    assert again.returncode == 1
    assert again.stderr.strip() == f"mdp keys accept: no pending key for 127.0.0.5 in {pending}"


def test_accept_new_trusts_at_once_but_never_replaces_a_known_key(spawn_agent, spawn_monitor, tmp_path):
    monitor_keys = tmp_path / "monitor_keys"
    old_key = protocol.generate_key_text()
    KeyStore(monitor_keys).put("127.0.0.5", old_key)   # 127.0.0.5 was deployed once; now it enrols anew
    monitor = spawn_monitor(monitor_keys, accept_new=True)
    newcomer = reporting_agent(spawn_agent, "127.0.0.4", monitor, enrol=True)
    impostor = spawn_agent("127.0.0.5", flags=["--monitor", monitor.address, *REPORT_FLAGS, "--enrol"], trust=False)

    fingerprint, _ = newcomer.enrolment()
    trusted = monitor_keys / f"{newcomer.ip}.txt"
    assert trusted.read_text() == newcomer.key_text and mode(trusted) == 0o600
    enrolled = ("enrolled", f"enrolment {fingerprint} accepted on first use (--accept-new)")
    wait_for(lambda: enrolled in monitor.events(newcomer.ip), "the enrolled event (written after the key file)")
    wait_for(lambda: monitor.report_count(newcomer.ip) >= 1, "reports from the newcomer")

    # A HELLO from an address with a trusted key gets no answer: no key is agreed, none replaced.
    wait_for(lambda: monitor.events(impostor.ip), "the refused HELLO to be reported")
    assert "has a trusted key" in monitor.log()
    events = monitor.events(impostor.ip)
    assert {kind for kind, _ in events} == {"key_mismatch"}
    assert "sent a HELLO (a new enrolment) but has a trusted key" in events[0][1]
    assert (monitor_keys / f"{impostor.ip}.txt").read_text() == old_key   # never replaced
    assert not (impostor.state_dir / "agent.key").exists() and "enrolled with the monitor" not in impostor.log()
    assert monitor.report_count(impostor.ip) == 0


def test_revoke_stops_a_machine_at_the_running_monitor_and_in_send(spawn_agent, spawn_monitor, tmp_path, port):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    agent = reporting_agent(spawn_agent, "127.0.0.2", monitor).trust(monitor_keys)
    wait_for(lambda: monitor.report_count(agent.ip) >= 1, "a first report")

    revoked = keys_cli(monitor_keys, "revoke", agent.ip)
    assert revoked.returncode == 0, revoked.stderr
    assert not (monitor_keys / f"{agent.ip}.txt").exists()
    assert (monitor_keys / "rejected" / f"{agent.ip}.txt").read_text() == agent.key_text
    since = time.time()
    reports = agent.stats()["reports"]
    wait_for(lambda: agent.stats()["reports"] >= reports + 2, "two more reports from the agent")
    assert monitor.report_count(agent.ip, since=since) == 0

    out = run_mdp("send", "--known-machines", monitor_keys, "--port", port, "--json", agent.ip, "ping")
    assert out.returncode == 1
    assert json.loads(out.stdout)[agent.ip]["error"] == {"code": "no_key",
                                                         "message": f"no key for {agent.ip} in {monitor_keys}"}


def test_the_monitor_survives_junk_from_known_and_unknown_addresses(spawn_agent, spawn_monitor, tmp_path, port):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    agent = reporting_agent(spawn_agent, "127.0.0.2", monitor).trust(monitor_keys)
    wait_for(lambda: monitor.report_count(agent.ip) >= 1, "a first report")
    keys = protocol.KeyPair.from_text(agent.key_text)
    rng = random.Random(3)
    junk = [os.urandom(rng.randrange(0, 1500)) for _ in range(300)]
    junk += [b"MD" + os.urandom(rng.randrange(0, 1500)) for _ in range(300)]
    junk += [b"MD\x01\x04" + os.urandom(rng.randrange(0, 1500)) for _ in range(300)]   # HELLO-looking
    junk += [b"MD" + os.urandom(protocol.MAX_DATAGRAM - 2)]
    # Signed by the agent's key but not reports: a reply, a stale report, and a report that is not JSON.
    junk += protocol.encode(protocol.REPLY, {"status": True}, keys, protocol.TO_CONTROLLER, None,
                            int(time.time() * 1000))[1]
    junk += protocol.encode(protocol.REPORT, {"operations": []}, keys, protocol.TO_CONTROLLER, None,
                            int(time.time() * 1000) - 3_600_000)[1]
    junk += [protocol.encode_message(protocol.REPORT, b"\xffjunk", keys.to_controller, os.urandom(8),
                                     int(time.time() * 1000))[0]]
    for source in ("127.0.0.2", "127.0.0.7"):   # a known machine's address and a stranger's
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            for datagram in junk:
                sock.sendto(datagram, (MONITOR_IP, port))
    since = time.time()
    wait_for(lambda: monitor.report_count(agent.ip, since=since) >= 2, "reports after the junk")
    assert monitor.running() and "Traceback" not in monitor.log()
    assert not (monitor_keys / "pending").exists() and not (monitor_keys / "rejected").exists()


@pytest.mark.parametrize("db", ["missing_dir/mdp.db", "not_a_database.db"])
def test_an_unusable_database_is_named_not_a_traceback(tmp_path, port, db):
    (tmp_path / "not_a_database.db").write_text("this is not SQLite\n" * 100)
    out = run_mdp("monitor", "--listen", f"{MONITOR_IP}:{port}", "--db", tmp_path / db, "--known-machines",
                  tmp_path / "keys", timeout=20)
    assert "Traceback" not in out.stderr
    assert out.returncode != 0 and str(tmp_path / db) in out.stderr


def test_an_agent_reports_once_its_monitor_comes_up(spawn_agent, spawn_monitor, tmp_path, port):
    monitor_keys = tmp_path / "monitor_keys"
    agent = spawn_agent("127.0.0.2", flags=["--monitor", f"{MONITOR_IP}:{port}", *REPORT_FLAGS])
    agent.trust(monitor_keys)
    wait_for(lambda: agent.stats()["reports"] >= 2, "two reports sent to nobody")
    assert agent.result("system.ping")["reply"] == "pong"   # ICMP errors from the missing monitor are harmless
    monitor = spawn_monitor(monitor_keys)
    wait_for(lambda: monitor.report_count(agent.ip) >= 1, "a report once the monitor listens")
    assert "internal_error" not in agent.stats()["dropped"]
