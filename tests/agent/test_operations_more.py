"""The operations added for issue 12, against the recorded trusty (Ubuntu 14.04, kernel 3.13) tree
and against this machine.

The trusty tree is hand-written in 14.04's formats (tests/fixtures/*/trusty; utmp and wtmp from
tests/fixtures/make_trusty_utmp.py); expected values below come from reading those files. Programs
the operations run (journalctl, apt-get, smartctl) are absent there: these tests cover the file
fallbacks, and stand-ins in shell play apt-get and smartctl with their real output formats.
"""

import json
import os
import shutil
import stat
import subprocess
import time

import pytest

from mdp_agent.registry import OperationError, load_default_registry
from mdp_operations import (
    NotAvailable,
    _host,
    clock,
    containers,
    files,
    hardware,
    kernel,
    logs,
    network,
    packages,
    users,
)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
NEW_OPERATIONS = (
    "packages.installed", "packages.upgradable", "packages.reboot_required", "clock.sync", "users.sessions",
    "users.logins", "users.without_password", "logs.tail", "logs.kernel", "service.failed", "service.list",
    "kernel.sysctl", "kernel.modules", "hardware.cpu", "hardware.dmi", "hardware.temperatures",
    "hardware.block_devices", "hardware.smart", "network.connections", "network.routes", "network.dns",
    "files.stat", "files.certificates", "containers.list",
)
CONTROL = ("service.start", "service.stop", "service.restart", "service.reload")
# Arguments for operations that require some (the fleet test uses the same table).
EXAMPLE_ARGS = {"hardware.smart": {"device": "sda"}, "files.stat": {"path": "/etc/hostname"}}


def tree(kind):
    return os.path.join(FIXTURES, kind, "trusty")


@pytest.fixture
def trusty():
    with _host.roots(proc=tree("proc"), sys=tree("sys"), etc=tree("etc"), var=tree("var"), run=tree("run"),
                     dev=tree("dev")):
        yield


def test_at_least_twenty_new_read_only_operations_with_hints():
    described = {d["name"]: d for d in load_default_registry(enable_mutating=True).describe()}
    assert len(NEW_OPERATIONS) >= 20
    for name in NEW_OPERATIONS:
        doc = described[name]["doc"]
        assert described[name]["mutating"] is False, name
        assert described[name]["summary"] and len(doc.splitlines()) >= 3, name   # summary, args, result
        assert "Example" in doc or "Returns" in doc, name
    for name in CONTROL:
        assert described[name]["mutating"] is True


# --- packages ----------------------------------------------------------------------------------

def test_packages_installed_trusty(trusty):
    result = packages.installed()
    # apache2 is "deinstall ok config-files": removed, not installed.
    assert result["total"] == 4
    assert [(p["name"], p["arch"]) for p in result["packages"]] == [
        ("bash", "amd64"), ("libssl1.0.0", "amd64"), ("libssl1.0.0", "i386"), ("linux-image-3.13.0-170-generic",
                                                                               "amd64")]
    assert result["packages"][0]["version"] == "4.3-7ubuntu1.7"
    assert packages.installed(match="ssl", limit=1) == {
        "total": 4, "matched": 2, "truncated": True,
        "packages": [{"name": "libssl1.0.0", "version": "1.0.1f-1ubuntu2.27", "arch": "amd64"}]}


@pytest.mark.parametrize("args", [{"limit": 0}, {"limit": 5001}, {"limit": True}, {"match": "x" * 101}])
def test_packages_installed_checks_arguments(args):
    with pytest.raises(ValueError):
        packages.installed(**args)


def test_packages_without_dpkg_is_not_available(tmp_path):
    with _host.roots(var=str(tmp_path)), pytest.raises(NotAvailable):
        packages.installed()


def test_reboot_required_trusty(trusty):
    result = packages.reboot_required()
    assert result["required"] is True and result["since"] > 0
    assert result["packages"] == ["libssl1.0.0", "linux-image-3.13.0-170-generic"]   # deduplicated, sorted


