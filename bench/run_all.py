"""`make bench`: run the quick benchmarks and rewrite the numbers section of docs/benchmarks.md.

    .venv/bin/python bench/run_all.py                  # everything, about three minutes
    .venv/bin/python bench/run_all.py --only fanout ingest       # prints, leaves the doc alone

Prints every benchmark's own output as it runs, then replaces the text between the NUMBERS markers
in docs/benchmarks.md with tables of this run and the machine it ran on (nproc, CPU model, Python,
load average, date). The hour-long memory run is not repeated here: if its log
(/tmp/mdp-bench-memory.log, from `bench_memory.py --duration 3600`) holds a RESULT line, that
result is included and labelled with the log's date. Nothing here passes or fails on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DOC = C.ROOT / "docs" / "benchmarks.md"
LONG_MEMORY_LOG = Path("/tmp/mdp-bench-memory.log")
START, END = "<!-- NUMBERS:START (bench/run_all.py rewrites this section) -->", "<!-- NUMBERS:END -->"
BENCHMARKS = ("fanout", "throughput", "memory", "ingest", "scale")


def run_benchmarks(only) -> dict:
    results: dict = {}
    if "fanout" in only:
        import bench_fanout
        print("== fan-out", flush=True)
        results["fanout"] = bench_fanout.run([100, 1000, 10000], workers=2, rounds=3, timeout=15.0, cli_size=100)
    if "throughput" in only:
        import bench_throughput
        print("== one agent's throughput", flush=True)
        results["throughput"] = bench_throughput.run([1, 16, 64, 256], duration=5.0)
    if "memory" in only:
        import bench_memory
        print("== agent memory (short run; the hour-long run is read from its log)", flush=True)
        results["memory"] = bench_memory.run(duration=60.0, every=5.0, block=bench_memory.DEFAULT_BLOCK + 5)
    if "ingest" in only:
        import bench_ingest
        print("== collector ingest", flush=True)
        results["ingest"] = bench_ingest.run(1000, 50, window=64)
    if "scale" in only:
        import bench_monitor_scale
        print("== one monitor, 10,000 machines: CPU share, /metrics scrape, database growth", flush=True)
        results["scale"] = bench_monitor_scale.run(10000, every=10.0, duration=60.0, scrapes=2)
    return results


def long_memory_result(path: Path | None = None):
    """(result dict, log's modification time) from the hour-long run's log, or None."""
    path = path or LONG_MEMORY_LOG
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("RESULT "):
            try:
                return json.loads(line[len("RESULT "):]), datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
            except ValueError:
                return None
    return None


def render(results: dict, info: dict) -> str:
    out = [START, "",
           f"Measured {info['date']} on {info['nproc']} cores ({info['cpu']}), Python {info['python']}, "
           f"Linux {info['kernel']}; 1-minute load average {info['loadavg_1m']} when the run began "
           "(other work on the machine inflates every wall-clock number; the CPU-per-item numbers hardly move).",
           ""]
    fan = results.get("fanout")
    if fan:
        out += ["### Fan-out: one `ping` to N agents", "",
                f"{fan['workers']} agent processes, {fan['rounds']} rounds per size; agents started in "
                f"{fan['startup_s']} s, worker RSS {fan['agents_rss_mib']} MiB for "
                f"{max(int(k) for k in fan['library'])} agents.", "",
                "| how | agents | wall (median) | wall (all rounds) | answered | failed | CPU controller / agents "
                "(median) | target |",
                "|---|---:|---:|---|---:|---:|---:|---|"]
        for kind, label in (("library", "`send_many`"), ("cli", "`mdp send --json`")):
            for size, runs in fan[kind].items():
                walls = [r["wall_s"] for r in runs]
                target = "< 2 s" if int(size) == 10000 and kind == "library" else ""
                cpu = (f"{statistics.median(r['controller_cpu_s'] for r in runs):.2f} s / "
                       f"{statistics.median(r['agents_cpu_s'] for r in runs):.2f} s" if "agents_cpu_s" in runs[0] else "")
                out.append(f"| {label} | {int(size):,} | {statistics.median(walls):.3f} s | "
                           f"{', '.join(f'{w:.3f}' for w in walls)} | {min(r['answered'] for r in runs):,} | "
                           f"{max(r['failed'] for r in runs)} | {cpu} | {target} |")
        out.append("")
    tp = results.get("throughput")
    if tp:
        out += ["### One agent: signed pings per second", "",
                "| window | pings/s | p50 | p99 | max | agent CPU per ping | lost | agent RSS after | target |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in tp["runs"]:
            out.append(f"| {r['window']} | {r['per_s']:,} | {r['p50_ms']:.3f} ms | {r['p99_ms']:.3f} ms | "
                       f"{r['max_ms']} ms | {r['agent_cpu_us_per_ping']} µs | {r['lost']} | {r['agent_rss_mib']} MiB | "
                       f"{'>= 10,000/s' if r['window'] == 64 else ''} |")
        out.append("")
    mem = results.get("memory")
    long_run = long_memory_result()
    if mem or long_run:
        out += ["### Agent memory (RSS), reporting every second to a real `mdp monitor`", "",
                "| run | Python | samples | after warm-up | last | max | last anon / PSS | fitted growth | "
                "reports stored | target |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        rows = []
        if long_run:
            rows.append((f"{long_run[0]['duration_s'] / 60:.0f} min (log of {long_run[1]:%Y-%m-%d %H:%M} UTC)",
                         long_run[0]))
        if mem:
            rows.append((f"{mem['duration_s']:.0f} s (this run)", mem))
        for label, m in rows:
            out.append(f"| {label} | {m['python']} | {m['samples']} | {m['steady_first_mib']} MiB | {m['last_mib']} MiB | "
                       f"{m['max_mib']} MiB | {_anon_pss(m)} | {m['growth_kib_per_hour']} KiB/h | {m['reports_stored']:,} of "
                       f"~{m['reports_expected']:,} | <= {m['target_mib']:g} MiB, flat |")
        out.append("")
    ing = results.get("ingest")
    if ing:
        out += ["### Collector ingest: signed reports stored per second", "",
                f"{ing['sources']:,} source addresses x {ing['per_source']} reports, datagrams of "
                f"{', '.join(map(str, ing['datagram_bytes']))} bytes.", "",
                "| how | reports stored | seconds | stored/s | CPU per report | lost | target |",
                "|---|---:|---:|---:|---:|---:|---|"]
        if "monitor" in ing:
            m = ing["monitor"]
            out.append(f"| `mdp monitor` over UDP (window {m['window']}) | {m['rows']:,} | {m['seconds']} | "
                       f"{m['per_s']:,} | {m['monitor_cpu_us_per_report']} µs | {m['lost']} | >= 20,000/s |")
        if "collector" in ing:
            m = ing["collector"]
            out.append(f"| `Collector` in-process | {m['rows']:,} | {m['seconds']} | {m['per_s']:,} | "
                       f"{m['cpu_us_per_report']} µs ({m['verify_cpu_us_per_report']} handle + "
                       f"{m['store_cpu_us_per_report']} flush) | {m['lost']} | |")
        out.append("")
    out += _render_scale(results.get("scale"))
    out.append(END)
    return "\n".join(out)


def _render_scale(sc: dict | None) -> list[str]:
    if not sc:
        return []
    out = ["### One monitor, 10,000 machines: CPU, /metrics, database growth", "",
           f"{sc['machines']:,} machines each reporting the default report every {sc['every_s']:g} s "
           f"({sc['reports_per_s']:,} reports/s) into one `mdp monitor --http` for {sc['duration_s']:g} s "
           f"(`bench/bench_monitor_scale.py`); stored {sc['stored']:,} of {sc['sent']:,} sent.", "",
           "| what | measured | target |", "|---|---:|---|",
           f"| monitor CPU, ingest alone | {sc['cpu_share']:.1%} of a core ({sc['cpu_us_per_report']} µs/report) "
           "| < 33% of a core |",
           f"| monitor CPU, ingest + a scrape every {sc['scrape_gap_s']:g} s | {sc['cpu_share_with_scrapes']:.1%} "
           "of a core | |",
           f"| `/metrics` of {sc['machines']:,} machines during ingest (median, max) | {sc['scrape_s_median']} s, "
           f"{sc['scrape_s_max']} s ({sc['metrics_bytes'] / 1e6:.1f} MB) | < 1 s |",
           f"| `/metrics` with no ingest (median of 3) | {sc['scrape_quiet_s_median']} s | < 1 s |",
           f"| `/api/machines` during ingest (median) | {sc['api_machines_s_median']} s | |",
           f"| monitor RSS at the end | {sc['monitor_rss_mib']} MiB | |", ""]
    growth = sc.get("growth") or {}
    if growth:
        out += ["| report | JSON | DB bytes per report | per machine per day at 60 s | per machine at 7-day retention |",
                "|---|---:|---:|---:|---:|"]
        for label, g in growth.items():
            out.append(f"| {label} ({len(g['operations'])} operations) | {g['json_bytes']:,} B | "
                       f"{g['bytes_per_report']:,} B | {g['mib_per_machine_day']} MiB | "
                       f"{g['mib_per_machine_retained']} MiB |")
        out.append("")
    return out


def _anon_pss(m: dict) -> str:
    if "last_anon_mib" not in m:
        return "-"   # logs written before bench_memory sampled them
    return f"{m['last_anon_mib']} / {m['last_pss_mib']} MiB"


def rewrite_doc(section: str, path: Path = DOC):
    text = path.read_text() if path.exists() else "# Benchmarks\n\n## Numbers\n\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    p.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--json", metavar="FILE", help="also write the raw results here")
    p.add_argument("--render", metavar="FILE", help="run nothing: rewrite the doc from a --json file of an "
                   "earlier full run (and the hour-long memory log, if it has finished since)")
    args = p.parse_args(argv)
    if args.render:
        try:
            saved = json.loads(Path(args.render).read_text())
            info, results = saved["machine"], saved["results"]
        except (OSError, ValueError, KeyError) as exc:
            p.error(f"--render {args.render}: not a results file of run_all.py --json ({exc})")
        args.only = [name for name in BENCHMARKS if name in results]
    else:
        info = C.machine_info()
        print(f"machine: {info}", flush=True)
        started = time.monotonic()
        results = run_benchmarks(args.only)
        print(f"== done in {time.monotonic() - started:.0f} s", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=1))
    section = render(results, info)
    if args.no_docs or set(args.only) != set(BENCHMARKS):
        print(section)   # a partial run must not wipe the other benchmarks' numbers from the doc
    else:
        rewrite_doc(section)
        print(f"numbers written to {DOC.relative_to(C.ROOT)}")


if __name__ == "__main__":
    main()
