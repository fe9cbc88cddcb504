"""The 1-9 performance score: the pure formula (table-driven), its floors, and the collector of
its inputs on this machine and on a recorded /proc + /sys tree."""

import os
import subprocess

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mdp_operations import _host, cluster
from mdp_operations import _performance as perf

GiB = 1024 ** 3
MiB = 1024 ** 2

STRONG = {"cpu_count": 16, "load1": 0.5, "mem_available": 32 * GiB, "disk_free": 4 * 1024 * GiB,
          "disk_total": 8 * 1024 * GiB, "read_only": False, "link_mbps": 10000, "link_use": 0.01}


def machine(**changes):
    inputs = dict(STRONG)
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize("inputs, expected", [
    (STRONG, 9),
    (machine(read_only=True), 1),
    (machine(disk_free=100 * MiB), 1),                                  # absolute floor
    (machine(disk_free=40 * GiB, disk_total=8 * 1024 * GiB), 1),        # under 1 % free
    (machine(mem_available=32 * MiB), 1),
    # Every resource at its "useless" end but above the floors: the lowest non-floor score.
    (machine(cpu_count=1, load1=4.0, mem_available=100 * MiB, disk_free=GiB, disk_total=2 * GiB,
             link_mbps=10, link_use=0.0), 1),
    # A small VM: 2 idle cores, 2 GiB free memory, 20 GiB free disk, unknown virtual link.
    (machine(cpu_count=2, load1=0.0, mem_available=2 * GiB, disk_free=20 * GiB, disk_total=40 * GiB,
             link_mbps=None, link_use=None), 5),
    # The same VM on a saturated gigabit link scores lower than on an idle one.
    (machine(cpu_count=2, load1=0.0, mem_available=2 * GiB, disk_free=20 * GiB, disk_total=40 * GiB,
             link_mbps=1000, link_use=0.99), 4),
    (machine(cpu_count=2, load1=0.0, mem_available=2 * GiB, disk_free=20 * GiB, disk_total=40 * GiB,
             link_mbps=1000, link_use=0.0), 6),
    # A busy big server: all cores loaded counts as no spare CPU.
    (machine(load1=32.0), 7),
])
def test_score_table(inputs, expected):
    value, parts = perf.score(inputs)
    assert value == expected, parts


def test_floors_say_which_one_applied():
    assert perf.score(machine(read_only=True))[1] == {"floor": "read-only filesystem"}
    assert perf.score(machine(disk_free=0))[1] == {"floor": "almost no free disk"}
    assert perf.score(machine(mem_available=0))[1] == {"floor": "almost no available memory"}


resources = st.fixed_dictionaries({
    "cpu_count": st.integers(1, 128), "load1": st.floats(0, 200),
    "mem_available": st.integers(0, 1024 * GiB), "disk_free": st.integers(0, 64 * 1024 * GiB),
    "disk_total": st.integers(64 * 1024 * GiB, 128 * 1024 * GiB), "read_only": st.booleans(),
    "link_mbps": st.one_of(st.none(), st.integers(1, 100000)), "link_use": st.floats(0, 1),
})


@given(resources)
def test_score_is_always_1_to_9(inputs):
    assert 1 <= perf.score(inputs)[0] <= 9


@given(resources, st.sampled_from(["cpu_count", "mem_available", "disk_free", "link_mbps"]))
def test_more_of_a_resource_never_lowers_the_score(inputs, name):
    # An unknown link speed (None) is scored as a typical LAN, so a known slow link may score lower.
    assume(inputs[name] is not None)
    more = dict(inputs)
    more[name] = more[name] * 2 + 1
    assert perf.score(more)[0] >= perf.score(inputs)[0]


# The collector ------------------------------------------------------------------------------

def test_inputs_on_this_machine(tmp_path):
    measured = perf.inputs(str(tmp_path / "not" / "created" / "yet"))
    assert measured["cpu_count"] >= 1
    assert measured["mem_available"] > 0
    assert 0 < measured["disk_free"] <= measured["disk_total"]
    assert measured["read_only"] is False
    result = cluster.performance(str(tmp_path))
    assert 1 <= result["performance"] <= 9
    assert set(result) == {"performance", "parts", "inputs"}


