"""The transport against an attacker, with real agent and monitor processes on loopback.

Forged-source replays are made by sending captured datagrams from a socket bound to the victim's
address (loopback gives us any 127.x address), so the agent sees exactly what a forged source shows.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import threading
import time

from mdp_agent import kex, protocol
from mdp_controller.keystore import KeyStore

from .harness import PYTHON, REPO, free_port, receive_reply, run_mdp, signed_request, wait_for

VICTIM_IP = "127.0.0.50"


def _drain(sock: socket.socket, settle: float = 0.5) -> int:
    """Bytes that arrive at sock until it has been quiet for `settle` seconds."""
    sock.settimeout(settle)
    total = 0
    while True:
        try:
            data, _ = sock.recvfrom(protocol.MAX_DATAGRAM)
        except TimeoutError:
            return total
        total += len(data)


def _capture_big_exchange(agent, port):
    """A real controller's exchange for a multi-datagram reply: its request and its RESEND (token)."""
    keys = protocol.KeyPair.from_text(agent.key_text)
    msg_id, request = signed_request(keys, ["get_available_methods", {"name": "process.top", "args": {"n": 100}}])
    client = protocol.Endpoint(protocol.TO_CONTROLLER, lambda ip, m: keys if m == msg_id else None)
    captured = list(request)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for datagram in request:
            sock.sendto(datagram, (agent.ip, port))
        done = False
        while not done:
            data, addr = sock.recvfrom(protocol.MAX_DATAGRAM)
            for event in client.feed(data, addr, int(time.time() * 1000), time.monotonic()):
                done = done or isinstance(event, protocol.Message)
            for to, datagram in client.datagrams_to_send():
                captured.append(datagram)
                sock.sendto(datagram, to)
    return keys, captured


def test_captured_traffic_replayed_from_a_forged_source_draws_at_most_3x_its_bytes(spawn_agent, port):
    agent = spawn_agent("127.0.0.2")
    keys, captured = _capture_big_exchange(agent, port)
    _, stale = signed_request(keys, ["system.ping"], timestamp_ms=int(time.time() * 1000) - 3_600_000)
    replay = captured + stale
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim:
        victim.bind((VICTIM_IP, 0))
        sent = 0
        for _ in range(20):
            for datagram in replay:
                victim.sendto(datagram, (agent.ip, port))
                sent += len(datagram)
        received = _drain(victim)
    print(f"forged-source replay: sent {sent} bytes, the victim received {received} ({received / sent:.2f}x)")
    assert received <= protocol.AMPLIFICATION_FACTOR * sent
    assert agent.stats()["requests"] == 2   # the captured request and this stats request: nothing ran again


def test_a_fresh_request_whose_forged_copy_arrives_first_draws_at_most_3x(spawn_agent, port):
    """The race an on-path attacker can win: its copy of a request, sent before the real one arrives."""
    agent = spawn_agent("127.0.0.2")
    keys = protocol.KeyPair.from_text(agent.key_text)
    _, request = signed_request(keys, ["get_available_methods"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim:
        victim.bind((VICTIM_IP, 0))
        sent = 0
        for _ in range(10):
            for datagram in request:
                victim.sendto(datagram, (agent.ip, port))
                sent += len(datagram)
        received = _drain(victim)
    print(f"forged first copy: sent {sent} bytes, the victim received {received}")
    assert 0 < received <= protocol.AMPLIFICATION_FACTOR * sent


def _rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _partial_flood(keys, direction_key, kind, count, body, n, target, sources):
    """n validly signed first chunks of `count`-chunk messages, from the given source addresses."""
    socks = []
    for ip in sources:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, 0))
        socks.append(sock)
    now = int(time.time() * 1000)
    for i in range(n):
        head = protocol.HEADER.pack(protocol.MAGIC, protocol.PROTOCOL_VERSION, kind, 0, 0, 0, count,
                                    os.urandom(8), now)
        try:
            socks[i % len(socks)].sendto(protocol.seal_datagram(direction_key, head, body), target)
        except OSError:
            pass
    for sock in socks:
        sock.close()