def test_reboot_not_required(tmp_path):
    with _host.roots(run=str(tmp_path)):
        assert packages.reboot_required() == {"required": False, "since": None, "packages": []}


APT_SIMULATION = """\
Reading package lists...
Building dependency tree...
Calculating upgrade...
The following packages will be upgraded:
  libssl1.0.0 bash
2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.
Inst bash [4.3-7ubuntu1.7] (4.3-7ubuntu1.8 Ubuntu:14.04/trusty-updates [amd64])
Inst libssl1.0.0 [1.0.1f-1ubuntu2.27] (1.0.1f-1ubuntu2.28 Ubuntu:14.04/trusty-security [amd64]) []
Inst newpkg (1.0 Debian:12.8/stable [all])
Conf bash (4.3-7ubuntu1.8 Ubuntu:14.04/trusty-updates [amd64])
"""


def test_packages_upgradable_parses_apt_get_simulation(tmp_path, monkeypatch):
    """apt-get here is a stand-in printing trusty's apt 1.0 simulation format."""
    fake = tmp_path / "apt-get"
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n%sEOF\n" % APT_SIMULATION)
    fake.chmod(0o755)
    monkeypatch.setattr(packages, "APT_DIRS", [str(tmp_path)])
    result = packages.upgradable(limit=2)
    assert (result["count"], result["security_count"], result["truncated"]) == (3, 1, True)
    assert result["packages"] == [
        {"name": "bash", "current": "4.3-7ubuntu1.7", "candidate": "4.3-7ubuntu1.8",
         "origin": "Ubuntu:14.04/trusty-updates", "security": False},
        {"name": "libssl1.0.0", "current": "1.0.1f-1ubuntu2.27", "candidate": "1.0.1f-1ubuntu2.28",
         "origin": "Ubuntu:14.04/trusty-security", "security": True}]


def test_packages_upgradable_without_apt_is_not_available(tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "APT_DIRS", [str(tmp_path)])
    with pytest.raises(NotAvailable):
        packages.upgradable()


# --- clock ---------------------------------------------------------------------------------------

def test_clock_sync_names_the_daemon_from_the_process_table(tmp_path):
    proc = tmp_path / "proc"
    shutil.copytree(tree("proc"), str(proc), symlinks=True)
    (proc / "1300").mkdir()
    (proc / "1300" / "comm").write_text("ntpd\n")
    with _host.roots(proc=str(proc)):
        result = clock.sync()
    assert (result["daemon"], result["daemon_pid"]) == ("ntpd", 1300)
    assert result["synchronized"] is None   # another machine's tree: its kernel cannot be asked


def test_clock_sync_where_a_container_refuses_adjtimex(monkeypatch, tmp_path):
    """Seen on the nspawn fleet: adjtimex answers EPERM; timedatectl (a stand-in here) still knows."""
    def refused():
        raise PermissionError(1, "adjtimex failed")
    fake = tmp_path / "timedatectl"
    fake.write_text("#!/bin/sh\necho yes\n")
    fake.chmod(0o755)
    monkeypatch.setattr(clock, "_adjtimex", refused)
    monkeypatch.setattr(_host, "find_program", lambda name, dirs=None: str(fake) if name == "timedatectl" else None)
    result = clock.sync()
    assert result["synchronized"] is True and result["clock_state"] is None
    assert "adjtimex failed" in result["kernel_error"]
    monkeypatch.setattr(_host, "find_program", lambda name, dirs=None: None)
    assert clock.sync()["synchronized"] is None


def test_clock_sync_on_this_machine_reads_the_kernel():
    result = clock.sync()
    assert isinstance(result["synchronized"], bool)
    assert result["clock_state"] in ("ok", "error", "insert_leap", "delete_leap", "leap_in_progress", "leap_done")
    assert result["max_error_seconds"] >= 0
    json.dumps(result)


