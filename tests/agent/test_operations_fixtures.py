"""Operations against recorded /proc and /sys trees, with expected values worked out by hand.

trusty: a hand-written Ubuntu 14.04 / kernel 3.13 tree (no MemAvailable, 11-counter diskstats,
"eth0:987654321" in net/dev, upstart's init as PID 1). debian12: recorded from a Debian 12 machine
with tests/fixtures/proc/record.py. Values below come from reading those files, not the code.
"""

import os
import shutil

import pytest

from mdp_operations import _host, cpu, disk, filesystem, load, memory, network, process, system

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
KB = 1024


def roots_for(name):
    return os.path.join(FIXTURES, "proc", name), os.path.join(FIXTURES, "sys", name)


@pytest.fixture
def trusty(tmp_path):
    """The trusty tree, with an /etc holding 14.04's os-release."""
    proc, sys_ = roots_for("trusty")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "os-release").write_text(
        'NAME="Ubuntu"\nVERSION="14.04.6 LTS, Trusty Tahr"\nID=ubuntu\nID_LIKE=debian\n'
        'PRETTY_NAME="Ubuntu 14.04.6 LTS"\nVERSION_ID="14.04"\n')
    with _host.roots(proc=proc, sys=sys_, etc=str(etc)):
        yield


@pytest.fixture
def trusty_copy(tmp_path):
    """A writable copy of the trusty tree, for operations that compare two samples."""
    proc, sys_ = roots_for("trusty")
    copy = tmp_path / "proc"
    shutil.copytree(proc, str(copy), symlinks=True)
    with _host.roots(proc=str(copy), sys=sys_):
        yield copy


@pytest.fixture
def debian12():
    proc, sys_ = roots_for("debian12")
    with _host.roots(proc=proc, sys=sys_):
        yield


needs_4k_pages = pytest.mark.skipif(os.sysconf("SC_PAGE_SIZE") != 4096,
                                    reason="fixtures were recorded on 4 KiB-page machines")


def test_roots_are_restored_after_fixture_use(trusty):
    assert not _host.is_real()


def test_roots_real_outside_fixtures():
    assert _host.is_real()


# --- system ---------------------------------------------------------------------------------

def test_system_info_trusty(trusty):
    info = system.info()
    assert info["hostname"] == "trusty-web1"
    assert info["kernel"] == {"name": "Linux", "release": "3.13.0-170-generic",
                              "version": "#220-Ubuntu SMP Thu May 9 12:40:49 UTC 2019"}
    assert info["os"] == {"id": "ubuntu", "version_id": "14.04", "pretty_name": "Ubuntu 14.04.6 LTS",
                          "codename": None}
    assert info["cpu_count"] == 2
    assert info["boot_time"] == 1700000000


def test_system_info_reads_lsb_release_when_os_release_is_missing(trusty, tmp_path):
    etc = tmp_path / "etc"
    (etc / "os-release").unlink()
    (etc / "lsb-release").write_text('DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=14.04\nDISTRIB_CODENAME=trusty\n'
                                     'DISTRIB_DESCRIPTION="Ubuntu 14.04.6 LTS"\n')
    assert system.info()["os"] == {"id": "Ubuntu", "version_id": "14.04",
                                   "pretty_name": "Ubuntu 14.04.6 LTS", "codename": "trusty"}


def test_system_uptime_trusty(trusty):
    assert system.uptime() == {"seconds": 86400.5, "idle_seconds": 160000.25, "boot_time": 1700000000}


def test_system_info_debian12(debian12):
    info = system.info()
    assert info["hostname"] == "vm"
    assert info["kernel"]["release"] == "6.18.44-fc-v595"
    assert info["cpu_count"] == 2
    assert info["boot_time"] == 1795804562


# --- load -----------------------------------------------------------------------------------

def test_load_avg_trusty(trusty):
    assert load.avg() == {"load1": 0.52, "load5": 0.38, "load15": 0.31, "runnable": 2, "tasks": 187,
                          "last_pid": 4242}


