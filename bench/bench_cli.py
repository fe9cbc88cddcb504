"""`mdp send` to one machine, whole process: wall and CPU, beside the interpreter floor, same run.

    .venv/bin/python bench/bench_cli.py [--runs 20] [--compare /work/main/.venv/bin/mdp] [--fanout 100]

Starts one real agent (`python3 -m mdp_agent` from this checkout) on 127.10.248.1, writes its key
into a temporary known_machines, then times, interleaved round by round so machine load hits all
alike: the interpreter floor (`python -c pass`, the same interpreter as the `mdp` script), `mdp
--help`, and `mdp send --known-machines DIR 127.10.248.1 ping`, for this checkout's `mdp` and for
each --compare script (e.g. the main checkout's). Byte code is cached under a temporary
PYTHONPYCACHEPREFIX (warmed by one untimed run each), as an installed package has it, and no
checkout gets files written into it. Prints medians and minima; CPU time (user + system of the
child) is the steadier number on a shared machine. Never fails on timing.

Also prints what `python -X importtime` says the send imports, biggest first, for this checkout.
--fanout N also times `mdp send --json` to N agents at once (bench_fanout's fleet of real agents in
two processes, on 127.10.1.1 upwards), interleaved the same way.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import bench_fanout

AGENT_BLOCK = 248            # the agent on 127.10.248.1
MDP = Path(sys.executable).parent / "mdp"


def timed(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(wall ms, child CPU ms, exit status) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall * 1000, cpu * 1000, proc.returncode


def interpreter_of(script: Path) -> str:
    """The interpreter a console script's #! line names (the floor is measured with that one)."""
    first = script.read_text().splitlines()[0]
    return first[2:].strip() if first.startswith("#!") else sys.executable


def biggest_imports(cmd: list[str], env: dict, top: int = 12) -> list[tuple[int, str]]:
    """(cumulative us, module) of the top-level imports of one run under -X importtime."""
    proc = subprocess.run(cmd[:1] + ["-X", "importtime"] + cmd[1:], env=env, capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            _, cumulative, name = line.split("|", 2)
            if not name[1:].startswith(" "):      # depth 0: imported by the command itself
                rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--compare", type=Path, nargs="*", default=[], metavar="MDP_SCRIPT",
                        help="other `mdp` console scripts to time beside this checkout's")
    parser.add_argument("--fanout", type=int, default=0, metavar="N", help="also send to N agents at once")
    args = parser.parse_args()
    scripts = [MDP, *args.compare]
    ip = C.address(AGENT_BLOCK, 0)
    with tempfile.TemporaryDirectory(prefix="mdp-bench-cli-") as tmp:
        tmp = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        state, known = tmp / "state", tmp / "known_machines"
        subprocess.run(["/usr/bin/python3", "-m", "mdp_agent", "--init-only", "--state-dir", str(state)],
                       check=True, env=C.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        C.write_key(known, ip, (state / "agent.key").read_text())
        agent = subprocess.Popen(["/usr/bin/python3", "-m", "mdp_agent", "--config", "/nonexistent", "--bind", ip,
                                  "--port", str(C.AGENT_PORT), "--state-dir", str(state), "--log-level", "error"],
                                 env=C.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            cases = []   # (label, command, env)
            for n, script in enumerate(scripts):
                run_env = dict(env, PYTHONPYCACHEPREFIX=str(tmp / f"pycache-{n}"))
                python = interpreter_of(script)
                send = [python, str(script), "send", "--known-machines", str(known), "--timeout", "5", ip, "ping"]
                cases += [(f"{script}: interpreter floor (-c pass)", [python, "-c", "pass"], run_env),
                          (f"{script}: mdp --help", [python, str(script), "--help"], run_env),
                          (f"{script}: mdp send {ip} ping", send, run_env)]
            deadline = time.monotonic() + 30
            while timed(cases[2][1], cases[2][2])[2] != 0:   # the agent answers (and byte code is warm)
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench_cli: the agent on {ip} never answered `mdp send`")
            for _, cmd, run_env in cases:
                timed(cmd, run_env)
            results: dict[str, list] = {label: [] for label, _, _ in cases}
            failures: dict[str, int] = {label: 0 for label, _, _ in cases}
            load = [C.loadavg()]
            for _ in range(args.runs):
                for label, cmd, run_env in cases:
                    wall, cpu, status = timed(cmd, run_env)
                    results[label].append((wall, cpu))
                    failures[label] += status != 0
                load.append(C.loadavg())
            print(f"{args.runs} interleaved runs each, {os.cpu_count()} cores, load average "
                  f"{min(load):.1f}-{max(load):.1f} during the run")
            for label, _, _ in cases:
                walls = [w for w, _ in results[label]]
                cpus = [c for _, c in results[label]]
                print(f"{label}: wall median {statistics.median(walls):.1f} ms (min {min(walls):.1f}), CPU median "
                      f"{statistics.median(cpus):.1f} ms (min {min(cpus):.1f})"
                      + (f"; {failures[label]} runs failed" if failures[label] else ""))
            print(f"imports of `mdp send` ({MDP}), top level, cumulative:")
            for micros, name in biggest_imports(cases[2][1], cases[2][2]):
                print(f"  {micros / 1000:7.1f} ms  {name}")
            if args.fanout:
                fanout(scripts, cases, args.fanout, args.runs, tmp)
        finally:
            agent.terminate()
            agent.wait(5)
            shutil.rmtree(tmp / "state", ignore_errors=True)


def fanout(scripts: list[Path], cases: list, count: int, runs: int, tmp: Path) -> None:
    """`mdp send --json` to `count` real agents at once, each script in turn, `runs` rounds."""
    C.raise_nofile(count + 1024)
    (tmp / "fanout").mkdir()
    fleet = bench_fanout.Fleet(count, 2, tmp / "fanout")
    try:
        sends = []
        for n, script in enumerate(scripts):
            python, run_env = cases[3 * n][1][0], cases[3 * n][2]
            sends.append((script, [python, str(script), "send", "--json", "--known-machines", str(fleet.known_machines),
                                   "--timeout", "15", ",".join(fleet.ips), "ping"], run_env))
        results: dict = {script: [] for script, _, _ in sends}
        for _ in range(runs):
            for script, cmd, run_env in sends:
                results[script].append(timed(cmd, run_env))
        print(f"`mdp send --json` to {count} agents, {runs} interleaved runs each, load {C.loadavg():.1f} at the end:")
        for script, rows in results.items():
            walls, cpus = [w for w, _, _ in rows], [c for _, c, _ in rows]
            failed = sum(1 for _, _, status in rows if status)
            print(f"  {script}: wall median {statistics.median(walls):.0f} ms (min {min(walls):.0f}), CPU median "
                  f"{statistics.median(cpus):.0f} ms (min {min(cpus):.0f})" + (f"; {failed} runs failed" if failed else ""))
    finally:
        fleet.close()


if __name__ == "__main__":
    sys.exit(main())