# --- users ---------------------------------------------------------------------------------------

def test_users_sessions_trusty(trusty):
    assert users.sessions() == {"count": 2, "truncated": False, "sessions": [
        {"user": "ubuntu", "line": "pts/0", "host": "10.0.2.2", "address": "10.0.2.2", "pid": 2250,
         "login_time": 1700080000.5},
        {"user": "deploy", "line": "pts/1", "host": "2001:db8::7", "address": "2001:db8::7", "pid": 2300,
         "login_time": 1700081000.0}]}


def test_users_logins_trusty_newest_first_with_reboots(trusty):
    result = users.logins(n=4)
    assert result["records_scanned"] == 6
    assert [(r["user"], r["time"]) for r in result["logins"]] == [
        ("deploy", 1700081000.0), ("ubuntu", 1700080000.5), ("reboot", 1700000000.0), ("ubuntu", 1690000100.0)]
    assert result["logins"][2]["host"] == "3.13.0-170-generic"


def test_users_logins_reads_only_the_end_of_a_long_wtmp(trusty, tmp_path, monkeypatch):
    var = tmp_path / "var"
    shutil.copytree(tree("var"), str(var))
    wtmp = var / "log" / "wtmp"
    wtmp.write_bytes(wtmp.read_bytes() * 1000)   # 6000 records
    monkeypatch.setattr(users, "WTMP_SCAN_RECORDS", 600)
    with _host.roots(var=str(var)):
        assert users.logins(n=200)["records_scanned"] == 600


@pytest.mark.parametrize("n", [0, 201, "5", True])
def test_users_logins_checks_n(n):
    with pytest.raises(ValueError):
        users.logins(n=n)


def test_users_without_password_trusty(trusty):
    result = users.without_password()
    # deploy has an empty shadow field; legacy keeps a DES hash in passwd itself; ubuntu has $6$.
    assert result["empty"] == [{"name": "deploy", "uid": 1001, "shell": "/bin/bash"}]
    assert result["locked"] == ["daemon", "nobody", "root"]
    assert (result["locked_count"], result["with_hash_count"]) == (3, 2)
    assert "$6$" not in json.dumps(result)   # hashes never leave the machine


# --- logs ----------------------------------------------------------------------------------------

def test_logs_tail_trusty_reads_syslog_with_a_filter(trusty):
    result = logs.tail(lines=10, match="FAILED PASSWORD")
    assert result["source"] == "/var/log/syslog"
    assert (result["scanned"], result["matched"], result["truncated"]) == (5, 2, False)
    assert all("Failed password" in line for line in result["lines"])
    assert logs.tail(lines=1)["lines"] == [
        "Dec  1 06:40:00 trusty-web1 kernel: [86000.120000] init: mysql main process (1020) terminated with status 1"]


def test_logs_tail_bounds_lines_and_bytes(trusty, tmp_path, monkeypatch):
    var = tmp_path / "var"
    (var / "log").mkdir(parents=True)
    (var / "log" / "syslog").write_text("".join("line %d %s\n" % (i, "x" * 2000) for i in range(300)))
    monkeypatch.setattr(logs, "MAX_REPLY_CHARS", 10 * 1001)
    with _host.roots(var=str(var)):
        result = logs.tail(lines=50)
    assert len(result["lines"]) == 10 and result["truncated"] is True
    assert all(len(line) == logs.MAX_LINE_CHARS for line in result["lines"])
    assert result["lines"][-1].startswith("line 299 ")


def test_logs_tail_journal_where_there_is_none(trusty):
    with pytest.raises(NotAvailable):
        logs.tail(source="journal")


@pytest.mark.parametrize("args", [{"lines": 0}, {"lines": 501}, {"match": 5}, {"match": "x" * 201},
                                  {"source": "/var/log/auth.log"}])
def test_logs_tail_checks_arguments(args):
    with pytest.raises(ValueError):
        logs.tail(**args)