def test_load_avg_debian12(debian12):
    assert load.avg() == {"load1": 0.28, "load5": 0.15, "load15": 0.06, "runnable": 2, "tasks": 101,
                          "last_pid": 12280}


# --- memory ---------------------------------------------------------------------------------

@needs_4k_pages
def test_memory_info_trusty_estimates_available(trusty):
    mem = memory.info()
    # zoneinfo low watermarks: 41 + 5000 + 959 = 6000 pages = 24000 kB.
    # available = MemFree 500000 - 24000
    #           + (Active(file) 500000 + Inactive(file) 350000) - min(850000 / 2, 24000)
    #           + SReclaimable 80000 - min(80000 / 2, 24000)
    #           = 476000 + 826000 + 56000 = 1358000 kB
    assert mem["available_estimated"] is True
    assert mem["available"] == 1358000 * KB
    assert mem["total"] == 2048000 * KB
    assert mem["free"] == 500000 * KB
    assert mem["used"] == (2048000 - 500000 - 100000 - 600000) * KB
    assert mem["buffers"] == 100000 * KB
    assert mem["cached"] == 600000 * KB
    assert mem["shared"] == 10000 * KB
    assert mem["slab_reclaimable"] == 80000 * KB
    assert mem["percent"] == 33.7  # (2048000 - 1358000) / 2048000 = 33.69 %
    assert mem["swap"] == {"total": 1000000 * KB, "free": 900000 * KB, "used": 100000 * KB,
                           "cached": 1000 * KB, "percent": 10.0}


@needs_4k_pages
def test_memory_estimate_caps_at_low_watermark_halves(trusty_copy):
    """With a tiny page cache the min() terms take the halves, not the watermark."""
    meminfo = (trusty_copy / "meminfo").read_text()
    meminfo = meminfo.replace("Active(file):     500000", "Active(file):      10000")
    meminfo = meminfo.replace("Inactive(file):   350000", "Inactive(file):    10000")
    meminfo = meminfo.replace("SReclaimable:      80000", "SReclaimable:       6000")
    (trusty_copy / "meminfo").write_text(meminfo)
    # 500000 - 24000 + (20000 - 10000) + (6000 - 3000) = 489000 kB
    assert memory.info()["available"] == 489000 * KB


def test_memory_estimate_never_negative(trusty_copy):
    meminfo = (trusty_copy / "meminfo").read_text()
    meminfo = meminfo.replace("MemFree:          500000", "MemFree:               1")
    meminfo = meminfo.replace("Active(file):     500000", "Active(file):          0")
    meminfo = meminfo.replace("Inactive(file):   350000", "Inactive(file):        0")
    meminfo = meminfo.replace("SReclaimable:      80000", "SReclaimable:           0")
    (trusty_copy / "meminfo").write_text(meminfo)
    assert memory.info()["available"] == 0


def test_memory_info_debian12_uses_kernel_available(debian12):
    mem = memory.info()
    assert mem["available_estimated"] is False
    assert mem["available"] == 24297288 * KB
    assert mem["total"] == 24684096 * KB
    assert mem["buffers"] == 13608 * KB
    assert mem["cached"] == 498876 * KB


# --- cpu ------------------------------------------------------------------------------------

def test_cpu_usage_measures_since_previous_call(trusty_copy):
    first = cpu.usage(interval=0.01)
    # Same file twice: no tick elapsed, nothing to attribute.
    assert first["percent"] == 0.0 and first["cpu_count"] == 2
    (trusty_copy / "stat").write_text(
        "cpu  10600 200 3300 80900 1100 0 400 0 0 0\n"
        "cpu0 5500 100 1600 40100 550 0 150 0 0 0\n"
        "cpu1 5100 100 1700 40800 550 0 250 0 0 0\n"
        "btime 1700000000\n")
    second = cpu.usage(interval=0.01)
    # Deltas: user 600, system 300, idle 900, iowait 100, softirq 100: 2000 ticks, 1000 idle.
    assert second["percent"] == 50.0
    assert second["times_percent"] == {"user": 30.0, "nice": 0.0, "system": 15.0, "idle": 45.0,
                                       "iowait": 5.0, "irq": 0.0, "softirq": 5.0, "steal": 0.0}
    # cpu0: 500+100+100+50 = 750 ticks, 150 idle -> 80 %; cpu1: 100+200+800+50+100 = 1250, 850 idle.
    assert second["per_cpu"] == [80.0, 32.0]


