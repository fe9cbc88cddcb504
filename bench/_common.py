"""Shared helpers for the benchmarks: addresses, keys, processes, RSS, percentiles, machine info.

Benchmarks print numbers; none of them passes or fails on timing. Every agent and monitor they start
listens on 127.10.0.0/16 (never 127.0.0.1-9, which the demo and the tests use) and only on loopback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AGENT_SRC = ROOT / "agent_src"
BENCH_NET = ipaddress.ip_network("127.10.0.0/16")
AGENT_PORT = 12345

# The agent tree is imported from the checkout, exactly as it is copied to managed machines.
if str(AGENT_SRC) not in sys.path:
    sys.path.insert(0, str(AGENT_SRC))

from mdp_agent import protocol  # noqa: E402


def address(block: int, index: int) -> str:
    """The index-th address of a /24-sized block of 127.10.0.0/16 (block 0-255, index 0-65535).

    Blocks keep benchmarks that run at the same time (the hour-long memory run) apart; index 0 maps
    to .1 so no address ends in .0.
    """
    if not 0 <= block <= 255:
        raise ValueError(f"block {block} is outside 0-255")
    ip = BENCH_NET.network_address + (block << 8) + index + 1
    if ip not in BENCH_NET:
        raise ValueError(f"address {ip} would leave {BENCH_NET}")
    return str(ip)


def addresses(first_block: int, count: int) -> list[str]:
    """count consecutive addresses starting at first_block's .1 (may run across several blocks)."""
    return [address(first_block, i) for i in range(count)]


def raise_nofile(needed: int) -> int:
    """Raise RLIMIT_NOFILE to at least `needed` (up to the hard limit, or beyond as root). Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    want = needed if hard == resource.RLIM_INFINITY else max(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard) if hard != resource.RLIM_INFINITY
                                                     else hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def new_key_text() -> str:
    return protocol.generate_key_text()


def write_key(directory: Path, ip: str, key_text: str) -> None:
    """A key file as the agent and .known_machines keep it (0600, 64 hex characters and a newline)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{ip}.txt"
    path.write_text(key_text)
    path.chmod(0o600)


def agent_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(AGENT_SRC)
    return env


def start_agent(tmp: Path, ip: str, python: str = sys.executable, extra_args: tuple = (),
                what: str = "bench") -> tuple[subprocess.Popen, str]:
    """A real `python -m mdp_agent` on ip:AGENT_PORT with a fresh key in tmp/state (stderr in tmp/agent.log),
    once it listens. Returns (process, key text); stop it with stop_process."""
    if udp_port_bound(ip, AGENT_PORT):
        raise SystemExit(f"{what}: {ip}:{AGENT_PORT} is in use; is another run going?")
    state = tmp / "state"
    state.mkdir(mode=0o700)
    key = new_key_text()
    (state / "agent.key").write_text(key)
    (state / "agent.key").chmod(0o600)
    (tmp / "agent.conf").write_text("[agent]\n")   # defaults only; the flags set the rest
    agent = subprocess.Popen(
        [python, "-m", "mdp_agent", "--config", str(tmp / "agent.conf"), "--bind", ip, "--port", str(AGENT_PORT),
         "--state-dir", str(state), "--log-level", "warning", *extra_args],
        env=agent_env(), stdout=subprocess.DEVNULL, stderr=open(tmp / "agent.log", "w"))
    try:
        wait_for(lambda: udp_port_bound(ip, AGENT_PORT) or agent.poll() is not None, 20, "the agent to listen")
    except BaseException:
        stop_process(agent)
        raise
    if agent.poll() is not None:
        raise SystemExit(f"{what}: the agent exited:\n" + (tmp / "agent.log").read_text())
    return agent, key


def tree_pids(root: int) -> list[int]:
    """root and every live descendant of it (zabbix_agentd forks its collector and listeners)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def controller_env() -> dict:
    """For `python -m mdp_controller...`: this checkout's code, whichever checkout the venv was installed from."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "controller_src"), str(AGENT_SRC)])
    return env


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def memory_kib(pid: int) -> dict:
    """{"rss", "anon", "file", "pss"} in KiB. RSS counts shared library pages in full (libpython,
    libcrypto: shared by every Python process); anon is the process's own heap and stacks; PSS
    splits shared pages among the processes mapping them."""
    out = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            for field, name in (("VmRSS:", "rss"), ("RssAnon:", "anon"), ("RssFile:", "file")):
                if line.startswith(field):
                    out[name] = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    out["pss"] = int(line.split()[1])
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    """The 1-minute load average: other work on this machine skews every wall-clock number."""
    return os.getloadavg()[0]


def reference_ms(rounds: int = 5) -> float:
    """CPU milliseconds of a fixed pure-Python workload (JSON, dicts, string formatting: what the
    monitor spends its time on), the best of `rounds`. This VM's speed varied by 1.6x between
    sessions; printed beside a run's numbers, it says how fast the machine was while they were taken."""
    report = {"operations": [{"name": "memory.info", "result": {"total": 2 ** 34 + n, "available": n * 4096}}
                             for n in range(20)]}
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        for n in range(2000):
            text = json.dumps(report)
            lines = {(op["name"], field): 'm{machine="%d"} %r\n' % (n, float(value))
                     for op in json.loads(text)["operations"] for field, value in op["result"].items()}
            "".join(lines.values())
        best = min(best, time.thread_time() - started)
    return best * 1000


def wait_for(condition, timeout: float, what: str, interval: float = 0.02):
    """Poll condition() until it is truthy; RuntimeError naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def udp_port_bound(ip: str, port: int) -> bool:
    """True when something already listens on ip:port/udp (binding it ourselves fails)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((ip, port))
        return False
    except OSError:
        return True
    finally:
        probe.close()


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout (only processes we started)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(round(fraction * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


def machine_info() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "loadavg_1m": round(loadavg(), 2), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