def test_logs_kernel_trusty_kmsg_levels_and_oom(trusty):
    result = logs.kernel(n=10)
    assert result["source"] == "/dev/kmsg"
    # Levels <= 3 (err, crit): seq 312, 401, 402, 410; "30,..." is facility 3 level 6: not an error.
    assert result["error_count"] == 4
    assert [e["level"] for e in result["errors"]] == [3, 3, 3, 2]
    assert result["errors"][0] == {"level": 3, "time": 3700.5, "message":
                                   "EXT4-fs error (device sda1): ext4_lookup:1437: inode #131074: comm rsync: "
                                   "deleted inode referenced: 131999"}
    # 3.13 says "Kill process" then "Killed process": one kill, counted once.
    assert result["oom_count"] == 1
    assert result["oom_kills"][0]["pid"] == 1020 and result["oom_kills"][0]["process"] == "mysqld"
    assert result["oom_kills"][0]["time"] == 6000.01


def test_logs_kernel_falls_back_to_kern_log(trusty, tmp_path):
    with _host.roots(dev=str(tmp_path)):
        result = logs.kernel(n=1)
    assert result["source"] == "/var/log/kern.log"
    assert result["error_count"] == 1 and result["errors"][0]["time"] == "Dec  1 05:12:13"
    assert result["oom_count"] == 1 and result["oom_kills"][0]["process"] == "mysqld"


def test_logs_kernel_with_nothing_to_read_is_not_available(tmp_path):
    with _host.roots(dev=str(tmp_path), var=str(tmp_path), run=str(tmp_path)), pytest.raises(NotAvailable):
        logs.kernel()


# --- kernel --------------------------------------------------------------------------------------

def test_kernel_sysctl_trusty(trusty):
    result = kernel.sysctl(["vm.swappiness", "net.ipv4.ip_forward", "net.ipv4.ip_local_port_range", "no.such"])
    assert result == {"vm.swappiness": "60", "net.ipv4.ip_forward": "1",
                      "net.ipv4.ip_local_port_range": "32768\t61000", "no.such": None}
    assert set(kernel.sysctl()) == set(kernel.DEFAULT_SYSCTLS)


@pytest.mark.parametrize("names", [[], ["../../etc/shadow"], ["vm/swappiness"], [".vm"], ["a..b"], "vm.swappiness",
                                   ["x"] * 65, [5]])
def test_kernel_sysctl_refuses_names_outside_proc_sys(names):
    with pytest.raises(ValueError):
        kernel.sysctl(names)


def test_kernel_modules_trusty(trusty):
    result = kernel.modules()
    assert result["count"] == 6
    by_name = {m["name"]: m for m in result["modules"]}
    assert by_name["nf_conntrack"] == {"name": "nf_conntrack", "size": 96976, "instances": 2,
                                       "used_by": ["xt_conntrack", "nf_conntrack_ipv4"], "state": "Live"}
    assert by_name["psmouse"]["state"] == "Loading" and by_name["floppy"]["used_by"] == []


def test_kernel_on_this_machine():
    assert kernel.sysctl(["kernel.ostype"]) == {"kernel.ostype": "Linux"}
    # A kernel built without module support (as this sandbox's) has no /proc/modules: none loaded.
    expected = len(open("/proc/modules").read().splitlines()) if os.path.exists("/proc/modules") else 0
    assert kernel.modules()["count"] == expected


# --- hardware ------------------------------------------------------------------------------------

def test_hardware_cpu_trusty(trusty):
    result = hardware.cpu()
    assert result["model"] == "Intel(R) Xeon(R) CPU E5-2680 v2 @ 2.80GHz"
    assert (result["vendor"], result["logical_cpus"], result["physical_packages"], result["cores"]) == (
        "GenuineIntel", 2, 1, 2)
    assert result["mhz"] == [2800.0, 1200.0] and result["cache"] == "25600 KB"
    assert "aes" in result["flags"] and result["flags"] == sorted(result["flags"])
    assert result["bugs"] == []   # cpuinfo has a "bugs" line from 3.17 on


