"""The booted test fleet as a pytest fixture (see README.md in this directory).

`fleet` (session scope) reuses a running fleet or boots one with `fleet.sh up 3`, and stops it at
session end only if it booted it (and MDP_FLEET_KEEP is not 1). It skips, with the reason, when not
root or when MDP_FLEET=0. tests/fleet/conftest.py exposes it; a conftest elsewhere can too:

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))
    from mdp_fleet import fleet  # noqa: F401
"""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "fleet.sh"
REPO = HERE.parents[1]
INVENTORY = REPO / "inventories" / "fleet" / "hosts.yml"
STATE_DIR = Path("/run/mdp-fleet")
CACHE_DIR = Path("/var/cache/mdp-fleet")
DEFAULT_SIZE = 3
# A cold first run debootstraps three suites (about 40 s each here) before booting.
UP_TIMEOUT = 1500
# The fleet (bridge, addresses, /run/mdp-fleet) is one per machine: test runs from several checkouts
# take turns on it instead of booting over each other.
LOCK_FILE = Path("/run/lock/mdp-fleet.lock")
@dataclass(frozen=True)
class FleetHost:
    name: str  # inventory name: fleet1, fleet2, ...
    index: int
    hostname: str  # mdp-fleet-1, ...
    ip: str
    suite: str
    ssh_args: tuple[str, ...]  # full argv prefix: append a remote command

    def ssh(self, command: str, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a shell command on the host as root; stdout and stderr are captured as text."""
        result = subprocess.run([*self.ssh_args, command], check=False, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.name} ({self.ip}): {command!r} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result


@dataclass(frozen=True)
class Fleet:
    hosts: tuple[FleetHost, ...]
    inventory: Path
    bridge_ip: str
    proxy: str  # http://BRIDGE:8888, for apt inside the hosts
    key: Path
    booted: bool  # True when this session booted the fleet (and will stop it)


def run_script(*args: str, env: dict | None = None, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess:
    """fleet.sh ARGS on the default fleet, unless env names another instance (MDP_FLEET_INSTANCE)."""
    base = {k: v for k, v in os.environ.items() if k != "MDP_FLEET_INSTANCE"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**base, **(env or {})},
    )


def status() -> tuple[int, list[list[str]]]:
    """fleet.sh status: its exit code and one field list per host line."""
    result = run_script("status", timeout=120)
    return result.returncode, [line.split("\t") for line in result.stdout.splitlines() if line.strip()]


def load(inventory: Path = INVENTORY, booted: bool = False) -> Fleet:
    """The fleet as the generated inventory describes it."""
    data = yaml.safe_load(inventory.read_text())
    agents = data["all"]["children"]["mdp_agents"]
    group = agents["vars"]
    key = Path(group["ansible_ssh_private_key_file"])
    base = (
        "ssh",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "LogLevel=ERROR",
        *shlex.split(group["ansible_ssh_common_args"]),
    )
    hosts = []
    for name, hostvars in agents["hosts"].items():
        index = int(name.removeprefix("fleet"))
        ip = hostvars["ansible_host"]
        hosts.append(
            FleetHost(
                name,
                index,
                hostvars["mdp_fleet_hostname"],
                ip,
                hostvars["mdp_fleet_suite"],
                (*base, f"{group['ansible_user']}@{ip}"),
            )
        )
    hosts.sort(key=lambda h: h.index)
    monitor = data["all"]["vars"]["mdp_agent_monitor_address"]
    return Fleet(tuple(hosts), inventory, monitor, data["all"]["vars"]["mdp_bootstrap_apt_proxy"], key, booted)


def skip_reason() -> str | None:
    if os.environ.get("MDP_FLEET") == "0":
        return "MDP_FLEET=0: the booted test fleet is switched off"
    if os.geteuid() != 0:
        return "the test fleet needs root (network namespaces, overlay mounts, systemd-nspawn)"
    return None


# tests/ansible, tests/cluster and tests/fleet each register the fixture below (their conftest imports
# it), so one session can hold several instances of it. They share one lock and one fleet: a second
# flock taken by the same process on its own open file would wait for the first forever.
_session: dict = {"users": 0, "lock": None, "fleet": None}


def _take_fleet() -> Fleet:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    lock = open(LOCK_FILE, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when this session's fleet tests are done
        code, lines = status()
        running = {fields[0] for fields in lines if len(fields) > 4 and fields[4] in ("running", "degraded")}
        wanted = {f"fleet{i}" for i in range(1, DEFAULT_SIZE + 1)}
        reuse = code == 0 and wanted <= running and INVENTORY.exists()
        if not reuse:
            result = run_script("up", str(DEFAULT_SIZE))
            if result.returncode != 0:
                raise RuntimeError(f"fleet.sh up {DEFAULT_SIZE} failed ({result.returncode}):\n{result.stderr}")
        # Own the fleet only if none of it was running (leftovers of a crash do not count): never stop
        # hosts someone else started.
        _session.update(lock=lock, fleet=load(booted=not running))
    except BaseException:
        lock.close()
        raise
    return _session["fleet"]


@pytest.fixture(scope="session")
def fleet():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    current = _session["fleet"] if _session["users"] else _take_fleet()
    _session["users"] += 1
    yield current
    _session["users"] -= 1
    if _session["users"]:
        return
    lock, _session["lock"], _session["fleet"] = _session["lock"], None, None
    try:
        if current.booted and os.environ.get("MDP_FLEET_KEEP") != "1":
            result = run_script("down", timeout=600)
            assert result.returncode == 0, f"fleet.sh down failed:\n{result.stderr}"
    finally:
        lock.close()
