"""The monitor's read side in-process: retention, history, up/stale, the metrics collector, the HTTP server's rules."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest
from integration.harness import wait_for

from mdp_controller import web
from mdp_controller.cli import _duration, human_duration
from mdp_controller.metrics import RENDER_LEAD_S, RENDER_MAX_AGE_S, FleetMetrics
from mdp_controller.retention import Pruner
from mdp_controller.storage import (
    DEFAULT_INTERVAL_S,
    FleetReader,
    ReportStore,
    estimate_interval,
    is_up,
    monitor_info,
    prune_reports,
    set_monitor_info,
)

TOKEN = "a-token-of-thirty-two-characters"


def report(load1=0.5, mountpoint="/", extra=()):
    ops = [{"name": "load.avg", "result": {"load1": load1, "load5": 0.4, "load15": 0.3}},
           {"name": "memory.info", "result": {"total": 1000, "available": 250, "swap": {"total": 0, "free": 0}}},
           {"name": "filesystem.usage", "result": [{"mountpoint": mountpoint, "device": "/dev/x", "fstype": "ext4",
                                                    "total": 100, "available": 40}]}, *extra]
    return {"status": True, "version": "2.0", "operations": ops}


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.9, "59s"), (42 * 60, "42m"), (3600, "1h"),
                                           (3600 + 5 * 60, "1h 5m"), (86400, "1d"), (3 * 86400 + 4 * 3600, "3d 4h")])
def test_durations_read_as_people_say_them(seconds, text):
    assert human_duration(seconds) == text


def test_duration_arguments():
    assert [_duration(t) for t in ("90", "90s", "15m", "12h", "7d", "2w")] == [90, 90, 900, 43200, 604800, 1209600]
    for bad in ("", "d", "-1d", "0", "1y", "nan", "inf"):
        with pytest.raises(Exception, match="duration|more than 0"):
            _duration(bad)


def test_interval_is_the_median_gap_and_up_means_within_three_of_them():
    assert estimate_interval([100.0, 90.0, 80.0, 40.0, 30.0]) == 10.0   # one lost report does not move it
    assert estimate_interval([100.0]) == DEFAULT_INTERVAL_S
    assert is_up(100.0, 10.0, 130.0) and not is_up(100.0, 10.0, 130.1) and not is_up(None, 10.0, 0.0)


def test_a_backlog_drained_in_one_burst_does_not_shrink_the_interval(tmp_path):
    """An agent back from a monitor outage sends its spooled reports at once (seen in `make demo`: a machine
    reporting every 5 s shown stale 2 s after a report); the interval comes from when they were made."""
    store = ReportStore(tmp_path / "mdp.db")
    for i, at in enumerate((1000.0, 1005.0, 1010.0, 1015.0)):   # the backlog: made 5 s apart, sent at once
        store.add("10.0.0.5", dict(report(), reported_at=at), received_at=1016.0 + i / 10)
    store.add("10.0.0.5", dict(report(), reported_at=1020.0), received_at=1020.01)   # then on time
    store.add("10.0.0.6", report(), received_at=2000.0)   # no reported_at (older agents): receive times
    store.add("10.0.0.6", report(), received_at=2010.0)
    store.flush()
    machines = {m["ip"]: m for m in FleetReader(tmp_path / "mdp.db").machines(now=1032.0)}
    assert machines["10.0.0.5"]["interval"] == 5.0 and machines["10.0.0.5"]["up"] is True
    assert FleetReader(tmp_path / "mdp.db").machines(now=1036.0, ip="10.0.0.5")[0]["up"] is False
    assert machines["10.0.0.6"]["interval"] == 10.0


def test_retention_prunes_old_reports_in_batches_and_keeps_recent_ones(tmp_path):
    store = ReportStore(tmp_path / "mdp.db")
    for i in range(4500):
        store.add("10.0.0.5", report(), received_at=1000.0 + i)
    for i in range(10):
        store.add("10.0.0.5", report(), received_at=100_000.0 + i)
    store.flush()
    pruner = Pruner(store, retention_s=50_000.0, batch=2000)
    assert [pruner.step(now=150_000.0) for _ in range(4)] == [2000, 2000, 500, 0]
    assert pruner.pruned == 4500
    rows = store.conn.execute("SELECT MIN(received_at), COUNT(*) FROM reports").fetchone()
    assert tuple(rows) == (100_000.0, 10)
    # The machine and its latest values stay: retention is about history, not about forgetting machines.
    assert FleetReader(tmp_path / "mdp.db").machines()[0]["reports"] == 4510
    assert prune_reports(store.conn, older_than=0.0) == 0


def test_history_is_thinned_evenly_to_the_limit(tmp_path):
    store = ReportStore(tmp_path / "mdp.db")
    for i in range(100):
        store.add("10.0.0.5", report(load1=i), received_at=1000.0 + i)
    store.flush()
    reader = FleetReader(tmp_path / "mdp.db")
    points = reader.history("10.0.0.5", since=0, until=2000, limit=10)
    assert [p["report"]["operations"][0]["result"]["load1"] for p in points] == list(range(0, 100, 10))
    assert len(reader.history("10.0.0.5", since=1050, until=2000)) == 50
    assert reader.history("10.0.0.6", since=0) == []


def test_metrics_are_built_from_the_database_at_scrape_time(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    nic = {"name": "network.stats", "result": [{"name": "eth0", "rx_bytes": 10, "tx_bytes": 20}]}
    bad = {"name": "process.count", "result": {"total": "many", "threads": True}}   # not numbers: left out
    store.add("10.0.0.5", report(mountpoint='/odd "mount"\\x', extra=[nic, bad]))
    store.add("10.0.0.6", report(), received_at=1.0)   # reported once, long ago: down
    store.flush()
    metrics = FleetMetrics(str(db))
    text = metrics.exposition().decode()
    assert 'mdp_machine_up{machine="10.0.0.5"} 1.0' in text and 'mdp_machine_up{machine="10.0.0.6"} 0.0' in text
    assert "# TYPE mdp_machine_reports_total counter" in text
    assert 'mdp_memory_available_bytes{machine="10.0.0.5"} 250.0' in text
    assert 'mdp_network_receive_bytes_total{interface="eth0",machine="10.0.0.5"} 10.0' in text
    assert 'mountpoint="/odd \\"mount\\"\\\\x"' in text   # escaped by prometheus_client, not by hand
    assert 'mdp_processes{' not in text and 'mdp_threads{' not in text
    assert "mdp_monitor_datagrams_received_total" not in text   # no running collector in this process
    store.add("10.0.0.7", report())
    store.flush()
    assert 'mdp_machine_up{machine="10.0.0.7"} 1.0' in metrics.exposition().decode()


def test_metrics_render_each_machine_once_per_new_report_and_match_a_full_rendering(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    now = time.time()
    store.add("10.0.0.5", report(load1=1.0), received_at=now - 20)
    store.add("10.0.0.6", report())
    store.flush()
    metrics = FleetMetrics(str(db))
    assert metrics.refresh() == 2 and metrics.refresh() == 0   # nothing new: nothing rendered again
    store.add("10.0.0.5", report(load1=2.0, mountpoint="/srv"), received_at=now - 10)
    store.flush()
    assert metrics.refresh() == 1
    text = metrics.exposition().decode()
    assert 'mdp_load1{machine="10.0.0.5"} 2.0' in text and 'mdp_load1{machine="10.0.0.5"} 1.0' not in text
    # The filesystem the new report no longer has is gone with it; the other machine's stays.
    assert 'fstype="ext4",machine="10.0.0.5",mountpoint="/srv"' in text
    assert 'fstype="ext4",machine="10.0.0.5",mountpoint="/"}' not in text
    assert 'fstype="ext4",machine="10.0.0.6",mountpoint="/"}' in text
    assert text.count("# TYPE mdp_load1 gauge") == 1 and text.count("# TYPE mdp_machine_up gauge") == 1
    # Rendered piecemeal over time, the exposition is the one a fresh rendering of everything gives
    # (but for the interval: a reader re-estimates it every INTERVAL_SAMPLE reports, a new one at once).
    def lines(text):
        return sorted(line for line in text.splitlines() if not line.startswith("mdp_machine_report_interval"))
    assert lines(text) == lines(FleetMetrics(str(db)).exposition().decode())


def test_with_the_background_renderer_a_scrape_decides_up_from_the_database_as_it_is(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.add("10.0.0.5", report(), received_at=time.time() - 3600)   # long ago: down
    store.flush()
    metrics = FleetMetrics(str(db))
    metrics.start_refresher(every=3600)   # renders once now, then not again during this test
    wait_for(lambda: "10.0.0.5" in metrics.rendered, "the first rendering", timeout=10)
    assert 'mdp_machine_up{machine="10.0.0.5"} 0.0' in metrics.exposition().decode()
    store.add("10.0.0.5", report())
    store.flush()
    text = metrics.exposition().decode()   # no rendering at the scrape: the reports count is the old one
    assert 'mdp_machine_up{machine="10.0.0.5"} 1.0' in text
    assert 'mdp_machine_reports_total{machine="10.0.0.5"} 1.0' in text


def test_the_background_renderer_renders_changed_machines_once_per_scrape_before_it_is_due(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.add("10.0.0.5", report())
    store.flush()
    metrics = FleetMetrics(str(db))
    # Without a scrape, a round only every RENDER_MAX_AGE_S; a new machine is rendered at once.
    assert not metrics.round_due(100.0, 0.0, 101.0) and metrics.round_due(100.0, 0.0, 100.0 + RENDER_MAX_AGE_S)
    assert metrics.refresh(new_only=True) == 1 and metrics.refresh(new_only=True) == 0
    store.add("10.0.0.5", report(load1=3.0))
    store.add("10.0.0.6", report())
    store.flush()
    assert metrics.refresh(new_only=True) == 1        # 10.0.0.6 only: 10.0.0.5 waits for its round
    assert metrics.lines["mdp_load1"]["10.0.0.5"] == 'mdp_load1{machine="10.0.0.5"} 0.5\n'
    assert metrics.refresh() == 1                     # the round renders it
    assert metrics.lines["mdp_load1"]["10.0.0.5"] == 'mdp_load1{machine="10.0.0.5"} 3.0\n'
    # With scrapes 15 s apart, the next round starts RENDER_LEAD_S (or twice the last round's time)
    # before the next scrape is due; never twice for one scrape.
    metrics.scrapes = [1000.0]
    assert metrics.round_due(990.0, 0.0, 1000.0)      # no gap known yet: at once after the first scrape
    assert not metrics.round_due(1000.0, 0.5, 1010.0)  # a round since the last scrape: none again
    metrics.scrapes = [1000.0, 1015.0]
    assert not metrics.round_due(1000.0, 0.5, 1020.0)
    assert metrics.round_due(1000.0, 0.5, 1015.0 + 15.0 - RENDER_LEAD_S)
    assert not metrics.round_due(1000.0, 4.0, 1015.0 + 15.0 - 8.5)
    assert metrics.round_due(1000.0, 4.0, 1015.0 + 15.0 - 8.0)   # a long round starts earlier


def test_prometheus_client_renders_a_label_set_once_and_later_values_reuse_its_prefix(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    now = time.time()
    store.add("10.0.0.5", report(load1=1.0), received_at=now - 20)
    store.add("10.0.0.6", report(load1=1.0), received_at=now - 20)
    store.flush()
    metrics = FleetMetrics(str(db))
    metrics.refresh()
    memory = metrics.names.index("mdp_memory_total_bytes")
    filesystem = metrics.names.index("mdp_filesystem_size_bytes")
    load = metrics.names.index("mdp_load1")
    kept = metrics.rendered["10.0.0.5"].samples[(memory, ("10.0.0.5",))]
    assert kept[0] == 'mdp_memory_total_bytes{machine="10.0.0.5"} '
    load_prefix = metrics.rendered["10.0.0.5"].samples[(load, ("10.0.0.5",))][0]
    store.add("10.0.0.5", report(load1=2.0, mountpoint="/srv"), received_at=now - 10)
    store.add("10.0.0.6", report(load1=-0.0), received_at=now - 10)
    store.flush()
    assert metrics.refresh() == 2
    # The same memory total: the same line, not even formatted again; the load's line is made anew.
    assert metrics.rendered["10.0.0.5"].samples[(memory, ("10.0.0.5",))][2] is kept[2]
    assert metrics.rendered["10.0.0.5"].samples[(load, ("10.0.0.5",))][0] is load_prefix
    assert [labels for index, labels in metrics.rendered["10.0.0.5"].samples if index == filesystem] == [
        ("10.0.0.5", "/srv", "/dev/x", "ext4")]
    text = metrics.exposition().decode()
    assert 'mdp_load1{machine="10.0.0.5"} 2.0' in text and 'mdp_load1{machine="10.0.0.6"} -0.0' in text
    assert 'mdp_machine_reports_total{machine="10.0.0.5"} 2.0' in text
    assert sorted(text.splitlines()) == sorted(FleetMetrics(str(db)).exposition().decode().splitlines())
    # The same label sets again (the fast path): the memory line is still the one first made.
    store.add("10.0.0.5", report(load1=3.0, mountpoint="/srv"), received_at=now - 5)
    store.flush()
    assert metrics.refresh() == 1
    assert metrics.rendered["10.0.0.5"].samples[(memory, ("10.0.0.5",))][2] is kept[2]
    text = metrics.exposition().decode()
    assert 'mdp_load1{machine="10.0.0.5"} 3.0' in text
    assert sorted(text.splitlines()) == sorted(FleetMetrics(str(db)).exposition().decode().splitlines())


def test_the_exposition_is_byte_for_byte_what_prometheus_client_renders_of_the_whole_families(tmp_path):
    """The spliced lines (a prefix rendered once, the value formatted per report) against a plain
    generate_latest of every family, with values that exercise the float formatting and labels that
    need escaping."""
    from prometheus_client import generate_latest

    from mdp_controller.metrics import METRIC_OPERATIONS, UP, _Families, _machine_families
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    values = [0.0, -0.0, 1.0, 0.1, 1e-7, 123456789.0, 1e21, 2.5e15, 7, 10 ** 17, 3.14159]
    nic = {"name": "network.stats", "result": [{"name": 'e"th\\0\n', "rx_bytes": 10 ** 13, "tx_bytes": 1e-3}]}
    metrics = None
    for round_ in range(3):
        for i, value in enumerate(values):
            store.add("10.0.0.%d" % i, report(load1=value * (round_ + 1), mountpoint='/m "%d"\\x' % (i % 3),
                                              extra=[nic]))
        store.flush()
        metrics = metrics or FleetMetrics(str(db))   # one renderer: later rounds reuse its prefixes
        metrics.refresh()
    reader = FleetReader(db)
    families = _machine_families(reader.metric_rows([m["ip"] for m in reader.machines()], METRIC_OPERATIONS))
    expected = generate_latest(_Families([f for f in families if f.name != UP])).decode()
    body = metrics.exposition().decode()
    def sample_lines(text):
        return sorted(line for line in text.splitlines() if line and not line.startswith(("#", "mdp_machine_up{",
                      "mdp_monitor_", "mdp_machine_report_interval")))
    assert sample_lines(body) == sample_lines(expected) and len(sample_lines(body)) > 100


def test_the_page_rows_are_made_again_only_for_machines_with_new_reports(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.add("10.0.0.5", report(load1=1.0))
    store.add("10.0.0.10", report(), received_at=time.time() - 3600)   # long ago: down
    store.flush()
    app = web.FleetHttp(str(db), None, lambda: None)

    def fresh():
        return [web.machine_summary(m) for m in FleetReader(db).machines()]

    rows = app.api_machines()["machines"]
    assert [row["ip"] for row in rows] == ["10.0.0.5", "10.0.0.10"] and rows == fresh()
    assert [row["up"] for row in rows] == [True, False]
    kept = app._summaries["10.0.0.10"][1]
    store.add("10.0.0.5", report(load1=2.0))
    store.add("10.0.0.6", report())
    store.flush()
    rows = app.api_machines()["machines"]
    assert rows == fresh() and [row["ip"] for row in rows] == ["10.0.0.5", "10.0.0.6", "10.0.0.10"]
    assert rows[0]["load1"] == 2.0 and rows[0]["reports"] == 2
    assert app._summaries["10.0.0.10"][1] is kept   # no new report: not made again


def test_token_rules():
    with pytest.raises(web.HttpConfigError, match="not a loopback address"):
        web.check_exposure(("0.0.0.0", 9123), None)
    with pytest.raises(web.HttpConfigError):
        web.check_exposure(("monitor.example", 9123), None)
    for host in ("127.0.0.1", "127.3.4.5", "::1", "localhost"):
        web.check_exposure((host, 9123), None)
    web.check_exposure(("0.0.0.0", 9123), TOKEN)


def test_token_file_must_be_private_and_long(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o640)
    with pytest.raises(web.HttpConfigError, match="readable by others"):
        web.read_token(path)
    path.chmod(0o600)
    assert web.read_token(path) == TOKEN
    path.write_text("short")
    with pytest.raises(web.HttpConfigError, match="at least 16"):
        web.read_token(path)
    with pytest.raises(web.HttpConfigError, match="cannot read"):
        web.read_token(tmp_path / "missing")


def get(url, headers=None, method="GET"):
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_http_server_serves_only_its_routes_read_only_and_checks_the_token(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    store.add("10.0.0.5", report())
    store.flush()
    server, url = web.start(("127.0.0.1", 0), str(db), TOKEN)
    try:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        basic = {"Authorization": "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()}
        assert get(url)[0] == 401
        assert get(url, {"Authorization": "Bearer " + TOKEN[:-1] + "X"})[0] == 401
        assert get(url, {"Authorization": "Basic !!!"})[0] == 401
        status, headers, body = get(url, basic)
        assert status == 200 and b"MDP fleet" in body and "default-src 'self'" in headers["Content-Security-Policy"]
        status, headers, _ = get(url + "static/app.js", bearer)
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        for path in ("static/../web.py", "static/%2e%2e/web.py", "static/missing.js", "etc/passwd", "api/nothing"):
            assert get(url + path, bearer)[0] == 404, path
        assert get(url + "metrics", bearer, method="POST")[0] == 405
        machines = json.loads(get(url + "api/machines", bearer)[2])["machines"]
        assert [(m["ip"], m["up"], m["memory_used_ratio"], m["disk_used_ratio"]) for m in machines] == [
            ("10.0.0.5", True, 0.75, 0.6)]
        detail = json.loads(get(url + "api/machines/10.0.0.5", bearer)[2])
        assert set(detail["machine"]["latest"]) == {"load.avg", "memory.info", "filesystem.usage"}
        history = json.loads(get(url + "api/machines/10.0.0.5/history?seconds=600", bearer)[2])
        assert [p["load1"] for p in history["points"]] == [0.5]
        assert get(url + "api/machines/10.9.9.9", bearer)[0] == 404
        assert get(url + "metrics", bearer)[2].startswith(b"# HELP")
    finally:
        server.shutdown()
        server.server_close()


def test_monitor_info_records_and_forgets_the_page(tmp_path):
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    assert monitor_info(db) == {}
    set_monitor_info(store.conn, {"url": "http://127.0.0.1:9123/", "pid": 42})
    assert monitor_info(db) == {"url": "http://127.0.0.1:9123/", "pid": "42"}
    set_monitor_info(store.conn, {"url": None, "pid": None})
    assert monitor_info(db) == {}


def test_a_steady_machine_keeps_its_interval_without_a_query_and_a_new_interval_is_seen(tmp_path):
    """Every INTERVAL_SAMPLE reports a reader looks at a machine's interval again: reports still about one
    interval apart keep the estimate without reading them; reports at a new pace are read and estimated."""
    db = tmp_path / "mdp.db"
    store = ReportStore(db)
    at = 1000.0

    def send(count, every):
        nonlocal at
        for _ in range(count):
            at += every
            store.add("10.0.0.5", dict(report(), reported_at=at), received_at=at + 0.2)
        store.flush()

    reader = FleetReader(db)
    queries = []
    reader.conn.set_trace_callback(lambda sql: queries.append(sql) if "FROM reports" in sql else None)

    def interval():
        return reader.machines(now=at)[0]["interval"]

    send(6, 10.0)
    assert interval() == 10.0 and len(queries) == 1
    send(4, 10.0)      # fewer than INTERVAL_SAMPLE new reports: not looked at
    send(6, 11.5)      # a little slower (a lost report looks like this): the estimate stands, unread
    assert interval() == 10.0 and len(queries) == 1
    send(6, 60.0)      # the operator set a new interval
    assert interval() == 60.0 and len(queries) == 2
    for _ in range(3):  # a backlog: made 60 s apart, received at once, is read and keeps the interval
        at += 60.0
        store.add("10.0.0.5", dict(report(), reported_at=at), received_at=at + 300)
    store.add("10.0.0.5", dict(report(), reported_at=at + 60), received_at=at + 300.1)
    store.add("10.0.0.5", dict(report(), reported_at=at + 120), received_at=at + 300.2)
    store.flush()
    assert interval() == 60.0 and len(queries) == 3