def test_hardware_dmi_trusty(trusty):
    result = hardware.dmi()
    assert result["sys_vendor"] == "innotek GmbH" and result["product_name"] == "VirtualBox"
    assert result["product_family"] is None   # not in this table
    assert "product_serial" not in result


def test_hardware_dmi_absent_is_not_available(tmp_path):
    with _host.roots(sys=str(tmp_path)), pytest.raises(NotAvailable):
        hardware.dmi()


def test_hardware_temperatures_trusty_hwmon_in_device_dir(trusty):
    assert hardware.temperatures() == {"count": 3, "sensors": [
        {"source": "hwmon", "chip": "coretemp", "label": "Core 0", "celsius": 45.0, "max": 80.0, "critical": 100.0},
        {"source": "hwmon", "chip": "coretemp", "label": "Core 1", "celsius": 47.5, "max": None, "critical": None},
        {"source": "thermal", "chip": "acpitz", "label": "thermal_zone0", "celsius": 27.8, "max": None,
         "critical": None}]}


def test_hardware_block_devices_trusty(trusty):
    result = hardware.block_devices()
    assert result["count"] == 2   # the empty loop0 is left out
    assert result["devices"][0] == {"name": "sda", "parent": None, "size_bytes": 41943040 * 512,
                                    "model": "VBOX HARDDISK", "vendor": "ATA", "rotational": True,
                                    "removable": False, "read_only": False}
    assert result["devices"][1]["name"] == "sda1" and result["devices"][1]["parent"] == "sda"
    assert result["devices"][1]["size_bytes"] == 41940992 * 512


SMARTCTL = """#!/bin/sh
cat <<'OUT'
smartctl 6.2 2013-07-26 r3841 [x86_64-linux-3.13.0-170-generic] (local build)

=== START OF READ SMART DATA SECTION ===
SMART overall-health self-assessment test result: PASSED

ID# ATTRIBUTE_NAME          FLAG     VALUE WORST THRESH TYPE      UPDATED  WHEN_FAILED RAW_VALUE
  5 Reallocated_Sector_Ct   0x0033   100   100   010    Pre-fail  Always       -       0
  9 Power_On_Hours          0x0032   095   095   000    Old_age   Always       -       23911
194 Temperature_Celsius     0x0022   064   052   000    Old_age   Always       -       36 (Min/Max 18/48)
OUT
"""


def test_hardware_smart_parses_smartctl(tmp_path, monkeypatch):
    """smartctl is a stand-in printing smartmontools 6.2's (trusty) ATA output."""
    fake = tmp_path / "smartctl"
    fake.write_text(SMARTCTL)
    fake.chmod(0o755)
    monkeypatch.setattr(hardware, "PROGRAM_DIRS", [str(tmp_path)])
    result = hardware.smart("sda")
    assert (result["device"], result["health"], result["exit_status"]) == ("sda", "PASSED", 0)
    assert result["attributes"][0] == {"id": 5, "name": "Reallocated_Sector_Ct", "value": 100, "worst": 100,
                                       "threshold": 10, "raw": "0"}
    assert result["attributes"][2]["raw"] == "36 (Min/Max 18/48)"


@pytest.mark.parametrize("device", ["/dev/sda", "-a", "sda;reboot", "../sda", "", None, "sda1x"])
def test_hardware_smart_refuses_anything_but_a_disk_name(device):
    with pytest.raises(ValueError):
        hardware.smart(device)


def test_hardware_smart_without_smartctl_is_not_available(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "PROGRAM_DIRS", [str(tmp_path)])
    with pytest.raises(NotAvailable):
        hardware.smart("sda")


# --- network -------------------------------------------------------------------------------------

