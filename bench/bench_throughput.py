"""One agent's throughput of signed pings and their latency, against a real `python -m mdp_agent` process.

    .venv/bin/python bench/bench_throughput.py                     # windows 1, 16, 64, 256; 5 s each
    .venv/bin/python bench/bench_throughput.py --windows 64 --duration 10
    .venv/bin/python bench/bench_throughput.py --windows 16 --operation memory.info --agent-src /work/main/agent_src

The load generator (this process) keeps WINDOW requests outstanding on one raw UDP socket: each
request is a fresh message (new id, current timestamp) encoded with mdp_agent.protocol, so the agent
verifies, runs and signs every one (a repeated id would only hit its reply cache). Every reply is
verified before it counts. A request unanswered after LOST_AFTER_S is counted as lost and replaced.
Latency is send-to-verified-reply for each answered request, over the measured period only (a warm-up
second is discarded). --operation asks for another operation than ping (memory.info: the issue's
"CPU per memory.info"); --agent-src runs another copy of agent_src (an A/B against an older
checkout in the same minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from mdp_agent import protocol  # noqa: E402

BLOCK = 202                # agent on 127.10.202.1, generator on 127.10.202.2
LOST_AFTER_S = 1.0
WARMUP_S = 1.0
TARGET_PER_S = 10000


def measure(sock: socket.socket, agent_addr, keys: protocol.KeyPair, window: int, duration: float,
            agent_pid: int | None = None, operations: tuple = ("ping",)) -> dict:
    """Drive the agent at `window` outstanding requests (of `operations`) for WARMUP_S + duration seconds.

    With agent_pid, also the agent's CPU time per answered request over the measured period: unlike
    the rate, it hardly depends on what else the machine is doing.
    """
    payload = protocol.dump_json(protocol.make_request(list(operations)))
    outstanding: dict[bytes, float] = {}
    latencies: list[float] = []
    lost = bad = errors = 0

    def send_one():
        msg_id = os.urandom(8)
        datagram = protocol.encode_message(protocol.REQUEST, payload, keys.to_agent, msg_id,
                                           int(time.time() * 1000))[0]
        outstanding[msg_id] = time.perf_counter()
        sock.sendto(datagram, agent_addr)

    start = time.perf_counter()
    measure_from = start + WARMUP_S
    stop_at = measure_from + duration
    answered = 0
    cpu_start = None
    for _ in range(window):
        send_one()
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            break
        if cpu_start is None and now >= measure_from and agent_pid:
            cpu_start = C.cpu_seconds(agent_pid)
        ready, _, _ = select.select([sock], [], [], min(0.05, stop_at - now))
        if not ready:
            expired = [m for m, sent in outstanding.items() if now - sent > LOST_AFTER_S]
            for msg_id in expired:
                del outstanding[msg_id]
                if now >= measure_from:
                    lost += 1
                send_one()
            continue
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            got = time.perf_counter()
            try:
                packet = protocol.open_datagram(data, keys, protocol.TO_CONTROLLER)
                reply = protocol.decode_body(packet.flags, packet.body)
            except protocol.ProtocolError:
                bad += 1
                continue
            sent = outstanding.pop(packet.msg_id, None)
            if sent is None:
                continue   # a late reply to a request already counted as lost
            if got >= measure_from:
                answered += 1
                latencies.append(got - sent)
                if not reply.get("status"):
                    errors += 1
            send_one()
    agent_cpu = C.cpu_seconds(agent_pid) - cpu_start if cpu_start is not None else None
    latencies.sort()
    return {"window": window, "agent_cpu_us_per_ping": round(agent_cpu / answered * 1e6, 1) if agent_cpu and answered
            else None, "per_s": round(answered / duration), "answered": answered, "lost": lost,
            "bad_replies": bad, "error_replies": errors,
            "p50_ms": round(C.percentile(latencies, 0.50) * 1000, 3),
            "p99_ms": round(C.percentile(latencies, 0.99) * 1000, 3),
            "max_ms": round(latencies[-1] * 1000, 3) if latencies else None}


def run(windows: list[int], duration: float, python: str = sys.executable, out=sys.stdout,
        operations: tuple = ("ping",)) -> dict:
    agent_ip, generator_ip = C.address(BLOCK, 0), C.address(BLOCK, 1)
    results = {"runs": []}
    with tempfile.TemporaryDirectory(prefix="mdp-bench-throughput-") as tmp:
        tmp = Path(tmp)
        agent, key = C.start_agent(tmp, agent_ip, python, what="bench_throughput")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((generator_ip, 0))
            sock.setblocking(False)
            keys = protocol.KeyPair.from_text(key)
            for window in windows:
                load = C.loadavg()
                r = measure(sock, (agent_ip, C.AGENT_PORT), keys, window, duration, agent.pid, operations)
                r["loadavg_1m"] = round(load, 2)
                r["agent_rss_mib"] = round(C.rss_kib(agent.pid) / 1024, 1)
                results["runs"].append(r)
                print(f"window {window:>4}: {r['per_s']:>6} {'+'.join(operations)}/s answered (target >= {TARGET_PER_S}), "
                      f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, max {r['max_ms']} ms; lost {r['lost']}, "
                      f"bad {r['bad_replies']}, error replies {r['error_replies']}; agent CPU {r['agent_cpu_us_per_ping']} us/request; "
                      f"agent RSS {r['agent_rss_mib']} MiB; load {load:.1f}",
                      file=out, flush=True)
                time.sleep(LOST_AFTER_S)   # let stragglers of this window arrive before the next one
                _drain(sock)
        finally:
            sock.close()
            C.stop_process(agent)
        log = (tmp / "agent.log").read_text().strip()
        if log:
            print("agent log (last lines):\n  " + "\n  ".join(log.splitlines()[-5:]), file=out)
    return results


def _drain(sock):
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, nargs="+", default=[1, 16, 64, 256], help="outstanding requests")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per window (default %(default)g)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the agent (default: this one)")
    p.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    p.add_argument("--operation", default="ping", help="operation each request asks for (default %(default)s)")
    p.add_argument("--agent-src", type=Path, help="agent_src the agent runs from (default: this checkout's)")
    args = p.parse_args(argv)
    if min(args.windows) < 1 or args.duration <= 0:
        p.error("windows must be at least 1 and --duration more than 0")
    if args.agent_src:
        C.AGENT_SRC = args.agent_src.resolve()   # what agent_env() puts on the agent's PYTHONPATH
    results = run(args.windows, args.duration, args.python, operations=(args.operation,))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
