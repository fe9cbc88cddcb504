"""One monitor, a fleet of 10,000: CPU share at 1,000 reports/s, /metrics scrape time, database growth.

    .venv/bin/python bench/bench_monitor_scale.py                          # 10,000 machines every 10 s, 60 s
    .venv/bin/python bench/bench_monitor_scale.py --machines 2000 --duration 20

  ingest   a real `mdp monitor --http` process; this process plays MACHINES agents (one socket per
           source address, 127.10.121.1 upwards), each sending a real default report (this machine's
           system.uptime, load.avg, memory.info, filesystem.usage, signed with its own key) every
           EVERY seconds, spread evenly, for DURATION seconds. The monitor's CPU time over the run
           divided by the wall time is its share of one core. The first EVERY seconds (every machine's
           first report: new rows in machines and latest) are a warm-up and not counted.
  scrape   GET /metrics of those MACHINES machines, SCRAPES times, while the reports keep arriving
           (as Prometheus does, nothing else): wall time per scrape and the exposition's size. Then,
           ingest stopped, /metrics and the page's /api/machines three times each, quiet, with the
           HTTP process's CPU per /api/machines (the page's polling is not in the scraped share).
  growth   bytes the database grows per stored report (in-process ReportStore, pages in use after a
           checkpoint) for the default report and for the full set the page and /metrics can show;
           times 1,440 reports a day at the agent's default 60 s interval = growth per machine per day.

Nothing passes or fails on timing; the numbers go into docs/benchmarks.md (bench/run_all.py).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_ingest import DEFAULT_REPORT_OPERATIONS, sample_report  # noqa: E402

from mdp_agent import protocol  # noqa: E402

MONITOR_BLOCK = 120        # monitor on 127.10.120.1 (udp 12345, http 9123)
SOURCE_BLOCK = 121         # machines on 127.10.121.1 upwards (10,000 reach 127.10.160.x)
HTTP_PORT = 9123
DEFAULT_INTERVAL_S = 60    # the agent's default report interval
FULL_REPORT_OPERATIONS = DEFAULT_REPORT_OPERATIONS + ("network.stats", "cpu.usage", "process.count", "system.info")
TARGET_CPU_SHARE = 1 / 3
TARGET_SCRAPE_S = 1.0
SCRAPE_GAP_S = 15.0        # a common Prometheus scrape_interval (its default is 1 m)


def ingest_and_scrape(tmp: Path, machines: int, every: float, duration: float, scrapes: int, out,
                      scrape_gap: float = SCRAPE_GAP_S) -> dict:
    monitor_ip = C.address(MONITOR_BLOCK, 0)
    if C.udp_port_bound(monitor_ip, C.AGENT_PORT):
        raise SystemExit(f"bench_monitor_scale: {monitor_ip}:{C.AGENT_PORT} is in use; is another run going?")
    ips = C.addresses(SOURCE_BLOCK, machines)
    reference = C.reference_ms()
    keys = []
    for ip in ips:
        text = C.new_key_text()
        C.write_key(tmp / "known_machines", ip, text)
        keys.append(protocol.KeyPair.from_text(text).to_controller)
    body, vary = _varying_body(sample_report(DEFAULT_REPORT_OPERATIONS))
    db = tmp / "monitor.db"
    monitor = subprocess.Popen(
        [sys.executable, "-m", "mdp_controller.cli", "monitor", "--listen", f"{monitor_ip}:{C.AGENT_PORT}",
         "--db", str(db), "--known-machines", str(tmp / "known_machines"), "--http", f"{monitor_ip}:{HTTP_PORT}"],
        env=C.controller_env(), stdout=subprocess.DEVNULL, stderr=open(tmp / "monitor.log", "w"))
    socks = []
    try:
        C.wait_for(lambda: C.udp_port_bound(monitor_ip, C.AGENT_PORT) or monitor.poll() is not None, 20,
                   "the monitor to listen")
        if monitor.poll() is not None:
            raise SystemExit("bench_monitor_scale: the monitor exited:\n" + (tmp / "monitor.log").read_text())
        for ip in ips:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((ip, 0))
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # the ACKs are not read
            socks.append(sock)
        target = (monitor_ip, C.AGENT_PORT)
        rate = machines / every
        tick = 0.05
        print(f"{machines:,} machines, one report each every {every:g} s = {rate:,.0f} reports/s for "
              f"{duration:g} s (+{every:g} s warm-up); report JSON {len(body)} bytes; this VM's speed: "
              f"reference workload {reference:.0f} ms (bench/_common.py reference_ms, lower is faster)",
              file=out, flush=True)

        sent = 0
        start = time.perf_counter()
        measured_from = start + every
        cpu_at = wall_at = half = None
        scrape_times, api_times, sizes, up_during = [], [], [], []
        # First half: ingest alone. Second half: ingest with a scrape every scrape_gap, as Prometheus does.
        midpoint = measured_from + duration / 2
        next_scrape = midpoint
        end = measured_from + duration
        scraper = None

        def scrape_loop():
            """Like Prometheus: a scrape every scrape_gap, in its own thread so the reports keep their pace."""
            planned = time.perf_counter()
            while len(scrape_times) < scrapes and time.perf_counter() < end:
                t0 = time.perf_counter()
                with urllib.request.urlopen(f"http://{monitor_ip}:{HTTP_PORT}/metrics", timeout=120) as response:
                    text = response.read().decode()
                scrape_times.append(time.perf_counter() - t0)
                sizes.append(len(text))
                up_during.append(sum(1 for line in text.splitlines()
                                     if line.startswith("mdp_machine_up{") and line.endswith(" 1.0")))
                planned += scrape_gap
                time.sleep(max(0.0, planned - time.perf_counter()))
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if cpu_at is None and now >= measured_from:
                cpu_at, wall_at, sent_at, http_at = C.cpu_seconds(monitor.pid), now, sent, _children_cpu(monitor.pid)
            if half is None and now >= midpoint:
                half = (C.cpu_seconds(monitor.pid), now, sent, _children_cpu(monitor.pid))
            due = int((now - start) * rate)
            stamp = int(time.time() * 1000)
            while sent < due:
                index = sent % machines
                for datagram in protocol.encode_message(protocol.REPORT, vary(sent), keys[index], os.urandom(8), stamp):
                    try:
                        socks[index].sendto(datagram, target)
                    except BlockingIOError:
                        pass
                sent += 1
            if cpu_at is not None and scraper is None and now >= next_scrape:
                scraper = threading.Thread(target=scrape_loop, daemon=True)
                scraper.start()
            time.sleep(max(0.0, tick - (time.perf_counter() - now)))
        cpu_end, wall_end, http_cpu_end = C.cpu_seconds(monitor.pid), time.perf_counter(), _children_cpu(monitor.pid)
        if scraper is not None:
            scraper.join(120)
        wall, cpu = half[1] - wall_at, half[0] - cpu_at
        reports_measured = half[2] - sent_at
        scraped_share = (cpu_end - half[0]) / (wall_end - half[1])
        http_share = (http_cpu_end - half[3]) / (wall_end - half[1])
        http_quiet_share = (half[3] - http_at) / wall
        _wait_until_rows_settle(db, sent)
        # Quiet scrapes (no ingest) for comparison, now that every machine is in the database.
        quiet = []
        for _ in range(3):
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"http://{monitor_ip}:{HTTP_PORT}/metrics", timeout=60) as response:
                response.read()
            quiet.append(time.perf_counter() - t0)
        # The page's API, apart: Prometheus does not call it, so it is not in the scraped share above.
        api_cpu = _children_cpu(monitor.pid)
        for _ in range(3):
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"http://{monitor_ip}:{HTTP_PORT}/api/machines", timeout=120) as response:
                response.read()
            api_times.append(time.perf_counter() - t0)
        api_cpu = (_children_cpu(monitor.pid) - api_cpu) / len(api_times)
        up = max(up_during, default=0)   # during ingest: once it stops, machines turn stale as they should
        rss_mib = C.rss_kib(monitor.pid) / 1024
    finally:
        for sock in socks:
            sock.close()
        C.stop_process(monitor)
    rows = _rows(db)
    result = {"reference_ms": round(reference, 1), "machines": machines, "every_s": every, "duration_s": duration,
              "reports_per_s": round(rate),
              "sent": sent, "stored": rows, "lost": sent - rows,
              "cpu_share": round(cpu / wall, 3), "cpu_us_per_report": round(cpu / max(1, reports_measured) * 1e6, 1),
              "cpu_share_with_scrapes": round(scraped_share, 3), "scrape_gap_s": scrape_gap,
              "http_process_cpu_share_without_scrapes": round(http_quiet_share, 3),
              "http_process_cpu_share": round(http_share, 3),
              "scrapes": len(scrape_times),
              "scrape_s_median": round(statistics.median(scrape_times), 3) if scrape_times else None,
              "scrape_s_max": round(max(scrape_times), 3) if scrape_times else None,
              "scrape_quiet_s_median": round(statistics.median(quiet), 3),
              "api_machines_s_median": round(statistics.median(api_times), 3) if api_times else None,
              "api_machines_cpu_s": round(api_cpu, 3),
              "metrics_bytes": max(sizes, default=0), "machines_up": up,
              "monitor_rss_mib": round(rss_mib, 1)}
    print(f"ingest: {reports_measured:,} reports in {wall:.1f} s; monitor CPU {cpu:.1f} s = "
          f"{result['cpu_share']:.1%} of a core ({result['cpu_us_per_report']} us/report; target < "
          f"{TARGET_CPU_SHARE:.0%}); HTTP process {result['http_process_cpu_share_without_scrapes']:.1%}; with a /metrics scrape every {scrape_gap:g} s: collector "
          f"{result['cpu_share_with_scrapes']:.1%} + HTTP process {result['http_process_cpu_share']:.1%}; stored {rows:,} of {sent:,} sent; RSS "
          f"{result['monitor_rss_mib']} MiB", file=out, flush=True)
    print(f"scrape: /metrics of {machines:,} machines ({result['metrics_bytes'] / 1e6:.1f} MB, {up:,} up) in "
          f"{result['scrape_s_median']} s median, {result['scrape_s_max']} s max over {len(scrape_times)} scrapes "
          f"during ingest, {result['scrape_quiet_s_median']} s quiet (target < {TARGET_SCRAPE_S:g} s); "
          f"/api/machines (quiet) {result['api_machines_s_median']} s, {result['api_machines_cpu_s']} s of CPU each", file=out, flush=True)
    return result


def _varying_body(report: dict):
    """The report's JSON, and a function of the report's number giving that text with the values that
    change in every real report changed (uptime, load, memory and disk available): /metrics renders
    again only what changed, so identical reports would flatter it."""
    marks = {("system.uptime", "seconds"): 111111111.25, ("load.avg", "load1"): 0.111,
             ("memory.info", "available"): 222222222222}
    for op in report["operations"]:
        result = op.get("result")
        for (name, field), mark in marks.items():
            if op["name"] == name and isinstance(result, dict) and field in result:
                result[field] = mark
        if op["name"] == "filesystem.usage" and isinstance(result, list):
            for fs in result:
                fs["available"] = 333333333333
    text = protocol.dump_json(report).decode()

    def vary(n: int):
        out = (text.replace("111111111.25", "%.2f" % (10000 + n * 0.01)).replace("0.111", "%.2f" % (n % 400 / 100))
               .replace("222222222222", str(20_000_000_000 + n * 4096))
               .replace("333333333333", str(80_000_000_000 - n * 4096)))
        return out.encode()

    return text, vary


def _children_cpu(pid: int) -> float:
    """CPU seconds of a process's children (the monitor's HTTP process and multiprocessing's tracker)."""
    total = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    for child in children:
        try:
            total += C.cpu_seconds(int(child))
        except OSError:
            pass
    return total


