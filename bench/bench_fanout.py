"""Fan-out: one signed `ping` to 100, 1,000 and 10,000 real agents, through the controller library and the CLI.

    .venv/bin/python bench/bench_fanout.py                       # 100, 1000, 10000 agents, 3 rounds each
    .venv/bin/python bench/bench_fanout.py --sizes 100 1000 --workers 2

The agents are real `mdp_agent.server.Agent` objects, each with its own key, its own Registry
(load_default_registry) and its own UDP socket bound to its own 127.10.x.y:12345; the agents of one
worker process share one Loop and one WorkerPool, as server.py allows. Their keys are written into a
temporary known_machines directory, which the controller reads like any .known_machines.

First an untimed warm-up ping to every agent (an agent imports an operation family when first asked).
Measured, per size: wall time of `mdp_controller.client.send_many` (asyncio; a fresh key store each
round, so key files are read as a real `mdp send` reads them), answered and failed counts, and the CPU
seconds the controller and the agents spent (robust when other work shares the machine); then the
same for `send_sync` (what `mdp send` and the Ansible plugin call: the same Client on the agent's
selector loop, no asyncio), its rounds interleaved with send_many's; for 100 agents also the real CLI
(`mdp send --json IP,IP,... ping` as a subprocess, interpreter start included).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

FIRST_BLOCK = 1            # agents live on 127.10.1.1 upwards (10,000 agents reach 127.10.40.x)
TARGET_S = 2.0             # 10,000 answered in under 2 s


def _serve(agents: list[tuple[str, str]], state_dir: str, ready, nofile: int):
    """Worker process: one Loop, one WorkerPool, one Agent per (ip, key_text); serve until SIGTERM."""
    from mdp_agent import aead, config, protocol
    from mdp_agent.loop import Loop
    from mdp_agent.registry import load_default_registry
    from mdp_agent.server import Agent, WorkerPool

    C.raise_nofile(nofile)
    settings, _ = config.load(os.path.join(state_dir, "absent.conf"),
                              {"state_dir": state_dir, "log_level": "warning"})
    loop = Loop()
    pool = WorkerPool(loop, settings["workers"])
    for ip, key_text in agents:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, C.AGENT_PORT))
        # The agent's AES-GCM (host libcrypto), as `python -m mdp_agent` uses, whatever this process imported.
        agent = Agent(loop, settings, protocol.KeyPair.from_text(key_text, aead.libcrypto()),
                      load_default_registry(settings["allow"]), pool, state_dir=state_dir)
        agent.start(sock)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    ready.set()
    loop.run_forever()


class Fleet:
    """`count` agents spread over `workers` processes; keys in self.known_machines."""

    def __init__(self, count: int, workers: int, tmp: Path):
        self.ips = C.addresses(FIRST_BLOCK, count)
        self.known_machines = tmp / "known_machines"
        self.state_dir = tmp / "state"
        self.state_dir.mkdir(mode=0o700)
        keys = []
        for ip in self.ips:
            key = C.new_key_text()
            C.write_key(self.known_machines, ip, key)
            keys.append((ip, key))
        busy = [ip for ip in self.ips[:1] + self.ips[-1:] if C.udp_port_bound(ip, C.AGENT_PORT)]
        if busy:
            raise SystemExit(f"bench_fanout: {busy[0]}:{C.AGENT_PORT} is already in use; is another run going?")
        nofile = count // workers + 256
        ctx = multiprocessing.get_context("fork")
        self.procs, events = [], []
        for w in range(workers):
            ready = ctx.Event()
            proc = ctx.Process(target=_serve, args=(keys[w::workers], str(self.state_dir), ready, nofile),
                               daemon=True)
            proc.start()
            self.procs.append(proc)
            events.append(ready)
        start = time.monotonic()
        for ready, proc in zip(events, self.procs):
            while not ready.wait(0.5):
                if not proc.is_alive():
                    raise SystemExit(f"bench_fanout: worker {proc.pid} exited with {proc.exitcode} while starting")
                if time.monotonic() - start > 600:
                    raise SystemExit("bench_fanout: workers did not start within 600 s")
        self.startup_s = time.monotonic() - start

    def rss_mib(self) -> float:
        return sum(C.rss_kib(p.pid) for p in self.procs) / 1024

    def cpu_seconds(self) -> float:
        return sum(C.cpu_seconds(p.pid) for p in self.procs)

    def close(self):
        for proc in self.procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def library_round(ips: list[str], known_machines: Path, timeout: float, fleet: Fleet, blocking: bool = False) -> dict:
    """One send_many (or send_sync); also the CPU seconds it cost this process (the controller) and the agents."""
    from mdp_controller.client import send_many, send_sync
    # Untimed: the previous round's garbage is collected first, so each round starts as a fresh
    # `mdp send` process does (the client pauses the cyclic GC during a batch; what it defers would
    # otherwise be charged to whichever round comes next).
    gc.collect()
    agents_cpu = fleet.cpu_seconds()
    cpu, start = time.process_time(), time.perf_counter()
    if blocking:
        replies = send_sync(ips, ["ping"], known_machines=str(known_machines), timeout=timeout)
    else:
        replies = asyncio.run(send_many(ips, ["ping"], known_machines=str(known_machines), timeout=timeout))
    wall = time.perf_counter() - start
    result = _tally(wall, replies)
    result["controller_cpu_s"] = round(time.process_time() - cpu, 3)
    result["agents_cpu_s"] = round(fleet.cpu_seconds() - agents_cpu, 3)
    return result


def cli_round(ips: list[str], known_machines: Path, timeout: float) -> dict:
    mdp = Path(sys.executable).parent / "mdp"
    cmd = [str(mdp) if mdp.exists() else sys.executable, *([] if mdp.exists() else ["-m", "mdp_controller.cli"]),
           "send", "--json", "--known-machines", str(known_machines), "--timeout", str(timeout),
           ",".join(ips), "ping"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    try:
        replies = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"bench_fanout: `mdp send` printed no JSON (exit {proc.returncode}): {proc.stderr[-500:]}")
    return _tally(wall, replies)


def _tally(wall: float, replies: dict) -> dict:
    answered = sum(1 for r in replies.values() if r.get("status"))
    errors: dict[str, int] = {}
    for r in replies.values():
        if not r.get("status"):
            error = r.get("error")
            reason = error.get("code", "error") if isinstance(error, dict) else str(error or "status false").split(":")[0]
            errors[reason] = errors.get(reason, 0) + 1
    return {"wall_s": round(wall, 3), "answered": answered, "failed": len(replies) - answered, "errors": errors}


def run(sizes: list[int], workers: int, rounds: int, timeout: float, cli_size: int = 100, out=sys.stdout) -> dict:
    C.raise_nofile(max(sizes) + 1024)
    results: dict = {"workers": workers, "rounds": rounds, "library": {}, "blocking": {}, "cli": {}}
    with tempfile.TemporaryDirectory(prefix="mdp-bench-fanout-") as tmp:
        fleet = Fleet(max(sizes), workers, Path(tmp))
        try:
            results["startup_s"] = round(fleet.startup_s, 1)
            results["agents_rss_mib"] = round(fleet.rss_mib(), 1)
            print(f"{max(sizes)} agents in {workers} processes started in {fleet.startup_s:.1f} s "
                  f"(RSS of the worker processes {results['agents_rss_mib']} MiB)", file=out, flush=True)
            # Untimed: each agent answers once first, so the rounds see agents as they run (an agent
            # imports an operation family when it is first asked for; code before issue 11 imported
            # them all at start, which no round counted either).
            warm = library_round(fleet.ips, fleet.known_machines, timeout, fleet, True)
            results["warm_up"] = warm
            print(f"warm-up (untimed) ping to {len(fleet.ips)}: wall {warm['wall_s']:.3f} s, answered "
                  f"{warm['answered']}, agents CPU {warm['agents_cpu_s']} s", file=out, flush=True)
            for size in sizes:
                both = [library_round(fleet.ips[:size], fleet.known_machines, timeout, fleet, blocking)
                        for _ in range(rounds) for blocking in (False, True)]
                results["library"][size], results["blocking"][size] = both[0::2], both[1::2]
                for name, runs in (("send_many", both[0::2]), ("send_sync", both[1::2])):
                    _print_rounds(name, size, runs, out)
            if cli_size:
                runs = [cli_round(fleet.ips[:cli_size], fleet.known_machines, timeout) for _ in range(rounds)]
                results["cli"][cli_size] = runs
                walls = [r["wall_s"] for r in runs]
                print(f"`mdp send --json` ping to {cli_size:>4}: wall {' '.join(f'{w:.3f}' for w in walls)} s "
                      f"(median {statistics.median(walls):.3f}, interpreter start included); answered "
                      f"{' '.join(str(r['answered']) for r in runs)}", file=out, flush=True)
            results["agents_rss_mib_after"] = round(fleet.rss_mib(), 1)
        finally:
            fleet.close()
    return results


def _print_rounds(name: str, size: int, runs: list[dict], out):
    walls = [r["wall_s"] for r in runs]
    print(f"{name} ping to {size:>6}: wall {' '.join(f'{w:.3f}' for w in walls)} s "
          f"(median {statistics.median(walls):.3f}); answered "
          f"{' '.join(str(r['answered']) for r in runs)}; failed {' '.join(str(r['failed']) for r in runs)}"
          + (f" {runs[-1]['errors']}" if runs[-1]["errors"] else "")
          + f"; CPU controller {' '.join(str(r['controller_cpu_s']) for r in runs)} s, agents "
          f"{' '.join(str(r['agents_cpu_s']) for r in runs)} s; load {C.loadavg():.1f}", file=out, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000], help="agent counts")
    p.add_argument("--workers", type=int, default=2, help="agent processes (default %(default)d)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per size (default %(default)d)")
    p.add_argument("--timeout", type=float, default=15.0, help="per-machine deadline, s (default %(default)g)")
    p.add_argument("--cli-size", type=int, default=100, help="agents asked through the CLI (0 = skip)")
    p.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    args = p.parse_args(argv)
    if min(args.sizes) < 1 or max(args.sizes) > 14000 or args.workers < 1 or args.rounds < 1:
        # 14,000 agents end at 127.10.55.x, clear of the ingest benchmark's blocks from 59 up
        p.error("sizes must be 1-14000, workers and rounds at least 1")
    if args.cli_size > max(args.sizes):
        p.error("--cli-size cannot exceed the largest size")
    results = run(args.sizes, args.workers, args.rounds, args.timeout, args.cli_size)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