def test_a_key_holders_flood_of_partial_requests_keeps_the_agent_small_and_answering(spawn_agent, port):
    agent = spawn_agent("127.0.0.2")
    keys = protocol.KeyPair.from_text(agent.key_text)
    agent.stats()
    before = _rss_mib(agent.pid)
    answered, failures = [], []

    def ping_while_flooding():
        for _ in range(20):
            reply = agent.request(["system.ping"], timeout=10)
            (answered if reply["status"] else failures).append(reply)

    pinger = threading.Thread(target=ping_while_flooding)
    pinger.start()
    sources = ["127.0.0.2", "127.0.0.60", "127.0.0.61", "127.0.0.62"]
    body = b"z" * (protocol.DEFAULT_MAX_DATAGRAM - protocol.OVERHEAD)
    _partial_flood(keys, keys.to_agent, protocol.REQUEST, 3600, body, 8000, (agent.ip, port), sources)
    _partial_flood(keys, keys.to_agent, protocol.REQUEST, 65535, b"", 2000, (agent.ip, port), sources)
    pinger.join()
    after = _rss_mib(agent.pid)
    stats = agent.stats()
    print(f"agent under a partial-message flood: RSS {before:.1f} -> {after:.1f} MiB, "
          f"{len(answered)}/20 pings answered, dropped {stats['dropped']}")
    assert not failures and len(answered) == 20
    assert after - before <= protocol.AGENT_REASSEMBLY_BYTES_TOTAL / 2 ** 20 + 30
    assert stats["dropped"].get("bad_header", 0) >= 1000   # the impossible chunk counts, refused at once


def test_a_flood_of_partial_reports_keeps_the_monitor_small_and_storing(spawn_agent, spawn_monitor, tmp_path, port):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    agent = spawn_agent("127.0.0.2", flags=["--monitor", monitor.address, "--interval", "1"])
    agent.trust(monitor_keys)
    wait_for(lambda: monitor.report_count(agent.ip) >= 2, "first reports", timeout=20)
    keys = protocol.KeyPair.from_text(agent.key_text)
    before = _rss_mib(monitor.pid)
    body = b"r" * (protocol.DEFAULT_MAX_DATAGRAM - protocol.OVERHEAD)
    target = ("127.0.0.1", port)
    _partial_flood(keys, keys.to_controller, protocol.REPORT, 3600, body, 8000, target, ["127.0.0.2"])
    _partial_flood(keys, keys.to_controller, protocol.REPORT, 65535, b"", 2000, target, ["127.0.0.2"])
    stored = monitor.report_count(agent.ip)
    wait_for(lambda: monitor.report_count(agent.ip) >= stored + 3, "reports to keep being stored", timeout=30)
    after = _rss_mib(monitor.pid)
    print(f"monitor under a partial-report flood: RSS {before:.1f} -> {after:.1f} MiB")
    assert after - before <= protocol.REASSEMBLY_BYTES_TOTAL / 2 ** 20 + 30


def test_forged_hellos_at_1500_per_s_do_not_stop_a_real_agents_reports(spawn_agent, spawn_monitor, tmp_path, port):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    agent = spawn_agent("127.0.0.2", flags=["--monitor", monitor.address, "--interval", "1"])
    agent.trust(monitor_keys)
    wait_for(lambda: agent.stats()["reports_acked"] >= 2, "first ACKs", timeout=20)
    start_stats = agent.stats()
    sources = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(500)]   # forged sources: all strangers
    socks = []
    for ip in sources:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, 0))
        socks.append(sock)
    hellos = []
    rng = random.Random(8)
    for i in range(600):   # valid public values (squares lie in the order-q subgroup): each costs a key agreement
        public = kex.encode_int(pow(rng.getrandbits(3000) | 2, 2, kex.FFDHE3072_P))
        hellos.append(protocol.encode_hello(public, os.urandom(8), int(time.time() * 1000)))
    log_before = len(monitor.log())
    sent, began = 0, time.monotonic()
    while time.monotonic() - began < 10:   # 10 s at 1,500 HELLOs a second
        second = time.monotonic()
        for i in range(1500):
            socks[sent % len(socks)].sendto(hellos[sent % len(hellos)], ("127.0.0.1", port))
            sent += 1
        wait_for(lambda: time.monotonic() - second >= 1.0, "the next second", timeout=5, interval=0.01)
    for sock in socks:
        sock.close()
    wait_for(lambda: agent.stats()["spooled_reports"] == 0, "the agent's reports to be ACKed", timeout=60)
    stats = agent.stats()
    made = stats["reports"] - start_stats["reports"]
    acked = stats["reports_acked"] - start_stats["reports_acked"]
    pending = KeyStore(monitor_keys).count("pending")
    grew = len(monitor.log()) - log_before
    print(f"{sent} forged HELLOs in {time.monotonic() - began:.1f} s: {acked}/{made} reports ACKed, "
          f"{pending} pending keys, monitor log grew {grew} bytes")
    assert acked >= 0.99 * made and made >= 8
    assert pending <= 256
    assert grew < 20_000 and "Traceback" not in monitor.log()