def _wait_until_rows_settle(db: Path, sent: int, timeout: float = 30.0):
    """Until every sent report is stored, or the count stops growing for 2 s (the rest were lost)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        rows = _rows(db)
        if rows >= sent:
            return
        if rows != last:
            last, since = rows, time.monotonic()
        elif time.monotonic() - since > 2.0:
            return
        time.sleep(0.2)


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def growth(tmp: Path, reports: int = 20000, machines: int = 100, out=sys.stdout) -> dict:
    """Database bytes per stored report, and so per machine per day at the default interval."""
    from mdp_controller.storage import DEFAULT_RETENTION_S, ReportStore
    result = {}
    for label, operations in (("default", DEFAULT_REPORT_OPERATIONS), ("full", FULL_REPORT_OPERATIONS)):
        db = tmp / f"growth-{label}.db"
        report = sample_report(operations)
        text = protocol.dump_json(report)
        store = ReportStore(db)
        for i in range(machines):   # every machine's row in machines and latest exists before measuring
            store.add(C.address(SOURCE_BLOCK, i), report, text=text)
        store.flush()
        before = _pages_in_use(store.conn)
        for i in range(reports):
            store.add(C.address(SOURCE_BLOCK, i % machines), report, text=text)
            if i % 5000 == 4999:
                store.flush()
        store.flush()
        per_report = (_pages_in_use(store.conn) - before) / reports
        store.close()
        per_day = per_report * 86400 / DEFAULT_INTERVAL_S
        result[label] = {"operations": list(operations), "json_bytes": len(text), "bytes_per_report": round(per_report),
                         "mib_per_machine_day": round(per_day / 2**20, 2),
                         "mib_per_machine_retained": round(per_day * DEFAULT_RETENTION_S / 86400 / 2**20, 1)}
        print(f"growth ({label} report, {len(text)} bytes of JSON): {per_report:.0f} bytes per stored report = "
              f"{per_day / 2**20:.2f} MiB per machine per day at {DEFAULT_INTERVAL_S} s; "
              f"{result[label]['mib_per_machine_retained']} MiB per machine at the 7-day retention", file=out,
              flush=True)
    return result


def _pages_in_use(conn: sqlite3.Connection) -> int:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return pages * page_size


def run(machines: int = 10000, every: float = 10.0, duration: float = 60.0, scrapes: int = 5, out=sys.stdout,
        with_growth: bool = True, scrape_gap: float = SCRAPE_GAP_S) -> dict:
    C.raise_nofile(machines + 256)
    results = {"loadavg_1m": round(C.loadavg(), 2)}
    with tempfile.TemporaryDirectory(prefix="mdp-bench-scale-") as tmp:
        if with_growth:
            results["growth"] = growth(Path(tmp), out=out)
        results.update(ingest_and_scrape(Path(tmp), machines, every, duration, scrapes, out, scrape_gap))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--machines", type=int, default=10000)
    p.add_argument("--every", type=float, default=10.0, help="seconds between one machine's reports")
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds (after one EVERY of warm-up): "
                   "the first half without scrapes, the second with one every --scrape-gap seconds")
    p.add_argument("--scrape-gap", type=float, default=SCRAPE_GAP_S,
                   help="seconds between scrapes, Prometheus's scrape_interval (its default: 60)")
    p.add_argument("--scrapes", type=int, default=5, help="at most this many scrapes in the second half")
    p.add_argument("--no-growth", action="store_true", help="skip the database growth measurement")
    p.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    args = p.parse_args(argv)
    result = run(args.machines, args.every, args.duration, args.scrapes, with_growth=not args.no_growth,
                 scrape_gap=args.scrape_gap)
    if args.json:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