def test_cpu_usage_handles_pre_2_6_33_stat_columns(trusty_copy):
    """Kernels before guest_nice (and before steal) print fewer columns; missing ones are 0."""
    (trusty_copy / "stat").write_text("cpu  100 0 100 800 0 0 0\ncpu0 100 0 100 800 0 0 0\nbtime 1\n")
    cpu.usage(interval=0.01)
    (trusty_copy / "stat").write_text("cpu  200 0 200 1400 0 0 0\ncpu0 200 0 200 1400 0 0 0\nbtime 1\n")
    result = cpu.usage(interval=0.01)
    assert result["percent"] == 25.0  # 200 busy of 800
    assert result["per_cpu"] == [25.0]


def test_cpu_usage_rejects_bad_interval():
    for bad in (0, -1, 6, "1", True):
        with pytest.raises(ValueError):
            cpu.usage(interval=bad)


# --- filesystem -----------------------------------------------------------------------------

def test_filesystem_usage_trusty_skips_pseudo_and_hidden_mounts(trusty):
    result = filesystem.usage()
    # rootfs, proc, sysfs, tmpfs, cgroup... are pseudo; /var/lib/docker's ext4 is covered by a tmpfs;
    # "/srv/backup disk" is real but does not exist on the machine running the test, so it is skipped.
    assert [(r["mountpoint"], r["fstype"], r["read_only"]) for r in result] == [
        ("/", "ext4", False), ("/tmp", "ext4", True)]
    assert result[0]["device"] == "/dev/disk/by-uuid/6d1a5c1e-7c1b-4f3e-9d55-2a3c1b6e7f80"
    st = os.statvfs("/")
    assert result[0]["total"] == st.f_blocks * st.f_frsize
    assert result[0]["inodes_total"] == st.f_files


def test_filesystem_mounts_unescape_octal(trusty):
    points = [m[1] for m in filesystem._mounts()]
    assert "/srv/backup disk" in points


def test_filesystem_usage_path_picks_longest_mount(trusty):
    assert [r["mountpoint"] for r in filesystem.usage(path="/tmp")] == ["/tmp"]
    assert [r["mountpoint"] for r in filesystem.usage(path="/")] == ["/"]


def test_filesystem_usage_bad_path(trusty):
    for bad in ("relative/path", "/no/such/path/here", "/with\0nul"):
        with pytest.raises(ValueError):
            filesystem.usage(path=bad)


# --- disk -----------------------------------------------------------------------------------

def test_disk_io_trusty_kernel_3_13_columns(trusty):
    result = disk.io()
    assert [d["name"] for d in result] == ["sda", "sda1", "sr0"]
    assert result[0] == {
        "name": "sda", "major": 8, "minor": 0,
        "reads": 12000, "reads_merged": 3000, "read_bytes": 480000 * 512, "read_time_ms": 9000,
        "writes": 8000, "writes_merged": 16000, "write_bytes": 640000 * 512, "write_time_ms": 20000,
        "in_progress": 0, "busy_time_ms": 15000, "weighted_time_ms": 29000,
    }
    assert len(disk.io(include_idle=True)) == 6


def test_disk_io_debian12_has_discard_and_flush_columns(debian12):
    vda = next(d for d in disk.io() if d["name"] == "vda")
    assert vda["reads"] == 51870
    assert vda["read_bytes"] == 2181690 * 512
    assert vda["write_bytes"] == 828832 * 512
    assert vda["discards"] == 4646
    assert vda["discard_bytes"] == 170680 * 512
    assert vda["flushes"] == 797
    assert vda["flush_time_ms"] == 26