def test_fingerprints_guard_acceptance_and_an_enrolled_agent_stops_saying_hello(spawn_agent, spawn_monitor,
                                                                              tmp_path, port):
    monitor_keys = tmp_path / "monitor_keys"
    monitor = spawn_monitor(monitor_keys)
    flags = ["--monitor", monitor.address, "--interval", "1", "--enrol"]
    agent = spawn_agent("127.0.0.3", flags=flags, trust=False)
    store = KeyStore(monitor_keys)
    fingerprint, _ = agent.enrolment()
    listed = json.loads(run_mdp("keys", "list", "--json", "--known-machines", monitor_keys).stdout)
    assert [(r["ip"], r["state"], r["fingerprint"]) for r in listed] == [(agent.ip, "pending", fingerprint)]
    wrong = run_mdp("keys", "accept", agent.ip, "--fingerprint", "AAAA-AAAA-AAAA-AAAA", "--known-machines", monitor_keys)
    assert wrong.returncode == 1 and "fingerprint" in wrong.stderr and store.get_text(agent.ip) is None

    # A forged HELLO from the agent's address replaces the pending enrolment (one per address, the
    # latest); the agent's fingerprint then no longer matches, so accepting with it refuses.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((agent.ip, 0))
        sock.sendto(protocol.encode_hello(kex.KeyAgreement().public_bytes, os.urandom(8), int(time.time() * 1000)),
                    ("127.0.0.1", port))
        sock.settimeout(10)
        welcome = sock.recv(2048)   # answered like any enrolment: the forger holds a key with the monitor
    assert welcome[3] == protocol.WELCOME and len(welcome) <= protocol.AMPLIFICATION_FACTOR * protocol.HELLO_SIZE
    wait_for(lambda: store.fingerprint(agent.ip, "pending") not in (None, fingerprint), "the forged enrolment")
    assert store.get_text(agent.ip, "pending") != agent.key_text.strip()
    refused = run_mdp("keys", "accept", agent.ip, "--fingerprint", fingerprint, "--known-machines", monitor_keys)
    assert refused.returncode == 1 and "not accepted" in refused.stderr and store.get_text(agent.ip) is None

    # The way out: reject it, and let the machine enrol again (a new key agreement, a new fingerprint).
    assert run_mdp("keys", "reject", agent.ip, "--known-machines", monitor_keys).returncode == 0
    agent.stop()
    for name in ("agent.key", "enrolled"):
        (agent.state_dir / name).unlink()
    offset = len(agent.log())
    agent.start()
    agent.wait_for_log("enrolment fingerprint", timeout=20, after=offset)
    again = re.findall(r"enrolment fingerprint ([A-Z2-7-]+);", agent.log()[offset:])[0]
    assert again != fingerprint
    right = run_mdp("keys", "accept", agent.ip, "--fingerprint", again.lower(), "--known-machines", monitor_keys)
    assert right.returncode == 0, right.stderr
    assert store.get_text(agent.ip) == agent.key_text.strip()
    wait_for(lambda: monitor.report_count(agent.ip) >= 1, "a report once accepted", timeout=20)
    # Restarted, an enrolled agent keeps its key and says no HELLO.
    agent.stop()
    agent.start()
    agent.trust()
    wait_for(lambda: monitor.report_count(agent.ip, since=time.time() - 1) >= 1, "a report after restart", timeout=20)
    stats = agent.stats()
    assert stats["enrolled"] is True and stats["hellos"] == 0


