"""/metrics: the fleet's latest reports and the monitor's own counters in the Prometheus exposition format.

Metric families built from the newest rows in SQLite and rendered by prometheus_client, one batch of
machines at a time as their reports arrive (FleetMetrics); a machine the database forgets disappears
from /metrics with it. Values are in base units (bytes, seconds, ratios). docs/monitor.md lists
every metric.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from .storage import FleetReader, is_up

log = logging.getLogger("mdp.http")

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


UP = "mdp_machine_up"
UP_HELP = "1 while reports arrive within three of the machine's report intervals, else 0."
# Machines rendered per prometheus_client call (and per read of their rows): bounds how long a
# scrape waits for the rendering's read connection.
RENDER_BATCH = 250
REFRESH_S = 1.0
# The share of a core a round of the background rendering may take (it sleeps in between): the
# round's CPU is the same either way (once per scrape), this spreads it. A round that takes longer
# starts earlier (RENDER_LEAD_S), and a value at a scrape is up to a round's duration old: at a
# quarter of a core 10,000 machines took ~13 s on a busy 2-core host, at a half ~6 s.
RENDER_CPU_SHARE = 0.5
# The background rendering runs once per scrape (FleetMetrics): it starts this long (or twice the last
# round's duration) before the next scrape is due, and at least this often without scrapes.
RENDER_LEAD_S = 2.0
RENDER_MAX_AGE_S = 60.0


def _up_family(machines: list[dict]) -> Metric:
    """mdp_machine_up, both values for each machine (down, then up): a scrape picks one by its time."""
    up = GaugeMetricFamily(UP, UP_HELP, labels=["machine"])
    for m in machines:
        up.add_metric([m["ip"]], 0.0)
        up.add_metric([m["ip"]], 1.0)
    return up


def _machine_families(machines: list[dict]) -> tuple[list[Metric], list[list[tuple[str, tuple, float]]]]:
    """The per-machine families of these machines, empty (mdp_machine_up among them: see _up_family),
    and for each family its samples in order: (machine, label values, value). _filled() puts samples
    into a copy of a family; only those not rendered before need prometheus_client's time."""
    up = GaugeMetricFamily(UP, UP_HELP, labels=["machine"])
    last = GaugeMetricFamily("mdp_machine_last_report_timestamp_seconds",
                             "When the newest report was received, seconds since the Unix epoch.", labels=["machine"])
    interval = GaugeMetricFamily("mdp_machine_report_interval_seconds",
                                 "The machine's report interval, estimated from its newest reports.", labels=["machine"])
    ok = GaugeMetricFamily("mdp_machine_report_ok", "1 if every operation in the newest report succeeded.",
                           labels=["machine"])
    reports = CounterMetricFamily("mdp_machine_reports", "Reports stored from the machine.", labels=["machine"])
    info = GaugeMetricFamily("mdp_machine_info", "Always 1: the machine's identity from system.info, when "
                             "reported.", labels=["machine", "hostname", "agent_version", "os", "kernel"])
    scalars = [GaugeMetricFamily(name, help_, labels=["machine"]) for name, help_, *_ in SCALAR_GAUGES]
    fs_labels = ["machine", "mountpoint", "device", "fstype"]
    fs_size = GaugeMetricFamily("mdp_filesystem_size_bytes", "Filesystem size.", labels=fs_labels)
    fs_avail = GaugeMetricFamily("mdp_filesystem_available_bytes",
                                 "Filesystem space available to unprivileged users.", labels=fs_labels)
    net_rx = CounterMetricFamily("mdp_network_receive_bytes", "Bytes received by the interface since boot.",
                                 labels=["machine", "interface"])
    net_tx = CounterMetricFamily("mdp_network_transmit_bytes", "Bytes sent by the interface since boot.",
                                 labels=["machine", "interface"])
    families = [up, last, interval, ok, reports, info, *scalars, fs_size, fs_avail, net_rx, net_tx]
    rows: list[list[tuple[str, tuple, float]]] = [[] for _ in families]
    last_rows, interval_rows, ok_rows, reports_rows, info_rows = rows[1:6]
    scalar_rows = rows[6:6 + len(SCALAR_GAUGES)]
    fs_size_rows, fs_avail_rows, rx_rows, tx_rows = rows[6 + len(SCALAR_GAUGES):]
    scalar_fields = [(operation, field, scale, out) for (_, _, operation, field, scale), out
                     in zip(SCALAR_GAUGES, scalar_rows)]

    for m in machines:
        ip = m["ip"]
        labels = (ip,)
        last_rows.append((ip, labels, m["last_seen"]))
        interval_rows.append((ip, labels, m["interval"]))
        ok_rows.append((ip, labels, 1.0 if m["status"] else 0.0))
        reports_rows.append((ip, labels, float(m["reports"])))
        latest = m["latest"]
        for operation, field, scale, out in scalar_fields:
            result = _result(latest, operation)
            value = _number(result.get(field)) if isinstance(result, dict) else None
            if value is not None:
                out.append((ip, labels, value * scale))
        system = _result(latest, "system.info")
        if isinstance(system, dict):
            os_info = system.get("os") if isinstance(system.get("os"), dict) else {}
            kernel = system.get("kernel") if isinstance(system.get("kernel"), dict) else {}
            info_rows.append((ip, (ip, str(system.get("hostname", "")), str(system.get("agent_version", "")),
                                   str(os_info.get("pretty_name", "")), str(kernel.get("release", ""))), 1.0))
        for fs in _items(_result(latest, "filesystem.usage")):
            fs_labels = (ip, str(fs.get("mountpoint", "")), str(fs.get("device", "")), str(fs.get("fstype", "")))
            for out, field in ((fs_size_rows, "total"), (fs_avail_rows, "available")):
                value = _number(fs.get(field))
                if value is not None:
                    out.append((ip, fs_labels, value))
        for nic in _items(_result(latest, "network.stats")):
            for out, field in ((rx_rows, "rx_bytes"), (tx_rows, "tx_bytes")):
                value = _number(nic.get(field))
                if value is not None:
                    out.append((ip, (ip, str(nic.get("name", ""))), value))
    return families, rows


