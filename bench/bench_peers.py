"""MDP beside its peers, in the same run: node_exporter and zabbix_agentd on this machine's loopback.

    .venv/bin/python bench/bench_peers.py [--duration 5] [--runs 5] [--json]
    .venv/bin/python bench/bench_peers.py --install     # first apt-get install the peers (root)

The benchmark starts every agent itself, each on its own loopback address, and stops it afterwards:

| agent | address | asked |
|---|---|---|
| MDP (`python -m mdp_agent`) | 127.10.210.1 udp 12345 | `ping`, `memory.info` (signed, one datagram each way) |
| node_exporter (Debian `prometheus-node-exporter`) | 127.10.210.2 tcp 9100 | `GET /metrics`, meminfo collector only, one kept-alive connection |
| zabbix_agentd (Debian `zabbix-agent`) | 127.10.210.3 tcp 10050 | `agent.ping`, `vm.memory.size[available]`, raw ZBXD protocol, one TCP connection per request (the agent closes it) |

Clients send from 127.10.210.4 (zabbix's `Server=` allowlist). A peer whose program is absent is
skipped with one line; `--install` apt-installs the Debian packages first. `make test` never runs this.

Per agent and request, one client asks back to back (one request outstanding) for a warm-up second
and then --duration seconds: CPU per request is the CPU time of the agent's whole process tree over
that period divided by the answers (it hardly depends on the machine's load, unlike the rate).
RSS is the summed VmRSS of the process tree: idle after start, and the highest seen during the load.
Start-up is spawn to first answer (MDP: a verified ping; node_exporter: /metrics 200; zabbix: agent.ping
= 1), the median of --runs fresh starts. Prints numbers; never fails on timing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_startup  # noqa: E402
import bench_throughput  # noqa: E402

from mdp_agent import protocol  # noqa: E402

BLOCK = 210
MDP_IP, NODE_IP, ZABBIX_IP, CLIENT_IP = (C.address(BLOCK, i) for i in range(4))
NODE_PORT, ZABBIX_PORT = 9100, 10050
NODE_EXPORTER = ("prometheus-node-exporter", "node_exporter")
ZABBIX_AGENTD = ("zabbix_agentd",)
DEBIAN_PACKAGES = ("prometheus-node-exporter", "zabbix-agent")
WARMUP_S = bench_throughput.WARMUP_S
START_TIMEOUT_S = 10.0
ANSWER_EVERY_S = 0.002   # start-up poll gap, as bench_startup pings


def find_program(names) -> str | None:
    for name in names:
        for directory in ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"):
            path = Path(directory) / name
            if path.exists():
                return str(path)
        found = shutil.which(name)
        if found:
            return found
    return None


def install_peers() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench_peers: --install needs root (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdin=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *DEBIAN_PACKAGES], check=True,
                   env=env, stdin=subprocess.DEVNULL)


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in C.tree_pids(pid):
        try:
            total += C.cpu_seconds(p)
        except OSError:
            pass   # a process that ended between listing and reading
    return total


def tree_rss_kib(pid: int) -> int:
    total = 0
    for p in C.tree_pids(pid):
        try:
            total += C.rss_kib(p)
        except (OSError, RuntimeError):
            pass
    return total


def timed_load(pid: int, ask, duration: float) -> dict:
    """ask() back to back for WARMUP_S + duration; CPU of pid's tree per answer and the highest RSS seen."""
    stop_warmup = time.perf_counter() + WARMUP_S
    while time.perf_counter() < stop_warmup:
        ask()
    cpu_start, answers, peak = tree_cpu_seconds(pid), 0, tree_rss_kib(pid)
    start = time.perf_counter()
    next_sample = start + 0.25
    while True:
        now = time.perf_counter()
        if now - start >= duration:
            break
        ask()
        answers += 1
        if now >= next_sample:
            peak, next_sample = max(peak, tree_rss_kib(pid)), now + 0.25
    elapsed = time.perf_counter() - start
    cpu = tree_cpu_seconds(pid) - cpu_start
    return {"cpu_us_per_request": round(cpu / answers * 1e6, 1), "per_s": round(answers / elapsed),
            "rss_peak_mib": round(max(peak, tree_rss_kib(pid)) / 1024, 1)}