def test_network_connections_trusty(trusty):
    # tcp: sshd and 127.0.0.1:3306 listening, one ssh session from 10.0.2.2; tcp6: sshd listening.
    assert network.connections(top=5) == {"total": 4, "by_state": {"listen": 3, "established": 1},
                                          "top_remotes": [{"address": "10.0.2.2", "connections": 1}],
                                          "truncated": False}


def test_network_connections_bounded(trusty, monkeypatch):
    monkeypatch.setattr(network, "MAX_SCAN_SOCKETS", 2)
    result = network.connections(top=0)
    assert result["total"] == 2 and result["truncated"] is True and result["top_remotes"] == []


def test_network_routes_trusty(trusty):
    result = network.routes()
    assert result["ipv4"][0] == {"interface": "eth0", "destination": "0.0.0.0", "prefix": 0, "gateway": "10.0.2.2",
                                 "metric": 0, "flags": "UG"}
    assert [(r["interface"], r["destination"], r["prefix"]) for r in result["ipv4"][1:]] == [
        ("eth0", "10.0.2.0", 24), ("eth1", "192.168.56.0", 24), ("eth2", "10.16.0.0", 16)]
    assert result["ipv6"][2] == {"interface": "eth0", "destination": "::", "prefix": 0, "gateway": "2001:db8::1",
                                 "metric": 1024, "flags": "UG"}
    assert result["ipv6"][3]["interface"] == "lo" and result["truncated"] is False


def test_network_dns_trusty_resolvconf(trusty):
    assert network.dns() == {"nameservers": ["127.0.1.1"], "search": ["corp.example.com"], "options": [],
                             "upstream": None}