def _filled(family: Metric, samples) -> Metric:
    """A new family like `family` (name, help, type, label names) holding these (labels, value) samples."""
    copy = (CounterMetricFamily if family.type == "counter" else GaugeMetricFamily)(
        family.name, family.documentation, labels=family._labelnames)
    for labels, value in samples:
        copy.add_metric(labels, value)
    return copy


class _Families:
    """A one-off prometheus_client collector: generate_latest() of it renders exactly these families."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _render(families: list[Metric]) -> list[tuple[str, list[str]]]:
    """Each family's header and sample lines as prometheus_client renders them, in the order added.

    generate_latest writes "# HELP", "# TYPE" and then one line per sample (label values have their
    newlines escaped), so the lines can be handed back sample by sample.
    """
    lines = generate_latest(_Families(families)).decode().split("\n")
    out, at = [], 0
    for family in families:
        if not (lines[at].startswith("# HELP ") and lines[at + 1].startswith("# TYPE ")):
            raise ValueError(f"unexpected exposition of {family.name}: {lines[at]!r}")
        count = len(family.samples)
        out.append((lines[at] + "\n" + lines[at + 1] + "\n", [line + "\n" for line in lines[at + 2:at + 2 + count]]))
        at += 2 + count
    return out


class _Rendered:
    """What a scrape needs of one machine beside its lines in each family (FleetMetrics.lines), and the
    prefixes of its samples' lines (per family, {label values: 'name{labels} '}) as prometheus_client
    rendered them: a label set the machine had before is not rendered again."""

    __slots__ = ("reports", "interval", "up_lines", "order", "prefixes")

    def __init__(self, reports: int, interval: float, up_lines: tuple[str, str], order: int, prefixes: tuple):
        self.reports, self.interval, self.up_lines, self.order = reports, interval, up_lines, order
        self.prefixes = prefixes


class FleetMetrics:
    """The /metrics exposition: every machine's latest values from the database, and the monitor's counters.

    At 10,000 machines that is ~150,000 samples, seconds of prometheus_client rendering. So each
    machine's samples are rendered by prometheus_client ahead of the scrape (refresh(), run by a
    background thread of the HTTP process, start_refresher), and a scrape joins the rendered lines
    under each family's header. mdp_machine_up is decided at the scrape, from the machines table as
    it is then. prometheus_client renders a machine's label sets once; a sample's line is that prefix
    and the value as prometheus_client formats it (_render_machines).

    When: a machine is rendered as soon as it first reports (until then it is missing from
    /metrics). After that the background thread renders the machines with new reports once per
    scrape, not once per report (a fleet reporting every 10 s and scraped every 15 s was rendered
    1.5 times for each scrape, the machines' share of the HTTP process's CPU): the round starts
    RENDER_LEAD_S (or twice the last round's duration) before the next scrape is due, as the gap
    between the last two scrapes foretells, so a scrape sees values only seconds old. Without
    scrapes, every RENDER_MAX_AGE_S. Without the background thread (tests, one-off use) a scrape
    renders everything new first.
    """

    def __init__(self, db: str, monitor: Callable[[], dict | None] = lambda: None):
        self.reader = FleetReader(db)         # web.py's API reads through this one, under self.lock
        self.lock = threading.Lock()
        # Its own connection, so a long API read (all machines' latest values) never holds up a scrape.
        self.rows = FleetReader(db, share_intervals_with=self.reader)
        self.rows_lock = threading.Lock()
        self.refresh_lock = threading.Lock()  # one refresh at a time
        self.render_lock = threading.Lock()   # held while the rendered lines change (briefly) or are joined
        self.monitor = monitor                # the running monitor's counters (monitor_snapshot), or None
        self.rendered: dict[str, _Rendered] = {}
        empty = _machine_families([])[0]
        self.names = [family.name for family in empty]
        self.headers = [header for header, _ in _render(empty)]
        # Family name -> machine -> its lines in that family: a scrape joins each family's values in C.
        self.lines: dict[str, dict[str, str]] = {name: {} for name in self.names if name != UP}
        self._renders = 0   # a counter: which machine waited longest since its rendering
        self._refresher: threading.Thread | None = None
        self.scrapes: list[float] = []        # monotonic times of the last two scrapes

    def _counts(self) -> dict[str, int]:
        with self.rows_lock:
            return dict(self.rows.conn.execute("SELECT ip, reports FROM machines").fetchall())

    def refresh(self, cpu_share: float | None = None, new_only: bool = False) -> int:
        """Render the machines with reports since their last rendering; returns how many.

        new_only: only machines never rendered (and forget machines no longer in the database).
        cpu_share: sleep between batches so the rendering takes at most that share of a core (but not
        after machines rendered for the first time: until then they are missing from /metrics).
        """
        with self.refresh_lock:
            if new_only:   # machines only come (none is deleted): the count says whether any is new
                with self.rows_lock:
                    count = self.rows.conn.execute("SELECT COUNT(*) FROM machines").fetchone()[0]
                if count == len(self.rendered):
                    return 0
            counts = self._counts()
            gone = [ip for ip in self.rendered if ip not in counts]
            if gone:
                with self.render_lock:
                    for ip in gone:
                        del self.rendered[ip]
                        for by_machine in self.lines.values():
                            by_machine.pop(ip, None)
            rendered = self.rendered
            if new_only:
                changed = [ip for ip in counts if ip not in rendered]
            else:
                changed = [ip for ip, reports in counts.items()
                           if ip not in rendered or rendered[ip].reports != reports]
                changed.sort(key=lambda ip: rendered[ip].order if ip in rendered else -1)
            for start in range(0, len(changed), RENDER_BATCH):
                began = time.thread_time()
                batch = changed[start:start + RENDER_BATCH]
                first_time = batch[-1] not in rendered   # machines not on /metrics yet: no pause
                with self.rows_lock:
                    machines = self.rows.machines(ordered=False, ips=batch)
                self._render_machines(machines)
                if cpu_share and not first_time:
                    time.sleep((time.thread_time() - began) * (1 / cpu_share - 1))
            return len(changed)

    def _render_machines(self, machines: list[dict]):
        machines = [m for m in machines if m["last_seen"] is not None]
        families, rows = _machine_families(machines)
        rendered = self.rendered
        # A sample's line is prometheus_client's: the prefix it renders for the label set ('name{labels} ',
        # names and values escaped) and the value as it formats it (floatToGoString), the bytes a
        # rendering of the whole family gives (a test compares them). Values change with every report,
        # label sets seldom: prometheus_client renders only the label sets a machine did not have at
        # its previous rendering (a new machine, a new mountpoint).
        empty: dict = {}
        missing: list[list] = [[] for _ in families]
        for index, family_rows in enumerate(rows):
            if index == 0:   # mdp_machine_up: rendered once per machine (_up_family)
                continue
            for ip, labels, _ in family_rows:
                previous = rendered.get(ip)
                if labels not in (previous.prefixes[index] if previous is not None else empty):
                    missing[index].append(labels)
        fresh: list[dict] = [{} for _ in families]
        to_render = [(index, _filled(families[index], [(labels, 0.0) for labels in dict.fromkeys(labels_list)]))
                     for index, labels_list in enumerate(missing) if labels_list]
        for (index, family), (_, lines) in zip(to_render, _render([family for _, family in to_render])):
            for sample, line in zip(family.samples, lines):
                fresh[index][tuple(sample.labels[name] for name in family._labelnames)] = line[:line.rindex(" ") + 1]
        prefixes = {m["ip"]: [empty] * len(families) for m in machines}
        new_lines: list[dict[str, str]] = [{} for _ in families]
        for index, family_rows in enumerate(rows):
            if index == 0:
                continue
            parts: dict[str, list[str]] = {}
            for ip, labels, value in family_rows:
                mine = prefixes[ip][index]
                if mine is empty:
                    mine = prefixes[ip][index] = {}
                previous = rendered.get(ip)
                prefix = previous.prefixes[index].get(labels) if previous is not None else None
                if prefix is None:
                    prefix = fresh[index][labels]
                mine[labels] = prefix
                parts.setdefault(ip, []).append(prefix + floatToGoString(value) + "\n")
            new_lines[index] = {ip: "".join(lines) for ip, lines in parts.items()}
        known = [m for m in machines if m["ip"] in rendered]
        new = [m for m in machines if m["ip"] not in rendered]
        up = _render([_up_family(new)])[0][1]   # the label set never changes: rendered once per machine
        with self.render_lock:
            for family, by_ip in zip(families[1:], new_lines[1:]):
                by_machine = self.lines[family.name]
                for m in machines:   # a value the new report lacks disappears with it
                    lines = by_ip.get(m["ip"])
                    if lines is None:
                        by_machine.pop(m["ip"], None)
                    else:
                        by_machine[m["ip"]] = lines
            for m in known:
                entry = rendered[m["ip"]]
                entry.reports, entry.interval, entry.order = m["reports"], m["interval"], self._renders
                entry.prefixes = tuple(prefixes[m["ip"]])
                self._renders += 1
            for index, m in enumerate(new):
                rendered[m["ip"]] = _Rendered(m["reports"], m["interval"], (up[2 * index], up[2 * index + 1]),
                                              self._renders, tuple(prefixes[m["ip"]]))
                self._renders += 1

    def exposition(self) -> bytes:
        """The whole /metrics body (the classic text format)."""
        if self._refresher is None:
            self.refresh()
        else:
            self.scrapes = [*self.scrapes[-1:], time.monotonic()]
        now = time.time()
        with self.rows_lock:
            last_seen = self.rows.conn.execute("SELECT ip, last_seen FROM machines").fetchall()
            db_bytes = self.rows.database_bytes()
        with self.render_lock:
            rendered = self.rendered
            parts = []
            for name, header in zip(self.names, self.headers):
                parts.append(header)
                if name == UP:
                    for ip, seen in last_seen:
                        machine = rendered.get(ip)
                        if machine is not None:
                            parts.append(machine.up_lines[is_up(seen, machine.interval, now)])
                else:
                    parts.append("".join(self.lines[name].values()))
        own = generate_latest(_Families(list(self._monitor_families(len(last_seen), db_bytes))))
        return "".join(parts).encode() + own

    def round_due(self, round_started: float, round_took: float, now: float) -> bool:
        """Whether the background thread renders the changed machines now (see the class's doc)."""
        if now - round_started >= RENDER_MAX_AGE_S:
            return True
        if not self.scrapes or self.scrapes[-1] <= round_started:
            return False   # no scrape since the last round: its lines have not been served yet
        gap = self.scrapes[-1] - self.scrapes[0] if len(self.scrapes) > 1 else 0.0
        return now >= self.scrapes[-1] + gap - max(RENDER_LEAD_S, 2 * round_took)

    def start_refresher(self, every: float | None = None) -> threading.Thread:
        """Keep the rendered lines current from a daemon thread, so a scrape only joins them."""
        every = REFRESH_S if every is None else every

        def run():
            round_started, round_took = -RENDER_MAX_AGE_S, 0.0
            while True:
                started = time.monotonic()
                try:
                    if self.round_due(round_started, round_took, started):
                        round_started = started
                        self.refresh(RENDER_CPU_SHARE)
                        round_took = time.monotonic() - started
                    else:
                        self.refresh(new_only=True)
                except Exception:   # a bad moment of the database must not end the rendering for good
                    log.exception("rendering the machines' metrics failed; retrying")
                time.sleep(max(0.0, every - (time.monotonic() - started)))

        self._refresher = threading.Thread(target=run, name="mdp-metrics", daemon=True)
        self._refresher.start()
        return self._refresher

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
