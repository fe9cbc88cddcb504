"""Agent memory: RSS of a real `python -m mdp_agent` reporting every second to a real `mdp monitor`.

    .venv/bin/python bench/bench_memory.py --duration 3600 --every 30     # the hour-long run
    .venv/bin/python bench/bench_memory.py --duration 60 --every 5        # a quick look

Samples VmRSS of the agent process every --every seconds and prints one line per sample, then a
summary: first, last, min, max RSS, and the growth rate fitted over the samples after the warm-up
(the first 10% of the run, at least one sample), in KiB per hour. The last line is `RESULT {json}`
so run_all.py (and anyone) can read a log file back. Reports stored by the monitor are counted from
its SQLite database at the end, to show the agent really reported all along.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULT_BLOCK = 200        # 127.10.200.x: monitor .1, agent .2
TARGET_RSS_MIB = 15.0


def fitted_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points (y per unit of t); 0.0 with fewer than two distinct t."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / var


def run(duration: float, every: float, block: int = DEFAULT_BLOCK, python: str = sys.executable,
        interval: float = 1.0, out=sys.stdout) -> dict:
    monitor_ip, agent_ip = C.address(block, 0), C.address(block, 1)
    for ip in (monitor_ip, agent_ip):
        if C.udp_port_bound(ip, C.AGENT_PORT):
            raise SystemExit(f"bench_memory: {ip}:{C.AGENT_PORT} is in use (another run on block {block}?); "
                             "pick another --block")
    with tempfile.TemporaryDirectory(prefix="mdp-bench-memory-") as tmp:
        tmp = Path(tmp)
        key = C.new_key_text()
        state = tmp / "state"
        state.mkdir(mode=0o700)
        (state / "agent.key").write_text(key)
        (state / "agent.key").chmod(0o600)
        C.write_key(tmp / "known_machines", agent_ip, key)
        db = tmp / "mdp.db"
        (tmp / "agent.conf").write_text("[agent]\n")   # defaults only; the flags below set the rest
        monitor = subprocess.Popen(
            [sys.executable, "-m", "mdp_controller.cli", "monitor", "--listen", f"{monitor_ip}:{C.AGENT_PORT}",
             "--db", str(db), "--known-machines", str(tmp / "known_machines")],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "monitor.log", "w"))
        agent = None
        try:
            C.wait_for(lambda: C.udp_port_bound(monitor_ip, C.AGENT_PORT) or monitor.poll() is not None, 20,
                       "the monitor to listen")
            if monitor.poll() is not None:
                raise SystemExit("bench_memory: the monitor exited:\n" + (tmp / "monitor.log").read_text())
            agent = subprocess.Popen(
                [python, "-m", "mdp_agent", "--config", str(tmp / "agent.conf"), "--bind", agent_ip,
                 "--port", str(C.AGENT_PORT), "--state-dir", str(state), "--monitor",
                 f"{monitor_ip}:{C.AGENT_PORT}", "--interval", str(interval), "--log-level", "warning"],
                env=C.agent_env(), stdout=subprocess.DEVNULL, stderr=open(tmp / "agent.log", "w"))
            C.wait_for(lambda: C.udp_port_bound(agent_ip, C.AGENT_PORT) or agent.poll() is not None, 20,
                       "the agent to listen")
            version = subprocess.check_output([python, "-c", "import platform; print(platform.python_version())"],
                                              text=True).strip()
            print(f"agent pid {agent.pid} on {agent_ip}:{C.AGENT_PORT} (Python {version}), monitor on "
                  f"{monitor_ip}:{C.AGENT_PORT}, reports every {interval:g} s, sampling every {every:g} s "
                  f"for {duration:g} s", file=out, flush=True)
            samples: list[tuple[float, int]] = []
            start = time.monotonic()
            next_at = start
            while True:
                now = time.monotonic()
                if agent.poll() is not None:
                    raise SystemExit("bench_memory: the agent exited:\n" + (tmp / "agent.log").read_text())
                if now >= next_at:
                    mem = C.memory_kib(agent.pid)
                    rss = mem["rss"]
                    samples.append((now - start, rss))
                    print(f"t={now - start:7.0f} s  rss={rss / 1024:6.2f} MiB  anon={mem.get('anon', 0) / 1024:6.2f} MiB"
                          f"  pss={mem.get('pss', 0) / 1024:6.2f} MiB", file=out, flush=True)
                    next_at += every
                if now - start >= duration:
                    break
                time.sleep(max(0.0, min(next_at, start + duration) - time.monotonic()))
            elapsed = time.monotonic() - start
        finally:
            if agent is not None:
                C.stop_process(agent)
            C.stop_process(monitor)
        reports = 0
        if db.exists():
            conn = sqlite3.connect(str(db))
            reports = conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
            conn.close()
        agent_log = (tmp / "agent.log").read_text().strip().splitlines()
    warmup = max(1, len(samples) // 10)
    steady = samples[warmup:] or samples
    values = [rss for _, rss in samples]
    result = {
        "python": version, "duration_s": round(elapsed, 1), "samples": len(samples),
        "first_mib": round(values[0] / 1024, 2), "last_mib": round(values[-1] / 1024, 2),
        "min_mib": round(min(values) / 1024, 2), "max_mib": round(max(values) / 1024, 2),
        "steady_first_mib": round(steady[0][1] / 1024, 2),
        "growth_kib_per_hour": round(fitted_slope(steady) * 3600, 1),
        "reports_stored": reports, "reports_expected": int(elapsed / interval),
        "last_anon_mib": round(mem.get("anon", 0) / 1024, 2), "last_pss_mib": round(mem.get("pss", 0) / 1024, 2),
        "target_mib": TARGET_RSS_MIB, "agent_log_lines": len(agent_log),
    }
    print(f"RSS first {result['first_mib']} MiB, after warm-up {result['steady_first_mib']} MiB, last "
          f"{result['last_mib']} MiB (anon {result['last_anon_mib']}, PSS {result['last_pss_mib']}), max "
          f"{result['max_mib']} MiB (target <= {TARGET_RSS_MIB:g}); growth "
          f"{result['growth_kib_per_hour']} KiB/h fitted over {len(steady)} samples; reports stored "
          f"{reports} of ~{result['reports_expected']}", file=out)
    if agent_log:
        print("agent log (last lines):\n  " + "\n  ".join(agent_log[-5:]), file=out)
    print("RESULT " + json.dumps(result), file=out, flush=True)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run (default %(default)g)")
    p.add_argument("--every", type=float, default=5.0, help="seconds between RSS samples (default %(default)g)")
    p.add_argument("--interval", type=float, default=1.0, help="agent report interval (default %(default)g)")
    p.add_argument("--block", type=int, default=DEFAULT_BLOCK,
                   help="use 127.10.BLOCK.1 (monitor) and .2 (agent) (default %(default)d)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the agent (default: this one)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.every <= 0 or args.interval <= 0:
        p.error("--duration, --every and --interval must be more than 0")
    if not 1 <= args.block <= 255:
        p.error("--block must be 1-255 (addresses 127.10.BLOCK.1 and .2)")
    run(args.duration, args.every, args.block, args.python, args.interval)


if __name__ == "__main__":
    main()
