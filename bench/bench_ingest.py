"""Collector ingest: signed reports verified and stored in SQLite per second.

    .venv/bin/python bench/bench_ingest.py                                # 1,000 sources x 50 reports
    .venv/bin/python bench/bench_ingest.py --sources 2000 --reports 50 --window 1024

Two measurements with the same pre-encoded reports (each a real default report: the agent's
system.uptime, load.avg, memory.info and filesystem.usage results from this machine, one 500-600
byte datagram, signed with its source's own key, with a fresh id and a current timestamp):

  monitor    a real `mdp monitor` process; this process sends from one socket per source address
             (127.10.60.1 upwards), keeps WINDOW reports un-ACKed at most (the monitor ACKs each
             verified report), and stops the clock when SELECT COUNT(*) FROM reports reaches the total.
  collector  mdp_controller.collector.Collector driven in this process: datagram_received() for
             every report, then flush(). No asyncio, no kernel receive path: the collector's own
             ceiling. Its ACKs go out through a real UDP socket to the (unbound) source addresses.

Rows are counted in SQLite at the end of both; anything missing is reported as lost.
Keep sources x reports <= 100,000 (REPLAY_CACHE_ENTRIES): past that the collector's replay cache
starts to refuse reports as "stale"; --reports larger shows that effect on purpose.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from mdp_agent import protocol  # noqa: E402

MONITOR_BLOCK = 59         # monitor on 127.10.59.1
SOURCE_BLOCK = 60          # sources on 127.10.60.1 upwards
TARGET_PER_S = 20000
DEFAULT_REPORT_OPERATIONS = ("system.uptime", "load.avg", "memory.info", "filesystem.usage")


def sample_report(operations=DEFAULT_REPORT_OPERATIONS) -> dict:
    """A report as an agent sends it (by default: with default settings), with this machine's real values."""
    from mdp_agent.registry import OperationError, load_default_registry
    registry = load_default_registry()
    results = []
    for name in operations:
        try:
            results.append({"name": name, "result": registry.lookup(name).call({})})
        except OperationError as exc:
            results.append({"name": name, "error": exc.to_dict()})
    report = protocol.make_reply(results)
    report["reported_at"] = time.time()
    return report


def encode_reports(sources: list[tuple[str, protocol.KeyPair]], per_source: int, report: dict) -> list:
    """[(source index, msg_id, [datagrams])], round-robin over sources, so every source reports often."""
    body = protocol.dump_json(report)
    out = []
    for round_ in range(per_source):
        stamp = int(time.time() * 1000)
        for index, (_, keys) in enumerate(sources):
            msg_id = os.urandom(8)
            out.append((index, msg_id, protocol.encode_message(protocol.REPORT, body, keys.to_controller, msg_id,
                                                               stamp)))
    return out


def count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
    except sqlite3.OperationalError:   # the monitor has not created the schema yet
        return 0
    finally:
        conn.close()


def via_monitor(tmp: Path, ips: list[str], reports: list, window: int, out) -> dict:
    monitor_ip = C.address(MONITOR_BLOCK, 0)
    if C.udp_port_bound(monitor_ip, C.AGENT_PORT):
        raise SystemExit(f"bench_ingest: {monitor_ip}:{C.AGENT_PORT} is in use; is another run going?")
    db = tmp / "monitor.db"
    monitor = subprocess.Popen(
        [sys.executable, "-m", "mdp_controller.cli", "monitor", "--listen", f"{monitor_ip}:{C.AGENT_PORT}",
         "--db", str(db), "--known-machines", str(tmp / "known_machines")],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "monitor.log", "w"))
    socks = []
    try:
        C.wait_for(lambda: C.udp_port_bound(monitor_ip, C.AGENT_PORT) or monitor.poll() is not None, 20,
                   "the monitor to listen")
        if monitor.poll() is not None:
            raise SystemExit("bench_ingest: the monitor exited:\n" + (tmp / "monitor.log").read_text())
        poller = select.epoll()
        by_fd = {}
        for ip in ips:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((ip, 0))
            sock.setblocking(False)
            socks.append(sock)
            by_fd[sock.fileno()] = sock
            poller.register(sock.fileno(), select.EPOLLIN)
        target = (monitor_ip, C.AGENT_PORT)
        unacked: set[bytes] = set()
        acked = sent = 0
        cpu0 = C.cpu_seconds(monitor.pid)
        start = time.perf_counter()
        last_progress = start
        while acked < len(reports):
            while sent < len(reports) and len(unacked) < window:
                index, msg_id, datagrams = reports[sent]
                for datagram in datagrams:
                    socks[index].sendto(datagram, target)
                unacked.add(msg_id)
                sent += 1
            events = poller.poll(0.2)
            now = time.perf_counter()
            for fd, _ in events:
                sock = by_fd[fd]
                while True:
                    try:
                        data = sock.recv(2048)
                    except BlockingIOError:
                        break
                    msg_id = protocol.peek_msg_id(data)
                    if msg_id in unacked:
                        unacked.discard(msg_id)
                        acked += 1
                        last_progress = now
            if now - last_progress > 2.0:   # the rest were lost or refused: stop waiting for their ACKs
                if sent < len(reports):
                    unacked.clear()          # free the window and keep sending
                    last_progress = now
                else:
                    break
        loop_end = time.perf_counter()
        C.wait_for(lambda: count_rows(db) >= acked, 30, "the monitor to store every ACKed report")
        # The clock stops at the last ACK plus the wait for the rows; the 2 s spent giving up on lost
        # reports' ACKs is not ingest time.
        elapsed = (last_progress - start) + (time.perf_counter() - loop_end)
        monitor_cpu = C.cpu_seconds(monitor.pid) - cpu0
    finally:
        for sock in socks:
            sock.close()
        C.stop_process(monitor)
    rows = count_rows(db)
    log = (tmp / "monitor.log").read_text()
    stale = log.count(": stale")
    result = {"reports": len(reports), "acked": acked, "rows": rows, "lost": len(reports) - rows,
              "window": window, "seconds": round(elapsed, 3), "per_s": round(rows / elapsed),
              "ack_per_s": round(acked / (last_progress - start)),
              "monitor_cpu_us_per_report": round(monitor_cpu / max(1, rows) * 1e6, 1),
              "stale_warnings": stale}
    print(f"mdp monitor: {rows} of {len(reports)} reports stored in {elapsed:.2f} s = {result['per_s']} reports/s "
          f"(target >= {TARGET_PER_S}); ACKed {acked} ({result['ack_per_s']}/s); monitor CPU "
          f"{result['monitor_cpu_us_per_report']} us/report; lost {result['lost']}"
          + (f"; 'stale' refusals logged: {stale} (warnings are rate-limited per source)" if stale else ""),
          file=out, flush=True)
    return result


