"""The test fleet harness (fleet.sh) proven on the hosts it boots: real systemd-nspawn hosts,
real sshd, real network namespaces and the real apt proxy. Nothing here is mocked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mdp_fleet import CACHE_DIR, REPO, STATE_DIR, load, run_script, skip_reason, status

pytestmark = pytest.mark.fleet


def test_inventory_is_what_ansible_reads(fleet):
    data = yaml.safe_load(fleet.inventory.read_text())
    agents = data["all"]["children"]["mdp_agents"]
    assert list(agents["hosts"]) == [f"fleet{i}" for i in range(1, len(fleet.hosts) + 1)]
    assert agents["vars"]["ansible_user"] == "root"
    assert agents["vars"]["ansible_python_interpreter"] == "/usr/bin/python3"
    assert "StrictHostKeyChecking=no" in agents["vars"]["ansible_ssh_common_args"]
    assert "UserKnownHostsFile=/dev/null" in agents["vars"]["ansible_ssh_common_args"]
    assert fleet.key.stat().st_mode & 0o777 == 0o600
    assert fleet.key.parent.stat().st_mode & 0o777 == 0o700
    monitor = data["all"]["children"]["mdp_monitor"]["hosts"]["localhost"]
    assert monitor == {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
    }
    assert data["all"]["vars"] == {
        "mdp_bootstrap_apt_proxy": f"http://{fleet.bridge_ip}:8888",
        "mdp_agent_monitor_address": fleet.bridge_ip,
    }
    assert [h.suite for h in fleet.hosts[:3]] == ["bullseye", "bookworm", "trixie"]
    ansible_inventory = REPO / ".venv" / "bin" / "ansible-inventory"
    if ansible_inventory.exists():
        listed = subprocess.run(
            [str(ansible_inventory), "-i", str(fleet.inventory), "--list"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        hostvars = yaml.safe_load(listed.stdout)["_meta"]["hostvars"]
        assert hostvars["fleet1"]["ansible_host"] == fleet.hosts[0].ip


def test_committed_local_inventory_matches_a_default_fleet(fleet):
    """inventories/local/ is the generated inventory of `up 3` on the default subnet, committed."""
    if fleet.bridge_ip != "10.207.33.1" or len(fleet.hosts) != 3:
        pytest.skip("the running fleet is not the default one (MDP_FLEET_SUBNET or N differs)")
    local = yaml.safe_load((REPO / "inventories" / "local" / "hosts.yml").read_text())
    assert local == yaml.safe_load(fleet.inventory.read_text())


def test_each_host_answers_ssh_as_itself(fleet):
    machine_ids = set()
    for host in fleet.hosts:
        out = host.ssh("hostname; . /etc/os-release; echo $VERSION_CODENAME; cat /etc/machine-id").stdout.split()
        assert out[:2] == [host.hostname, host.suite]
        machine_ids.add(out[2])
    assert len(machine_ids) == len(fleet.hosts), "every host needs its own machine-id"


def test_hosts_start_without_python(fleet):
    """The image every host boots from has no python, so bootstrap must install it; any python a host has
    came after boot, into its own layer. (The fleet is shared by every test folder of a run, so it may
    have been deployed to already; the deploy test itself checks python is absent before bootstrap.)"""
    for host in fleet.hosts:
        assert not list((CACHE_DIR / host.suite / "usr" / "bin").glob("python*"))
        if host.ssh("command -v python3", check=False).returncode == 0:
            upper = STATE_DIR / "hosts" / str(host.index) / "upper" / "usr" / "bin"
            assert list(upper.glob("python3*")), f"{host.name} has python3 that is not in its own layer"


def test_hosts_reach_each_other_and_the_bridge(fleet):
    targets = [f"{h.ip}/22" for h in fleet.hosts] + [f"{fleet.bridge_ip}/8888"]
    probe = " && ".join(f"timeout 5 bash -c '</dev/tcp/{t}'" for t in targets)
    for host in fleet.hosts:
        host.ssh(probe)


def test_hosts_have_no_route_elsewhere(fleet):
    for host in fleet.hosts:
        routes = host.ssh("ip -4 route show table all type unicast").stdout.splitlines()
        assert [r.split()[0] for r in routes] == [f"{fleet.bridge_ip.rsplit('.', 1)[0]}.0/24"], routes
        # `ip route get` asks the kernel's routing table only: no packet leaves.
        unreachable = host.ssh("ip route get 192.0.2.1", check=False)
        assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr
        assert "nameserver" not in host.ssh("cat /etc/resolv.conf").stdout


def test_proxy_listens_on_the_bridge_only_and_forwards_only_to_registries(fleet):
    listeners = subprocess.run(["ss", "-Hltn", "sport = :8888"], capture_output=True, text=True, check=True)
    assert [line.split()[3] for line in listeners.stdout.splitlines()] == [f"{fleet.bridge_ip}:8888"]
    ask = "exec 3<>/dev/tcp/{}/8888; printf 'GET http://example.com/ HTTP/1.0\\r\\n\\r\\n' >&3; head -n1 <&3"
    answer = fleet.hosts[0].ssh(ask.format(fleet.bridge_ip)).stdout
    assert answer.split()[1] == "403", answer


def test_apt_reaches_each_suites_archives_through_the_proxy(fleet):
    for host in fleet.hosts[:3]:
        out = host.ssh(f"apt-get update -o Acquire::http::Proxy={fleet.proxy} 2>&1").stdout
        assert "Err:" not in out and "\nE:" not in out and "\nW:" not in out, out
        for pocket in (f" {host.suite} ", f" {host.suite}-updates ", f" {host.suite}-security "):
            assert pocket in out, f"{host.name}: no{pocket}in apt-get update:\n{out}"


def test_status_and_ssh_subcommands(fleet):
    code, lines = status()
    assert code == 0, lines
    assert [(f[0], f[2], f[3]) for f in lines] == [(h.name, h.ip, h.suite) for h in fleet.hosts]
    result = run_script("ssh", "1", "hostname", timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == fleet.hosts[0].hostname


def test_up_again_reuses_running_hosts(fleet):
    # A host's identity and its init's start time (field 22 of /proc/1/stat) change when it restarts.
    probe = "cat /etc/machine-id; cut -d' ' -f22 /proc/1/stat"
    before = [h.ssh(probe).stdout for h in fleet.hosts]
    result = run_script("up", str(len(fleet.hosts)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("reusing mdp-fleet-") == len(fleet.hosts)
    after = [h.ssh(probe).stdout for h in fleet.hosts]
    assert before == after


def test_bad_input_gets_a_clear_error():
    for args, env, needle in (
        (["up", "zero"], {}, "N='zero' must be a number"),
        (["up", "0"], {}, "N='0' must be a number"),
        (["ssh", "x"], {}, "usage: fleet.sh ssh"),
        (["frobnicate"], {}, "usage: fleet.sh up"),
        (["status"], {"MDP_FLEET_SUBNET": "10.300.1"}, "has an octet above 255"),
        (["status"], {"MDP_FLEET_SUBNET": "10.1"}, "is not three dotted octets"),
    ):
        result = subprocess.run(
            ["bash", str(Path(__file__).with_name("fleet.sh")), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **env},
        )
        assert result.returncode != 0 and needle in result.stderr, (args, result.stderr)


# A second fleet instance beside the default one, so crashing it never disturbs hosts in use.
SCRATCH = "t"
SCRATCH_SUBNET = "10.207.34" if os.environ.get("MDP_FLEET_SUBNET", "10.207.33") != "10.207.34" else "10.207.35"
SCRATCH_STATE = f"/run/mdp-fleet-{SCRATCH}"


def leftovers() -> list[str]:
    """Everything of the scratch instance that still exists on this machine."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
    found += [line for line in netns.splitlines() if line.startswith(f"mdp-fleet-{SCRATCH}-")]
    links = subprocess.run(["ip", "-o", "link", "show"], check=False, capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip() for line in links.splitlines()]
    found += [name for name in names if name.startswith((f"mdpv{SCRATCH}-", f"mdpbr{SCRATCH}"))]
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    found += [m for m in mounts if m == SCRATCH_STATE or m.startswith(SCRATCH_STATE + "/")]
    procs = subprocess.run(["pgrep", "-a", "-f", SCRATCH_STATE], check=False, capture_output=True, text=True)
    found += procs.stdout.splitlines()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(proc / "root").startswith(SCRATCH_STATE + "/"):
                found.append(f"process {proc.name} rooted in {SCRATCH_STATE}")
        except OSError:
            pass  # gone meanwhile
    if Path(SCRATCH_STATE).exists():
        found.append(SCRATCH_STATE)
    return found