def _mount_tmpfs(target, options):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    target.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        pytest.skip("cannot mount tmpfs here: %s" % result.stdout.decode(errors="replace"))


def test_a_real_read_only_filesystem_scores_1(tmp_path):
    target = tmp_path / "ro"
    _mount_tmpfs(target, "ro,size=64m")
    try:
        result = cluster.performance(str(target / "uploads"))
        assert result["inputs"]["read_only"] is True
        assert result["performance"] == 1
    finally:
        subprocess.call(["umount", str(target)])


def test_a_real_almost_full_filesystem_scores_1(tmp_path):
    target = tmp_path / "tiny"
    _mount_tmpfs(target, "size=8m")
    try:
        result = cluster.performance(str(target))
        assert result["parts"] == {"floor": "almost no free disk"}
    finally:
        subprocess.call(["umount", str(target)])


def test_link_of_the_peer_address_is_found_and_measured(tmp_path):
    """A recorded tree: eth1 carries 10.0.0.0/24 at 1000 Mbit/s; eth0 the default route."""
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth1\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    for name, speed in (("eth0", "-1"), ("eth1", "1000")):
        stats = sys_ / "class" / "net" / name / "statistics"
        stats.mkdir(parents=True)
        (sys_ / "class" / "net" / name / "speed").write_text(speed + "\n")
        (stats / "rx_bytes").write_text("1000\n")
        (stats / "tx_bytes").write_text("2000\n")
    with _host.roots(proc=str(proc), sys=str(sys_)):
        assert perf._route_interface("10.0.0.7") == "eth1"
        assert perf._route_interface("8.8.8.8") == "eth0"
        assert perf._link("eth1") == (1000, 0.0)      # counters did not move: idle link
        assert perf._link("eth0") == (None, None)     # speed -1: a virtual NIC, unknown
        assert perf._route_interface("not an ip") is None


def test_read_only_is_judged_from_the_hosts_mount_table(tmp_path):
    """PID 1's mountinfo: / read-write, /srv/ro read-only, a later mount over /srv/ro/rw read-write."""
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "mountinfo").write_text(
        "27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
        "40 27 8:2 / /srv/ro ro,relatime shared:2 - ext4 /dev/sda2 rw\n"
        "41 40 8:3 / /srv/ro/rw rw,relatime shared:3 - ext4 /dev/sda3 rw\n"
        "42 27 8:4 / /mnt/with\\040space rw - vfat /dev/sdb1 ro\n")
    with _host.roots(proc=str(proc)):
        assert perf._host_read_only("/uploaded_files") is False
        assert perf._host_read_only("/srv/ro") is True
        assert perf._host_read_only("/srv/ro/data") is True
        assert perf._host_read_only("/srv/ro/rw/data") is False
        assert perf._host_read_only("/srv/rob") is False
        assert perf._host_read_only("/mnt/with space/x") is True
    with _host.roots(proc=str(tmp_path / "none")):
        assert perf._host_read_only("/") is None


def test_trusty_unknown_link_speed_scores_half_not_full():
    """Regression: kernel 3.13 prints SPEED_UNKNOWN as 4294967295 (trusty eth2); that is no speed.

    The fixture routes 10.16.0.0/16 over eth2. Taken as 4 Tbit/s, the network part was 1.0.
    """
    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
    with _host.roots(proc=os.path.join(fixtures, "proc", "trusty"), sys=os.path.join(fixtures, "sys", "trusty")):
        assert perf._route_interface("10.16.3.4") == "eth2"
        assert perf._link("eth2") == (None, None)
        link_mbps, link_use = perf._link(perf._route_interface("10.16.3.4"))
    _, parts = perf.score(machine(link_mbps=link_mbps, link_use=link_use))
    assert parts["network"] == perf.UNKNOWN_LINK == 0.5
