"""/metrics: the fleet's latest reports and the monitor's own counters in the Prometheus exposition format.

A prometheus_client custom collector: collect() reads the newest rows from SQLite at scrape time and
yields metric families, so nothing per machine lives in memory between scrapes and a machine the
database forgets disappears from /metrics with it. Values are in base units (bytes, seconds, ratios).
docs/monitor.md lists every metric.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PrometheusCollector

from .storage import FleetReader

# Per machine: (metric name, help, operation, result field, scale). A field missing or not a number
# in a machine's latest result is left out for that machine (an old agent, a failing operation).
SCALAR_GAUGES = [
    ("mdp_load1", "1-minute load average.", "load.avg", "load1", 1.0),
    ("mdp_load5", "5-minute load average.", "load.avg", "load5", 1.0),
    ("mdp_load15", "15-minute load average.", "load.avg", "load15", 1.0),
    ("mdp_memory_total_bytes", "Total memory.", "memory.info", "total", 1.0),
    ("mdp_memory_available_bytes", "Memory available for new work (estimated on kernels before 3.14).",
     "memory.info", "available", 1.0),
    ("mdp_cpu_usage_ratio", "CPU busy share of all CPUs since the previous report (0-1).", "cpu.usage", "percent",
     0.01),
    ("mdp_processes", "Number of processes.", "process.count", "total", 1.0),
    ("mdp_threads", "Number of threads.", "process.count", "threads", 1.0),
    ("mdp_uptime_seconds", "Seconds since the machine booted.", "system.uptime", "seconds", 1.0),
]


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _result(latest: dict, operation: str):
    return latest.get(operation, {}).get("result")


class FleetMetrics(PrometheusCollector):
    """Builds every family at scrape time from the database (and the running collector's counters, if any)."""

    def __init__(self, db: str, monitor: Callable[[], dict | None] = lambda: None):
        self.reader = FleetReader(db)
        self.lock = threading.Lock()   # one scrape at a time reads through the one connection
        self.monitor = monitor          # the running monitor's counters (monitor_snapshot), or None

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            machines = self.reader.machines(ordered=False)
            db_bytes = self.reader.database_bytes()
        yield from self._machine_families(machines, time.time())
        yield from self._monitor_families(len(machines), db_bytes)

    def _machine_families(self, machines: list[dict], now: float) -> Iterator[Metric]:
        up = GaugeMetricFamily("mdp_machine_up", "1 while reports arrive within three of the machine's report "
                               "intervals, else 0.", labels=["machine"])
        last = GaugeMetricFamily("mdp_machine_last_report_timestamp_seconds",
                                 "When the newest report was received, seconds since the Unix epoch.",
                                 labels=["machine"])
        interval = GaugeMetricFamily("mdp_machine_report_interval_seconds",
                                     "The machine's report interval, estimated from its newest reports.",
                                     labels=["machine"])
        ok = GaugeMetricFamily("mdp_machine_report_ok", "1 if every operation in the newest report succeeded.",
                               labels=["machine"])
        reports = CounterMetricFamily("mdp_machine_reports", "Reports stored from the machine.", labels=["machine"])
        info = GaugeMetricFamily("mdp_machine_info", "Always 1: the machine's identity from system.info, when "
                                 "reported.", labels=["machine", "hostname", "agent_version", "os", "kernel"])
        scalars = {name: GaugeMetricFamily(name, help_, labels=["machine"]) for name, help_, *_ in SCALAR_GAUGES}
        fs_labels = ["machine", "mountpoint", "device", "fstype"]
        fs_size = GaugeMetricFamily("mdp_filesystem_size_bytes", "Filesystem size.", labels=fs_labels)
        fs_avail = GaugeMetricFamily("mdp_filesystem_available_bytes",
                                     "Filesystem space available to unprivileged users.", labels=fs_labels)
        net_rx = CounterMetricFamily("mdp_network_receive_bytes", "Bytes received by the interface since boot.",
                                     labels=["machine", "interface"])
        net_tx = CounterMetricFamily("mdp_network_transmit_bytes", "Bytes sent by the interface since boot.",
                                     labels=["machine", "interface"])
        for m in machines:
            ip = m["ip"]
            if m["last_seen"] is None:
                continue
            up.add_metric([ip], 1.0 if m["up"] else 0.0)
            last.add_metric([ip], m["last_seen"])
            interval.add_metric([ip], m["interval"])
            ok.add_metric([ip], 1.0 if m["status"] else 0.0)
            reports.add_metric([ip], float(m["reports"]))
            latest = m["latest"]
            for name, _, operation, field, scale in SCALAR_GAUGES:
                result = _result(latest, operation)
                value = _number(result.get(field)) if isinstance(result, dict) else None
                if value is not None:
                    scalars[name].add_metric([ip], value * scale)
            system = _result(latest, "system.info")
            if isinstance(system, dict):
                os_info = system.get("os") if isinstance(system.get("os"), dict) else {}
                kernel = system.get("kernel") if isinstance(system.get("kernel"), dict) else {}
                info.add_metric([ip, str(system.get("hostname", "")), str(system.get("agent_version", "")),
                                 str(os_info.get("pretty_name", "")), str(kernel.get("release", ""))], 1.0)
            for fs in _items(_result(latest, "filesystem.usage")):
                labels = [ip, str(fs.get("mountpoint", "")), str(fs.get("device", "")), str(fs.get("fstype", ""))]
                for family, field in ((fs_size, "total"), (fs_avail, "available")):
                    value = _number(fs.get(field))
                    if value is not None:
                        family.add_metric(labels, value)
            for nic in _items(_result(latest, "network.stats")):
                for family, field in ((net_rx, "rx_bytes"), (net_tx, "tx_bytes")):
                    value = _number(nic.get(field))
                    if value is not None:
                        family.add_metric([ip, str(nic.get("name", ""))], value)
        yield from (up, last, interval, ok, reports, info, *scalars.values(), fs_size, fs_avail, net_rx, net_tx)

    def _monitor_families(self, machine_count: int, db_bytes: int) -> Iterator[Metric]:
        yield GaugeMetricFamily("mdp_monitor_machines", "Machines in the monitor's database.", value=machine_count)
        yield GaugeMetricFamily("mdp_monitor_database_bytes", "Size of the SQLite database and its WAL.",
                                value=db_bytes)
        snapshot = self.monitor()
        if snapshot is None:
            return
        counters = [("mdp_monitor_datagrams_received", "UDP datagrams received.", "received"),
                    ("mdp_monitor_reports_received", "Verified reports accepted for storage.", "reports"),
                    ("mdp_monitor_hellos_received", "HELLO (enrolment) datagrams received.", "hellos"),
                    ("mdp_monitor_reports_stored", "Reports committed to SQLite.", "stored"),
                    ("mdp_monitor_reports_deferred", "Reports refused unacknowledged because the write queue was full "
                     "(the database refused writes for long); their agents send them again.", "lost"),
                    ("mdp_monitor_reports_pruned", "Reports deleted by retention.", "pruned")]
        for name, help_, key in counters:
            yield CounterMetricFamily(name, help_, value=snapshot[key])
        refused = CounterMetricFamily("mdp_monitor_datagrams_refused", "Datagrams refused, by reason.",
                                      labels=["reason"])
        for reason, count in sorted(snapshot["refused"].items()):
            refused.add_metric([reason], count)
        yield refused
        yield GaugeMetricFamily("mdp_monitor_write_queue_reports", "Verified reports waiting to be written "
                                "(held in memory while the database refuses writes).", value=snapshot["queue"])
        yield GaugeMetricFamily("mdp_monitor_partial_messages", "Chunked reports waiting for their other chunks.",
                                value=snapshot["partial"])


def monitor_snapshot(collector, pruner=None) -> dict:
    """The running monitor's own counters, as plain data (they cross to the HTTP process)."""
    stats, store = collector.stats, collector.store
    return {"received": stats["received"], "reports": stats["reports"], "hellos": stats["hellos"],
            "stored": store.stored, "lost": store.refused, "refused": dict(stats["dropped"]),
            "queue": len(store.buffer), "partial": collector.endpoint.reassembler.pending(),
            "pruned": pruner.pruned if pruner is not None else 0}


def _items(value) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def registry_for(metrics: FleetMetrics) -> CollectorRegistry:
    """A registry holding only MDP's families (no process/platform collectors: the page is about the fleet)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