def crash(count: int) -> None:
    """SIGKILL the scratch instance's nspawns and proxy, as a crash or a killed session would."""
    pattern = f"systemd-nspawn .*/run/netns/mdp-fleet-{SCRATCH}-|tinyproxy -c {SCRATCH_STATE}/"
    pids = subprocess.run(["pgrep", "-f", pattern], check=True, capture_output=True, text=True).stdout.split()
    assert len(pids) == count + 1, pids
    subprocess.run(["kill", "-KILL", *pids], check=True)


@pytest.fixture
def scratch():
    """The environment of a 2-host scratch fleet; it is always taken down afterwards."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    env = {"MDP_FLEET_INSTANCE": SCRATCH, "MDP_FLEET_SUBNET": SCRATCH_SUBNET}
    yield env
    result = run_script("down", env=env, timeout=600)
    assert result.returncode == 0, result.stderr


def test_up_and_down_recover_from_a_crash_and_touch_no_other_fleet(scratch):
    def default_fleet():  # exit code and host lines without the memory column, which moves
        code, lines = status()
        return code, [fields[:5] for fields in lines]

    before = default_fleet()
    result = run_script("up", "2", env=scratch)
    assert result.returncode == 0, result.stderr
    hosts = load(Path(SCRATCH_STATE) / "hosts.yml").hosts
    assert [h.ip for h in hosts] == [f"{SCRATCH_SUBNET}.11", f"{SCRATCH_SUBNET}.12"]
    for host in hosts:
        assert host.ssh("hostname").stdout.strip() == host.hostname == f"mdp-fleet-{SCRATCH}-{host.index}"
    crash(len(hosts))
    result = run_script("up", "2", env=scratch)
    assert result.returncode == 0, result.stderr
    assert "(2 booted, 0 reused)" in result.stderr
    for host in hosts:
        assert host.ssh("hostname").stdout.strip() == host.hostname
    crash(len(hosts))
    for attempt in range(2):
        result = run_script("down", env=scratch, timeout=600)
        assert result.returncode == 0, (attempt, result.stderr)
        assert leftovers() == [], attempt
    # The default fleet, running or not, is exactly as it was.
    assert default_fleet() == before


@pytest.mark.parametrize(
    ("prefix", "env", "reason"),
    [
        ([], {"MDP_FLEET": "0"}, "MDP_FLEET=0: the booted test fleet is switched off"),
        (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], {}, "the test fleet needs root"),
    ],
    ids=["MDP_FLEET=0", "not-root"],
)
def test_fleet_tests_skip_with_their_reason(prefix, env, reason):
    """Outside CI a fleet test skips, naming why; under CI=true the same skip fails (tests/conftest.py)."""
    outside_ci = {k: v for k, v in os.environ.items() if k != "CI"}
    argv = [*prefix, sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", __file__, "-k", "ssh_as"]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120, cwd="/",
                            env={**outside_ci, **env})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and reason in result.stdout, result.stdout + result.stderr

    in_ci = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120, cwd="/",
                           env={**outside_ci, **env, "CI": "true"})
    assert in_ci.returncode != 0, in_ci.stdout + in_ci.stderr
    assert "1 error" in in_ci.stdout and "skipped under CI=true" in in_ci.stdout and reason in in_ci.stdout


def test_inventory_has_the_cluster_group(fleet):
    data = yaml.safe_load(fleet.inventory.read_text())
    assert data["all"]["children"]["mdp_cluster"] == {"children": {"mdp_agents": None}}