def test_two_agents_starting_on_one_fresh_state_dir_end_with_one_key(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "agent_src"))
    for round_ in range(10):
        state = tmp_path / f"state{round_}"
        procs = [subprocess.Popen([PYTHON, "-m", "mdp_agent", "--config", "/nonexistent", "--state-dir", str(state),
                                   "--init-only"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(4)]
        assert all(proc.wait(30) == 0 for proc in procs)
        assert len(list(state.iterdir())) == 1, list(state.iterdir())   # the key, and no stray temporary file


def test_mixed_ipv4_and_ipv6_machines_list_send_and_report(spawn_agent, spawn_monitor, known_machines, tmp_path,
                                                           port):
    spawn_agent("127.0.0.2")
    v6 = spawn_agent("::1")
    listed = run_mdp("keys", "list", "--known-machines", known_machines)
    assert listed.returncode == 0 and "::1" in listed.stdout and "127.0.0.2" in listed.stdout
    out = run_mdp("send", "--json", "--port", port, "--known-machines", known_machines, "all", "ping")
    assert out.returncode == 0, out.stderr
    assert {ip: r["status"] for ip, r in json.loads(out.stdout).items()} == {"127.0.0.2": True, "::1": True}
    # A monitor on the IPv6 wildcard sees IPv4 agents as ::ffff:a.b.c.d; they are still the IPv4 machine.
    monitor_keys = tmp_path / "monitor_keys"
    db = tmp_path / "dual.db"
    monitor_log = open(tmp_path / "dual-monitor.log", "wb")
    dual_port = free_port()   # the wildcard cannot share the agents' port
    argv = [str(REPO / ".venv" / "bin" / "mdp"), "monitor", "--listen", f"[::]:{dual_port}", "--db", str(db),
            "--known-machines", str(monitor_keys)]
    proc = subprocess.Popen(argv, stdout=monitor_log, stderr=subprocess.STDOUT)
    try:
        reporter = spawn_agent("127.0.0.4", flags=["--monitor", f"127.0.0.1:{dual_port}", "--interval", "1"])
        reporter.trust(monitor_keys)
        status = lambda: run_mdp("status", "--json", "--db", db, "--known-machines", monitor_keys)  # noqa: E731
        wait_for(lambda: db.exists() and any(r["ip"] == "127.0.0.4" and r["reports"] for r in
                                             json.loads(status().stdout or "[]")), "IPv4 reports via [::]", timeout=20)
        KeyStore(monitor_keys).put("::1", v6.key_text)
        assert status().returncode == 0
    finally:
        proc.kill()
        proc.wait()


def test_hostile_requests_get_clear_refusals_and_no_traceback(spawn_agent, port):
    agent = spawn_agent("127.0.0.2")
    keys = protocol.KeyPair.from_text(agent.key_text)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for depth in (100_000, 3000):   # beyond the JSON parser's stack, and within it
            body = b'{"operations":[' + b"[" * depth + b"]" * depth + b"]}"
            msg_id = os.urandom(8)
            for datagram in protocol.encode_message(protocol.REQUEST, body, keys.to_agent, msg_id,
                                                    int(time.time() * 1000)):
                sock.sendto(datagram, (agent.ip, port))
            reply = receive_reply(sock, keys, msg_id, timeout=10)
            assert reply["status"] is False
            code = reply["error"]["code"] if "error" in reply else reply["operations"][0]["error"]["code"]
            assert code == "bad_request", reply
        # "every": NaN is not JSON (refused as such), and "NaN" as text is not a number of seconds.
        for args in (b'{"operations":["load.avg"],"every":NaN}', b'{"operations":["load.avg"],"every":"NaN"}'):
            body = b'{"operations":[{"name":"report.subscribe","args":' + args + b"}]}"
            msg_id = os.urandom(8)
            for datagram in protocol.encode_message(protocol.REQUEST, body, keys.to_agent, msg_id,
                                                    int(time.time() * 1000)):
                sock.sendto(datagram, (agent.ip, port))
            assert receive_reply(sock, keys, msg_id)["status"] is False
    assert agent.result("report.subscriptions") == []
    assert "Traceback" not in agent.log()