# --- network --------------------------------------------------------------------------------

def test_network_interfaces_trusty(trusty):
    result = {i["name"]: i for i in network.interfaces()}
    assert sorted(result) == ["eth0", "eth1", "eth2", "lo"]
    assert result["eth0"] == {
        "name": "eth0", "mac": "52:54:00:12:34:56", "mtu": 1500, "state": "up", "speed_mbps": 1000,
        "duplex": "full",
        "ipv4": [],  # a fixture tree's IPv4 addresses cannot be asked by ioctl
        "ipv6": [{"address": "fe80::5054:ff:fe12:3456", "prefixlen": 64, "scope": "link"},
                 {"address": "2001:db8::10", "prefixlen": 64, "scope": "global"}],
    }
    assert result["lo"]["ipv6"] == [{"address": "::1", "prefixlen": 128, "scope": "host"}]
    assert result["lo"]["speed_mbps"] is None   # no speed file: the driver does not say
    assert result["eth1"]["speed_mbps"] is None  # link down: reading speed fails on 3.13
    assert result["eth2"]["speed_mbps"] is None  # 3.13 prints SPEED_UNKNOWN unsigned
    assert result["eth2"]["mtu"] == 9000


def test_network_interfaces_debian12(debian12):
    eth0 = next(i for i in network.interfaces() if i["name"] == "eth0")
    assert eth0["mac"] == "02:fc:00:00:00:01"
    assert eth0["mtu"] == 1400
    assert eth0["speed_mbps"] is None  # recorded as -1
    assert eth0["ipv6"] == [{"address": "fe80::fc:ff:fe00:1", "prefixlen": 64, "scope": "link"},
                            {"address": "fd00::2", "prefixlen": 64, "scope": "global"}]


def test_network_stats_trusty_old_format_without_space(trusty):
    result = {s["name"]: s for s in network.stats()}
    assert sorted(result) == ["eth0", "eth1", "lo"]
    eth0 = result["eth0"]
    assert (eth0["rx_bytes"], eth0["rx_packets"], eth0["rx_errors"], eth0["rx_dropped"]) == (987654321, 800000, 2, 5)
    assert eth0["rx_multicast"] == 300
    assert (eth0["tx_bytes"], eth0["tx_packets"], eth0["tx_collisions"]) == (123456789, 600000, 1)


def test_network_stats_debian12(debian12):
    eth0 = next(s for s in network.stats() if s["name"] == "eth0")
    assert (eth0["rx_bytes"], eth0["rx_packets"], eth0["tx_bytes"], eth0["tx_packets"]) == (
        116048822, 4644, 362772, 4006)


def test_network_listening_trusty(trusty):
    result = network.listening()
    assert (result["total"], result["truncated"]) == (5, False)
    assert [(e["proto"], e["address"], e["port"], e["uid"], e["inode"], e["pid"], e["process"])
            for e in result["sockets"]] == [
        ("tcp", "0.0.0.0", 22, 0, 9120, 812, "sshd"),
        ("tcp", "127.0.0.1", 3306, 106, 9500, None, None),  # no recorded fd owns it
        ("tcp6", "::", 22, 0, 9122, 812, "sshd"),
        ("udp", "127.0.0.1", 53, 0, 9000, None, None),
        ("udp", "0.0.0.0", 12345, 0, 11000, 1500, "python3"),
    ]


def test_network_listening_without_owner_lookup(trusty):
    assert all(e["pid"] is None for e in network.listening(resolve_processes=False)["sockets"])


def test_network_listening_port_filter_and_cap(trusty, monkeypatch):
    assert [(e["proto"], e["pid"]) for e in network.listening(port=22)["sockets"]] == [
        ("tcp", 812), ("tcp6", 812)]
    monkeypatch.setattr(network, "MAX_SOCKETS", 2)
    capped = network.listening()
    assert (capped["total"], capped["truncated"], len(capped["sockets"])) == (5, True, 2)
    for bad in (0, 65536, "22", True):
        with pytest.raises(ValueError):
            network.listening(port=bad)