def test_network_dns_behind_systemd_resolved(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
    (tmp_path / "run" / "systemd" / "resolve").mkdir(parents=True)
    (tmp_path / "run" / "systemd" / "resolve" / "resolv.conf").write_text("nameserver 10.0.0.2\nnameserver 10.0.0.3\n")
    with _host.roots(etc=str(tmp_path / "etc"), run=str(tmp_path / "run")):
        assert network.dns() == {"nameservers": ["127.0.0.53"], "search": ["."], "options": ["edns0", "trust-ad"],
                                 "upstream": ["10.0.0.2", "10.0.0.3"]}


# --- files ---------------------------------------------------------------------------------------

@pytest.fixture
def allowed(tmp_path):
    area = tmp_path / "allowed"
    area.mkdir()
    (area / "app.conf").write_bytes(b"listen 80\n")
    (tmp_path / "secret").write_text("outside\n")
    os.symlink(str(tmp_path / "secret"), str(area / "escape"))
    previous = dict(_host.allowed_paths)
    _host.configure_paths([str(area)], [str(area)])
    yield area
    _host.configure_paths(previous["files"], previous["certs"])


def test_files_stat_hashes_an_allowed_file(allowed):
    result = files.stat(str(allowed / "app.conf"))
    expected = subprocess.check_output(["sha256sum", str(allowed / "app.conf")]).split()[0].decode()
    assert result["sha256"] == expected and result["size"] == 10 and result["type"] == "file"
    assert result["mode"] == "%04o" % stat.S_IMODE(os.stat(str(allowed / "app.conf")).st_mode)
    listing = files.stat(str(allowed))
    assert listing["type"] == "directory" and listing["entries"] == ["app.conf", "escape"]


def test_files_stat_refuses_paths_outside_and_symlinks_that_lead_out(allowed, tmp_path):
    for path in (str(tmp_path / "secret"), str(allowed / "escape"), str(allowed / ".." / "secret"), "/etc/shadow"):
        with pytest.raises(ValueError) as err:
            files.stat(path)
        assert "not under the agent's file_paths" in str(err.value)
    for bad in ("relative", "", "/x\0y", 5):
        with pytest.raises(ValueError):
            files.stat(bad)


def test_files_stat_skips_hashing_large_files(allowed, monkeypatch):
    monkeypatch.setattr(files, "MAX_HASH_BYTES", 4)
    result = files.stat(str(allowed / "app.conf"))
    assert result["sha256"] is None and "larger than 4 bytes" in result["hash_skipped"]


def test_files_without_configured_paths_is_not_available():
    previous = dict(_host.allowed_paths)
    _host.configure_paths((), ())
    try:
        with pytest.raises(NotAvailable):
            files.stat("/etc/hostname")
        with pytest.raises(NotAvailable):
            files.certificates()
    finally:
        _host.configure_paths(previous["files"], previous["certs"])


def make_certificate(directory, name, days, cn):
    key, cert = directory / (name + ".key"), directory / (name + ".pem")
    subprocess.check_call(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                           "-out", str(cert), "-days", str(days), "-subj", "/O=MDP tests/CN=" + cn],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert


def openssl_end(cert, form="PEM"):
    """notAfter as openssl prints it ("Dec 11 21:50:00 2026 GMT"), in epoch seconds."""
    import calendar
    text = subprocess.check_output(["openssl", "x509", "-inform", form, "-noout", "-enddate", "-in", str(cert)])
    stamp = text.decode().strip().split("=", 1)[1].replace("GMT", "").strip()
    return calendar.timegm(time.strptime(" ".join(stamp.split()), "%b %d %H:%M:%S %Y"))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")
def test_files_certificates_reads_pem_bundles_and_der_like_openssl(allowed):
    soon = make_certificate(allowed, "soon", 10, "soon.example")
    late = make_certificate(allowed, "late", 400, "late.example")
    (allowed / "bundle.pem").write_bytes(late.read_bytes() + soon.read_bytes())
    subprocess.check_call(["openssl", "x509", "-in", str(soon), "-outform", "DER", "-out", str(allowed / "soon.der")])
    result = files.certificates()
    by_path = {}
    for cert in result["certificates"]:
        by_path.setdefault(os.path.basename(cert["path"]), []).append(cert)
    assert by_path["soon.pem"][0]["not_after"] == openssl_end(soon)
    assert by_path["soon.der"][0]["not_after"] == openssl_end(allowed / "soon.der", "DER")
    assert by_path["late.pem"][0]["subject_cn"] == "late.example" == by_path["late.pem"][0]["issuer_cn"]
    assert sorted(c["subject_cn"] for c in by_path["bundle.pem"]) == ["late.example", "soon.example"]
    assert 9 < by_path["soon.pem"][0]["days_left"] <= 10 and by_path["soon.pem"][0]["expired"] is False
    assert result["certificates"][0]["subject_cn"] == "soon.example"   # soonest first
    assert "soon.key" not in by_path and result["errors"] == []          # keys hold no certificate
    within = files.certificates(expiring_within_days=30)["certificates"]
    assert {c["subject_cn"] for c in within} == {"soon.example"}


def test_files_certificates_reports_a_broken_one_and_goes_on(allowed):
    (allowed / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n")
    result = files.certificates()
    assert [e["path"] for e in result["errors"]] == [str(allowed / "broken.pem")]


def test_der_walker_utc_and_generalized_times():
    """A hand-made minimal certificate: version, serial, algorithm, issuer CN=a, validity, subject CN=b."""
    def tlv(tag, body):
        return bytes([tag, len(body)]) + body

    def name(cn):
        return tlv(0x30, tlv(0x31, tlv(0x30, tlv(0x06, b"\x55\x04\x03") + tlv(0x0C, cn))))

    validity = tlv(0x30, tlv(0x17, b"491231235959Z") + tlv(0x18, b"20500101000000Z"))
    tbs = tlv(0x30, tlv(0xA0, tlv(0x02, b"\x02")) + tlv(0x02, b"\x01") + tlv(0x30, b"") + name(b"a") + validity
              + name(b"b"))
    cert = files._parse_certificate(tlv(0x30, tbs))
    # 2049-12-31T23:59:59Z (UTCTime 49 is 2049) and 2050-01-01T00:00:00Z
    assert cert == {"subject_cn": "b", "issuer_cn": "a", "not_before": 2524607999, "not_after": 2524608000}
    with pytest.raises(ValueError):
        files._parse_certificate(b"\x30\x82\xff")


# --- containers ----------------------------------------------------------------------------------

def test_containers_trusty_lxc_from_cgroup_v1(trusty):
    result = containers.list()
    assert result["engines"] == ["lxc"]
    assert [(c["name"], c["state"]) for c in result["containers"]] == [("db1", "stopped"), ("web1", "running")]


def test_containers_docker_api_over_a_real_unix_socket(tmp_path):
    """A real Unix socket answering as the Docker Engine API does (HTTP/1.0, JSON body)."""
    import socket
    import threading

    run = tmp_path / "run"
    run.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(run / "docker.sock"))
    server.listen(1)
    body = json.dumps([{"Id": "4f2a9c1b7d3e0000", "Names": ["/web"], "Image": "nginx:1.27", "State": "running",
                        "Status": "Up 3 hours"}]).encode()
    asked = []

    def serve():
        conn, _ = server.accept()
        asked.append(conn.recv(4096))
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with _host.roots(run=str(run), var=str(tmp_path), sys=str(tmp_path)):
            result = containers.list()
    finally:
        thread.join(5)
        server.close()
    assert asked[0].startswith(b"GET /containers/json?all=1 HTTP/1.0\r\n")
    assert result["engines"] == ["docker"] and result["errors"] == {}
    assert result["containers"] == [{"engine": "docker", "id": "4f2a9c1b7d3e", "name": "web", "image": "nginx:1.27",
                                     "state": "running", "status": "Up 3 hours"}]


def test_containers_machined_and_a_dead_docker_socket(tmp_path):
    machines = tmp_path / "run" / "systemd" / "machines"
    machines.mkdir(parents=True)
    (machines / "fleet1").write_text("NAME=fleet1\nCLASS=container\nROOT=/var/lib/machines/fleet1\nSTATE=running\n")
    (machines / "unit:fleet1.scope").write_text("fleet1\n")
    (tmp_path / "run" / "docker.sock").write_text("")   # not a socket: the engine is down
    with _host.roots(run=str(tmp_path / "run"), var=str(tmp_path), sys=str(tmp_path)):
        result = containers.list()
    assert result["engines"] == ["docker", "systemd-nspawn"]
    assert "docker" in result["errors"]
    assert result["containers"] == [{"engine": "systemd-nspawn", "id": None, "name": "fleet1",
                                     "image": "/var/lib/machines/fleet1", "state": "running", "status": None}]


# --- every new operation on this machine ------------------------------------------------------------

def test_every_new_operation_answers_on_this_machine_or_says_not_available(monkeypatch):
    """Each answers JSON, or the documented "not_available" (no systemd as PID 1 here, no DMI, no smartctl)."""
    monkeypatch.setattr(packages, "APT_TIMEOUT", 120.0)   # this machine keeps no apt cache: slow, not broken
    previous = dict(_host.allowed_paths)
    _host.configure_paths(["/etc"], ["/etc/ssl/certs"])
    registry = load_default_registry()
    answered, unavailable = [], []
    try:
        for name in NEW_OPERATIONS:
            try:
                result = registry.lookup(name).call(EXAMPLE_ARGS.get(name))
            except OperationError as exc:
                assert exc.code == "not_available", (name, exc.code, exc.message)
                unavailable.append(name)
                continue
            json.dumps(result)
            answered.append(name)
    finally:
        _host.configure_paths(previous["files"], previous["certs"])
    assert len(answered) >= 15, (answered, unavailable)
    for name in ("packages.installed", "kernel.sysctl", "hardware.cpu", "network.routes", "files.stat",
                 "files.certificates", "containers.list", "clock.sync", "users.logins"):
        assert name in answered, name
