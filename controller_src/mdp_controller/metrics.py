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


_NUMBERS = (int, float)   # exactly these: JSON's numbers (a bool is an int, and not a value here)


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


def _up_family(ips: list[str]) -> Metric:
    """mdp_machine_up, both values for each machine (down, then up): a scrape picks one by its time."""
    up = GaugeMetricFamily(UP, UP_HELP, labels=["machine"])
    for ip in ips:
        up.add_metric([ip], 0.0)
        up.add_metric([ip], 1.0)
    return up


def _empty_families() -> list[Metric]:
    """The per-machine families, empty, in exposition order: _samples() names them by their index here."""
    fs_labels = ["machine", "mountpoint", "device", "fstype"]
    return [
        _up_family([]),
        GaugeMetricFamily("mdp_machine_last_report_timestamp_seconds",
                          "When the newest report was received, seconds since the Unix epoch.", labels=["machine"]),
        GaugeMetricFamily("mdp_machine_report_interval_seconds",
                          "The machine's report interval, estimated from its newest reports.", labels=["machine"]),
        GaugeMetricFamily("mdp_machine_report_ok", "1 if every operation in the newest report succeeded.",
                          labels=["machine"]),
        CounterMetricFamily("mdp_machine_reports", "Reports stored from the machine.", labels=["machine"]),
        GaugeMetricFamily("mdp_machine_info", "Always 1: the machine's identity from system.info, when reported.",
                          labels=["machine", "hostname", "agent_version", "os", "kernel"]),
        *(GaugeMetricFamily(name, help_, labels=["machine"]) for name, help_, *_ in SCALAR_GAUGES),
        GaugeMetricFamily("mdp_filesystem_size_bytes", "Filesystem size.", labels=fs_labels),
        GaugeMetricFamily("mdp_filesystem_available_bytes", "Filesystem space available to unprivileged users.",
                          labels=fs_labels),
        CounterMetricFamily("mdp_network_receive_bytes", "Bytes received by the interface since boot.",
                            labels=["machine", "interface"]),
        CounterMetricFamily("mdp_network_transmit_bytes", "Bytes sent by the interface since boot.",
                            labels=["machine", "interface"]),
    ]


_LAST, _INTERVAL, _OK, _REPORTS, _INFO = range(1, 6)
_FS_SIZE = 6 + len(SCALAR_GAUGES)
_FS_AVAILABLE, _NET_RX, _NET_TX = _FS_SIZE + 1, _FS_SIZE + 2, _FS_SIZE + 3
_SCALAR_FIELDS = [(6 + i, operation, field, scale) for i, (_, _, operation, field, scale) in enumerate(SCALAR_GAUGES)]
# The operations whose latest results /metrics reads (the others' are not even decoded).
METRIC_OPERATIONS = sorted({operation for _, operation, *_ in _SCALAR_FIELDS}
                           | {"system.info", "filesystem.usage", "network.stats"})


def _samples(ip: str, last_seen: float, interval: float, ok, reports: int,
             results: dict) -> list[tuple[int, tuple, float]]:
    """One machine's samples, (family index in _empty_families(), label values, value), in family order.

    results: the latest result of each of METRIC_OPERATIONS the machine reported. A field missing or
    not a number is left out for that machine (an old agent, a failing operation)."""
    labels = (ip,)
    out = [(_LAST, labels, last_seen), (_INTERVAL, labels, interval), (_OK, labels, 1.0 if ok else 0.0),
           (_REPORTS, labels, float(reports))]
    system = results.get("system.info")
    if isinstance(system, dict):
        os_info = system.get("os") if isinstance(system.get("os"), dict) else {}
        kernel = system.get("kernel") if isinstance(system.get("kernel"), dict) else {}
        out.append((_INFO, (ip, str(system.get("hostname", "")), str(system.get("agent_version", "")),
                            str(os_info.get("pretty_name", "")), str(kernel.get("release", ""))), 1.0))
    for index, operation, field, scale in _SCALAR_FIELDS:
        result = results.get(operation)
        if result.__class__ is dict:
            value = result.get(field)
            if value.__class__ in _NUMBERS:
                out.append((index, labels, value * scale))
    filesystems = [(fs, (ip, str(fs.get("mountpoint", "")), str(fs.get("device", "")), str(fs.get("fstype", ""))))
                   for fs in _items(results.get("filesystem.usage"))]
    nics = [(nic, (ip, str(nic.get("name", "")))) for nic in _items(results.get("network.stats"))]
    for index, items, field in ((_FS_SIZE, filesystems, "total"), (_FS_AVAILABLE, filesystems, "available"),
                                (_NET_RX, nics, "rx_bytes"), (_NET_TX, nics, "tx_bytes")):
        for item, item_labels in items:
            value = item.get(field)
            if value.__class__ in _NUMBERS:
                out.append((index, item_labels, float(value)))
    return out