def test_network_listening_debian12(debian12):
    result = network.listening()["sockets"]
    mine = [e for e in result if e["pid"] == 12079]
    # The recorder held 127.0.0.1:45678 (TCP) and [::1]:45679 (UDP) open while recording.
    assert [(e["proto"], e["address"], e["port"]) for e in mine] == [
        ("tcp", "127.0.0.1", 45678), ("udp6", "::1", 45679)]
    assert ("tcp", "0.0.0.0", 2024) in [(e["proto"], e["address"], e["port"]) for e in result]


# --- process --------------------------------------------------------------------------------

@needs_4k_pages
def test_process_top_by_memory_trusty(trusty):
    result = process.top(n=3, by="memory")
    assert [(p["pid"], p["name"], p["rss"], p["memory_percent"]) for p in result] == [
        (1020, "mysqld", 60000 * 4096, 11.7),   # 245760000 / 2097152000 bytes
        (1500, "python3", 3000 * 4096, 0.6),
        (812, "sshd", 1500 * 4096, 0.3),
    ]
    assert result[1]["cmdline"] == "/usr/bin/python3 -m mdp_agent"
    assert result[1]["user"] == "root"
    assert result[1]["state"] == "running"
    assert result[0]["threads"] == 20


def test_process_top_by_cpu_measures_since_previous_call(trusty_copy):
    first = process.top(n=5, by="cpu", interval=0.01)
    assert all(p["cpu_percent"] == 0.0 for p in first)
    # 2000 more ticks over 2 CPUs: 1000 ticks of wall time per CPU.
    (trusty_copy / "stat").write_text(
        "cpu  10600 200 3300 80900 1100 0 400 0 0 0\n"
        "cpu0 5500 100 1600 40100 550 0 150 0 0 0\n"
        "cpu1 5100 100 1700 40800 550 0 250 0 0 0\n"
        "btime 1700000000\n")
    for pid, old, new in ((1020, " 50000 20000 ", " 50500 20000 "), (1500, " 300 100 ", " 300 200 ")):
        stat = trusty_copy / str(pid) / "stat"
        stat.write_text(stat.read_text().replace(old, new, 1))
    result = process.top(n=2, by="cpu")
    assert [(p["pid"], p["cpu_percent"]) for p in result] == [(1020, 50.0), (1500, 10.0)]


def test_process_name_with_parentheses_and_spaces(trusty):
    names = [p["name"] for p in process.top(n=100, by="memory")]
    assert "my (odd) proc" in names


def test_process_count_trusty(trusty):
    assert process.count() == {"total": 5, "threads": 26,
                               "by_state": {"sleeping": 3, "running": 1, "zombie": 1}}


def test_process_top_rejects_bad_arguments():
    for kwargs in ({"n": 0}, {"n": 101}, {"n": 2.5}, {"by": "disk"}, {"interval": 0}):
        with pytest.raises(ValueError):
            process.top(**kwargs)


@pytest.mark.parametrize("name", ["trusty", "debian12"])
def test_meminfo_of_named_fields_reads_what_the_full_parse_reads(name):
    """memory.info's targeted read (one find per field) against the line-by-line parse of the same file:
    equal values, "Cached" not taken for "SwapCached", absent fields absent, HugePages counts not scaled."""
    from mdp_operations import _procfs
    proc, sys_ = roots_for(name)
    with _host.roots(proc=proc, sys=sys_):
        full = _procfs.meminfo()
        fields = memory.FIELDS + ("HugePages_Total", "NoSuchField")
        assert _procfs.meminfo(fields) == dict((f, full[f]) for f in fields if f in full)
    assert full["Cached"] != full["SwapCached"]
    assert "MemAvailable" in full or name == "trusty"