def in_process(tmp: Path, ips: list[str], keystore_dir: Path, reports: list, out) -> dict:
    from mdp_controller.collector import Collector
    from mdp_controller.keystore import KeyStore
    from mdp_controller.storage import ReportStore

    class SocketTransport:
        """The one transport method Collector uses, on a real UDP socket."""

        def __init__(self):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((C.address(MONITOR_BLOCK, 1), 0))
            self.sock.setblocking(False)

        def sendto(self, data, addr):
            try:
                self.sock.sendto(data, addr)
            except OSError:
                pass

    db = tmp / "collector.db"
    store = ReportStore(str(db))
    collector = Collector(KeyStore(str(keystore_dir)), store)
    transport = SocketTransport()
    collector.connection_made(transport)
    addrs = [(ip, 40000) for ip in ips]
    # datagram_received flushes by itself every FLUSH_BATCH reports; CPU time spent inside flush()
    # is tallied apart, to show how the cost splits between verifying and storing.
    flush_cpu = [0.0]
    real_flush = store.write

    def timed_flush(batch):
        cpu = time.process_time()
        try:
            return real_flush(batch)
        finally:
            flush_cpu[0] += time.process_time() - cpu

    store.write = timed_flush
    start, cpu0 = time.perf_counter(), time.process_time()
    for index, _, datagrams in reports:
        for datagram in datagrams:
            collector.datagram_received(datagram, addrs[index])
    store.flush()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    transport.sock.close()
    store.close()
    rows = count_rows(db)
    result = {"reports": len(reports), "rows": rows, "lost": len(reports) - rows, "seconds": round(elapsed, 3),
              "per_s": round(rows / elapsed), "dropped": collector.stats["dropped"],
              "cpu_us_per_report": round(cpu / len(reports) * 1e6, 1),
              "verify_cpu_us_per_report": round((cpu - flush_cpu[0]) / len(reports) * 1e6, 1),
              "store_cpu_us_per_report": round(flush_cpu[0] / len(reports) * 1e6, 1)}
    print(f"Collector in-process: {rows} of {len(reports)} reports stored in {elapsed:.2f} s = {result['per_s']} "
          f"reports/s; CPU {result['cpu_us_per_report']} us/report (handle {result['verify_cpu_us_per_report']}, "
          f"flush to SQLite {result['store_cpu_us_per_report']}); dropped {collector.stats['dropped'] or 'none'}",
          file=out, flush=True)
    return result


def run(sources: int, per_source: int, window: int = 64, modes=("monitor", "collector"), out=sys.stdout) -> dict:
    C.raise_nofile(sources + 256)
    ips = C.addresses(SOURCE_BLOCK, sources)
    results = {"sources": sources, "per_source": per_source, "loadavg_1m": round(C.loadavg(), 2)}
    with tempfile.TemporaryDirectory(prefix="mdp-bench-ingest-") as tmp:
        tmp = Path(tmp)
        keys = []
        for ip in ips:
            text = C.new_key_text()
            C.write_key(tmp / "known_machines", ip, text)
            keys.append((ip, protocol.KeyPair.from_text(text)))
        report = sample_report()
        sizes = {len(d) for _, _, ds in encode_reports(keys[:1], 1, report) for d in ds}
        results["datagram_bytes"] = sorted(sizes)
        print(f"{sources} sources x {per_source} reports = {sources * per_source}; each report "
              f"{len(protocol.dump_json(report))} bytes of JSON, datagram(s) of {sorted(sizes)} bytes", file=out,
              flush=True)
        for mode in modes:
            encoded = encode_reports(keys, per_source, report)   # fresh ids and timestamps for each mode
            if mode == "monitor":
                results["monitor"] = via_monitor(tmp, ips, encoded, window, out)
            else:
                results["collector"] = in_process(tmp, ips, tmp / "known_machines", encoded, out)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", type=int, default=1000, help="source addresses, one key each (default %(default)d)")
    p.add_argument("--reports", type=int, default=50, help="reports per source (default %(default)d)")
    p.add_argument("--window", type=int, default=64, help="un-ACKed reports in flight (default %(default)d)")
    p.add_argument("--mode", choices=["monitor", "collector", "both"], default="both")
    p.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    args = p.parse_args(argv)
    if not 1 <= args.sources <= 30000 or args.reports < 1 or args.window < 1:
        # 30,000 sources end at 127.10.177.x, clear of the memory benchmark's blocks from 200 up
        p.error("--sources must be 1-30000, --reports and --window at least 1")
    modes = ("monitor", "collector") if args.mode == "both" else (args.mode,)
    results = run(args.sources, args.reports, args.window, modes)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