def _machine_families(machines: list[tuple]) -> list[Metric]:
    """The per-machine families of these machines (FleetReader.metric_rows), filled: a whole rendering."""
    families = _empty_families()
    for machine in machines:
        for index, labels, value in _samples(*machine):
            families[index].add_metric(labels, value)
    return families


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
    """What a scrape needs of one machine beside its lines in each family (FleetMetrics.lines), and what
    the next rendering reuses: its samples as four lists in exposition order, each sample's (family
    index, label values), prefix ('name{labels} ', prometheus_client's rendering of the label set, done
    once), value and line, and where each family's lines start and end. A value the next report
    repeats keeps its line; a report with the same label sets (nearly every one) is matched by one
    comparison of the lists of keys."""

    __slots__ = ("reports", "interval", "up_lines", "order", "keys", "prefixes", "values", "lines", "groups",
                 "families")

    def __init__(self, up_lines: tuple[str, str]):
        self.up_lines = up_lines
        self.reports, self.interval, self.order = 0, 0.0, 0
        self.keys: list[tuple[int, tuple]] = []
        self.prefixes: list[str] = []
        self.values: list[float] = []
        self.lines: list[str] = []
        self.groups: list[tuple[int, int, int]] = []   # (family index, first sample, past the last)
        self.families: dict[int, str] = {}   # family index -> the machine's lines in it

    @property
    def samples(self) -> dict[tuple, tuple[str, float, str]]:
        """(family index, label values) -> (prefix, value, line): for reading, not for the hot path."""
        return {key: sample for key, *sample in zip(self.keys, self.prefixes, self.values, self.lines)}


def _groups(keys: list[tuple[int, tuple]]) -> list[tuple[int, int, int]]:
    """(family index, first, past the last) of each run of samples of one family, in order."""
    groups, start = [], 0
    for at in range(1, len(keys) + 1):
        if at == len(keys) or keys[at][0] != keys[start][0]:
            groups.append((keys[start][0], start, at))
            start = at
    return groups


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
        self.empty = _empty_families()
        self.names = [family.name for family in self.empty]
        self.headers = [header for header, _ in _render(self.empty)]
        # Family name -> machine -> its lines in that family: a scrape joins each family's values in C.
        self.lines: dict[str, dict[str, str]] = {name: {} for name in self.names if name != UP}
        self._by_index = [self.lines.get(name) for name in self.names]
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
                    machines = self.rows.metric_rows(batch, METRIC_OPERATIONS)
                self._render_machines(machines)
                if cpu_share and not first_time:
                    time.sleep((time.thread_time() - began) * (1 / cpu_share - 1))
            return len(changed)

    def _render_machines(self, machines: list[tuple]):
        """Make these machines' lines (FleetReader.metric_rows) and put them in place of their old ones.

        A sample's line is prometheus_client's: the prefix it renders for the label set ('name{labels} ',
        names and values escaped) and the value as it formats it (floatToGoString), the bytes a
        rendering of the whole family gives (a test compares them). Values change with every report,
        label sets seldom: prometheus_client renders only the label sets a machine did not have at its
        previous rendering (a new machine, a new mountpoint), and a value the report repeats (memory
        total, a filesystem's size) keeps its line."""
        rendered = self.rendered
        work, missing = [], {}   # missing: family index -> label sets to render, in order
        for machine in machines:
            samples = _samples(*machine)
            keys = [(index, labels) for index, labels, _ in samples]
            values = [value for _, _, value in samples]
            previous = rendered.get(machine[0])
            if previous is not None and keys == previous.keys:   # the same label sets: reuse as they are
                work.append((machine, keys, values, previous.prefixes, previous.values, previous.lines,
                             previous.groups))
                continue
            known = previous.samples if previous is not None else {}
            old = [known.get(key, (None, None, None)) for key in keys]
            for key, (prefix, _, _) in zip(keys, old):
                if prefix is None:
                    missing.setdefault(key[0], {})[key[1]] = None
            work.append((machine, keys, values, [sample[0] for sample in old], [sample[1] for sample in old],
                         [sample[2] for sample in old], _groups(keys)))
        if missing:
            fresh = {}
            indexes = list(missing)
            to_render = [_filled(self.empty[index], [(labels, 0.0) for labels in missing[index]]) for index in indexes]
            for index, (_, lines) in zip(indexes, _render(to_render)):
                for labels, line in zip(missing[index], lines):
                    fresh[(index, labels)] = line[:line.rindex(" ") + 1]
            for _, keys, _, prefixes, _, _, _ in work:
                for at, prefix in enumerate(prefixes):
                    if prefix is None:
                        prefixes[at] = fresh[keys[at]]
        made = []
        for machine, keys, values, prefixes, old_values, old_lines, groups in work:
            # A changed value gets a new line (a zero too: it may be -0.0, which equals 0.0).
            lines = [line if value == old_value and value else prefix + floatToGoString(value) + "\n"
                     for prefix, value, old_value, line in zip(prefixes, values, old_values, old_lines)]
            families = {index: "".join(lines[start:end]) for index, start, end in groups}
            made.append((machine, (keys, prefixes, values, lines, groups), families))
        new = [machine[0] for machine in machines if machine[0] not in rendered]
        up = _render([_up_family(new)])[0][1] if new else []   # the label set never changes: rendered once
        by_index = self._by_index
        with self.render_lock:
            for index, ip in enumerate(new):
                rendered[ip] = _Rendered((up[2 * index], up[2 * index + 1]))
            for (ip, _, interval, _, reports, _), samples, families in made:
                entry = rendered[ip]
                for index in entry.families:   # a value the new report lacks disappears with it
                    if index not in families:
                        del by_index[index][ip]
                for index, lines in families.items():
                    by_index[index][ip] = lines
                entry.reports, entry.interval, entry.order = reports, interval, self._renders
                entry.keys, entry.prefixes, entry.values, entry.lines, entry.groups = samples
                entry.families = families
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
