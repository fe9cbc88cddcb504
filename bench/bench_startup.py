"""Agent start to first answered ping: how long `python3 -m mdp_agent` takes to be useful.

    .venv/bin/python bench/bench_startup.py [--runs 15] [--python /usr/bin/python3] [--agent-src DIR]

--agent-src runs another copy of agent_src (e.g. `git archive` of an older commit) for a
before/after comparison under the same machine load.

Two copies of the agent are measured: one with its bytecode compiled as the role compiles a
release when it unpacks it, one without any. Each run starts a fresh agent on 127.10.250.1 (a key
made beforehand with --init-only, so key creation is not counted), sends a signed ping every 2 ms
until the reply verifies, and records the time from spawning the process to that reply. Prints
the median and the spread; never fails on timing.
Also prints how long loading the operation registry alone takes in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import AGENT_SRC, address, protocol

PING_EVERY_S = 0.002   # resend gap: small next to the start-up time measured
RUN_TIMEOUT_S = 10.0


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (/proc/PID/schedstat, nanoseconds): steady on a busy machine."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def one_run(python: str, src: Path, state: Path, keys: protocol.KeyPair, ip: str, port: int) -> tuple[float, float]:
    """(wall seconds from spawn to the first verified ping reply, the agent's CPU seconds by then)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    sock.settimeout(PING_EVERY_S)
    start = time.perf_counter()
    proc = subprocess.Popen([python, "-m", "mdp_agent", "--config", "/nonexistent", "--bind", ip, "--port",
                             str(port), "--state-dir", str(state), "--log-level", "error"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < RUN_TIMEOUT_S:
            _, datagrams = protocol.encode(protocol.REQUEST, protocol.make_request(["ping"]), keys,
                                           protocol.TO_AGENT, timestamp_ms=int(time.time() * 1000))
            sock.sendto(datagrams[0], (ip, port))
            try:
                data, _ = sock.recvfrom(65535)
            except (TimeoutError, ConnectionRefusedError):
                continue
            protocol.open_datagram(data, keys, protocol.TO_CONTROLLER)
            return time.perf_counter() - start, cpu_seconds(proc.pid)
        raise RuntimeError("the agent did not answer within %g s" % RUN_TIMEOUT_S)
    finally:
        proc.terminate()
        proc.wait(5)
        sock.close()


def registry_load_ms(python: str, src: Path) -> tuple[float, float]:
    """(wall, CPU) milliseconds of load_default_registry() with no bytecode cache, as the unit runs it.

    CPU time is the steadier number on a shared machine: other processes inflate wall time only.
    """
    code = ("import time; t, c = time.perf_counter(), time.process_time(); "
            "from mdp_agent.registry import load_default_registry; load_default_registry(); "
            "print((time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000)")
    out = subprocess.run([python, "-B", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"})
    wall, cpu = out.stdout.split()
    return float(wall), float(cpu)


def measure(python: str, src: Path, state: Path, keys: protocol.KeyPair, ip: str, port: int, runs: int) -> dict:
    samples = [one_run(python, src, state, keys, ip, port) for _ in range(runs)]
    return {"wall_ms": [wall * 1000 for wall, _ in samples], "cpu_ms": [used * 1000 for _, used in samples]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--python", default="/usr/bin/python3")
    parser.add_argument("--agent-src", type=Path, default=AGENT_SRC)
    args = parser.parse_args()
    ip, port = address(250, 0), 12345
    with tempfile.TemporaryDirectory() as tmp:
        # Two copies without the checkout's __pycache__: one compiled as the role compiles a release
        # when it unpacks it (python3 -m compileall), one bare. Nothing writes bytecode into either
        # afterwards (PYTHONDONTWRITEBYTECODE, as the agent's unit sets it).
        installed, bare = Path(tmp) / "installed", Path(tmp) / "bare"
        for src in (installed, bare):
            shutil.copytree(args.agent_src, src, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([args.python, "-m", "compileall", "-q", "-f", str(installed / "mdp_agent"),
                        str(installed / "mdp_operations")], check=True)
        state = Path(tmp) / "state"
        subprocess.run([args.python, "-m", "mdp_agent", "--init-only", "--state-dir", str(state)], check=True,
                       env={"PYTHONPATH": str(bare), "PYTHONDONTWRITEBYTECODE": "1"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        keys = protocol.KeyPair(protocol.parse_key_text((state / "agent.key").read_text()))
        cases = (("as the role installs it (bytecode compiled at install)", installed),
                 ("without bytecode (every module compiled at each start)", bare))
        results = {name: measure(args.python, src, state, keys, ip, port, args.runs) for name, src in cases}
        written = sorted(str(p.relative_to(bare)) for p in bare.rglob("__pycache__"))
        loads = [registry_load_ms(args.python, bare) for _ in range(args.runs)]
    print("python: %s (%s)" % (args.python, subprocess.run([args.python, "--version"], capture_output=True,
                                                          text=True).stdout.strip()))
    for name, result in results.items():
        times, cpu = result["wall_ms"], result["cpu_ms"]
        print("%s:\n  agent start -> first ping reply: median %.1f ms, min %.1f, max %.1f (%d runs, %d cores)"
              % (name, statistics.median(times), min(times), max(times), len(times), os.cpu_count()))
        print("  agent CPU time until that reply: median %.1f ms, min %.1f" % (statistics.median(cpu), min(cpu)))
    if written:
        print("warning: bytecode appeared in the bare copy (%s): its figures are not bytecode-free" % ", ".join(written))
    print("agent source: %s" % args.agent_src.resolve())
    print("load_default_registry(), fresh interpreter, no bytecode: wall median %.1f ms, CPU median %.1f ms"
          " (min %.1f)" % (statistics.median(w for w, _ in loads), statistics.median(c for _, c in loads),
                         min(c for _, c in loads)))


if __name__ == "__main__":
    sys.exit(main())