def until_answered(ask, proc) -> float:
    """Seconds from now until ask() succeeds (proc just spawned); RuntimeError past START_TIMEOUT_S."""
    start = time.perf_counter()
    while time.perf_counter() - start < START_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before answering")
        try:
            ask()
            return time.perf_counter() - start
        except (OSError, http.client.HTTPException, ValueError):
            time.sleep(ANSWER_EVERY_S)
    raise RuntimeError(f"no answer within {START_TIMEOUT_S:g} s")


# --- MDP: the agent and the load generator of bench_throughput, the start-up run of bench_startup.

def measure_mdp(python: str, duration: float, runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mdp-bench-peers-") as tmp:
        tmp = Path(tmp)
        agent, key = C.start_agent(tmp, MDP_IP, python, what="bench_peers")
        keys = protocol.KeyPair.from_text(key)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        result = {"name": "MDP agent", "version": "python " + subprocess.check_output(
            [python, "-c", "import platform; print(platform.python_version())"], text=True).strip()}
        try:
            sock.bind((CLIENT_IP, 0))
            sock.setblocking(False)
            result["rss_idle_mib"] = round(C.rss_kib(agent.pid) / 1024, 1)
            result["requests"] = {}
            peak = 0.0
            for operation in ("ping", "memory.info"):
                r = bench_throughput.measure(sock, (MDP_IP, C.AGENT_PORT), keys, 1, duration, agent.pid,
                                             operations=(operation,))
                peak = max(peak, C.rss_kib(agent.pid) / 1024)
                result["requests"][operation] = {"cpu_us_per_request": r["agent_cpu_us_per_ping"],
                                                 "per_s": r["per_s"], "errors": r["error_replies"] + r["lost"]}
            result["rss_load_mib"] = round(peak, 1)
        finally:
            sock.close()
            C.stop_process(agent)
        # A copy without __pycache__, as the role installs it, started as bench_startup starts it.
        src = tmp / "agent_src"
        shutil.copytree(C.AGENT_SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
        starts = [bench_startup.one_run(python, src, tmp / "state", keys, MDP_IP, C.AGENT_PORT)[0]
                  for _ in range(runs)]
    result["startup_ms"] = round(statistics.median(starts) * 1000, 1)
    return result


# --- node_exporter

def measure_node_exporter(program: str, duration: float, runs: int) -> dict:
    argv = [program, f"--web.listen-address={NODE_IP}:{NODE_PORT}", "--collector.disable-defaults",
            "--collector.meminfo", "--log.level=error"]
    version = subprocess.run([program, "--version"], capture_output=True, text=True)
    result = {"name": "node_exporter", "version": (version.stdout or version.stderr).split("\n")[0]}
    conn = {}

    def scrape():
        if "c" not in conn:
            conn["c"] = http.client.HTTPConnection(NODE_IP, NODE_PORT, timeout=2, source_address=(CLIENT_IP, 0))
        try:
            conn["c"].request("GET", "/metrics")
            response = conn["c"].getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            conn.pop("c").close()
            raise
        if response.status != 200 or b"node_memory_MemTotal_bytes" not in body:
            raise ValueError(f"/metrics answered {response.status} without meminfo")

    def spawn():
        conn.pop("c", None)
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return _measure_peer(result, spawn, {"GET /metrics (meminfo)": scrape}, scrape, duration, runs)


# --- zabbix_agentd: the passive-check protocol (header "ZBXD\x01", 8-byte little-endian length, data)

def zabbix_ask(key: str) -> str:
    data = key.encode()
    with socket.create_connection((ZABBIX_IP, ZABBIX_PORT), timeout=2, source_address=(CLIENT_IP, 0)) as sock:
        sock.sendall(b"ZBXD\x01" + struct.pack("<Q", len(data)) + data)
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    if reply[:5] != b"ZBXD\x01" or len(reply) < 13:
        raise ValueError(f"not a ZBXD reply: {reply[:32]!r}")
    (length,) = struct.unpack("<Q", reply[5:13])
    value = reply[13:13 + length].decode(errors="replace")
    if value.startswith("ZBX_NOTSUPPORTED"):
        raise ValueError(f"{key}: {value}")
    return value


def measure_zabbix(program: str, duration: float, runs: int) -> dict:
    version = subprocess.run([program, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    result = {"name": "zabbix_agentd", "version": version}
    with tempfile.TemporaryDirectory(prefix="mdp-bench-zabbix-") as tmp:
        conf = Path(tmp) / "zabbix_agentd.conf"
        # Passive checks only (no ServerActive), from the client address only, logging to stderr.
        conf.write_text(f"LogType=console\nPidFile={tmp}/zabbix_agentd.pid\nListenIP={ZABBIX_IP}\n"
                        f"ListenPort={ZABBIX_PORT}\nServer={CLIENT_IP}\nStartAgents=3\nHostname=mdp-bench\n"
                        f"AllowRoot={1 if os.geteuid() == 0 else 0}\nTimeout=3\n")

        def ping():
            if zabbix_ask("agent.ping") != "1":
                raise ValueError("agent.ping did not answer 1")

        def spawn():
            return subprocess.Popen([program, "-f", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)

        return _measure_peer(result, spawn, {"agent.ping": ping,
                                             "vm.memory.size[available]": lambda: int(zabbix_ask(
                                                 "vm.memory.size[available]"))}, ping, duration, runs)


def _measure_peer(result: dict, spawn, requests: dict, first_answer, duration: float, runs: int) -> dict:
    proc = spawn()
    try:
        until_answered(first_answer, proc)
        time.sleep(0.5)   # let its worker processes settle before the idle sample
        result["rss_idle_mib"] = round(tree_rss_kib(proc.pid) / 1024, 1)
        result["requests"] = {}
        peak = 0.0
        for name, ask in requests.items():
            r = timed_load(proc.pid, ask, duration)
            peak = max(peak, r.pop("rss_peak_mib"))
            result["requests"][name] = r
        result["rss_load_mib"] = peak
    finally:
        C.stop_process(proc)
    starts = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = spawn()
        try:
            until_answered(first_answer, proc)
            starts.append(time.perf_counter() - start)
        finally:
            C.stop_process(proc)
    result["startup_ms"] = round(statistics.median(starts) * 1000, 1)
    return result


def run(duration: float, runs: int, python: str = sys.executable, out=sys.stdout) -> dict:
    results = {"machine": C.machine_info(), "duration_s": duration, "runs": runs, "agents": []}
    results["agents"].append(measure_mdp(python, duration, runs))
    for names, package, measure in ((NODE_EXPORTER, DEBIAN_PACKAGES[0], measure_node_exporter),
                                    (ZABBIX_AGENTD, DEBIAN_PACKAGES[1], measure_zabbix)):
        program = find_program(names)
        if program is None:
            print(f"bench_peers: {names[-1]} skipped: not installed (Debian package {package}; --install installs it)",
                  file=out)
        else:
            results["agents"].append(measure(program, duration, runs))
    results["loadavg_1m_after"] = round(C.loadavg(), 2)
    print(f"load average (1 min) {results['machine']['loadavg_1m']} before, {results['loadavg_1m_after']} after; "
          f"{results['machine']['nproc']} cores; one client, one request outstanding, {duration:g} s per request",
          file=out)
    print("| agent | request | CPU per request | requests/s | RSS idle | RSS under load | start to first answer |",
          file=out)
    print("|---|---|---:|---:|---:|---:|---:|", file=out)
    for agent in results["agents"]:
        for i, (request, r) in enumerate(agent["requests"].items()):
            first = i == 0
            print(f"| {agent['name'] if first else ''} | `{request}` | {r['cpu_us_per_request']} µs | {r['per_s']:,} | "
                  f"{str(agent['rss_idle_mib']) + ' MiB' if first else ''} | "
                  f"{str(agent['rss_load_mib']) + ' MiB' if first else ''} | "
                  f"{str(agent['startup_ms']) + ' ms' if first else ''} |", file=out)
    for agent in results["agents"]:
        print(f"{agent['name']}: {agent['version']}", file=out)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per request (default %(default)g)")
    p.add_argument("--runs", type=int, default=5, help="fresh starts timed per agent (default %(default)d)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the MDP agent (default: this one)")
    p.add_argument("--install", action="store_true",
                   help="apt-get install %s first (root; never done otherwise)" % " and ".join(DEBIAN_PACKAGES))
    p.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.runs < 1:
        p.error("--duration must be more than 0 and --runs at least 1")
    if args.install:
        install_peers()
    results = run(args.duration, args.runs, args.python)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
