"""The built collection on its own: `make collection`'s tarball installed with ansible-galaxy into an
empty directory deploys the booted fleet from there, with nothing of the checkout present but the
controller library (a fresh venv: ansible-core from PyPI and the wheel the collection bundles).

The fleet is shared with the rest of the suite, so this deploy must leave it as it found it: the
agents get the same release (the agent source is the same bytes) and the checkout's monitor keeps
running; the collection's monitor runs as a second instance (its own unit name, directory, state and
a port of its own) and is removed afterwards through the monitor role's uninstall entry point.
Prints how long each step took (numbers only, never asserted).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mdp_ansible import REPO

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

PING_TASK = "Wait until the agent answers a signed ping"
MONITOR = {
    "mdp_monitor_service_name": "mdp-monitor-galaxy",
    "mdp_monitor_install_dir": "/opt/mdp-monitor-galaxy",
    "mdp_monitor_state_dir": "/var/lib/mdp-monitor-galaxy",
}


def monitor_state(name: str) -> str:
    """active/inactive for a unit under systemd; for the supervised fallback (PID 1 is not systemd,
    as on this development machine) whether its pidfile names a live process."""
    if Path("/run/systemd/system").is_dir():
        return subprocess.run(["systemctl", "is-active", name], capture_output=True, text=True).stdout.strip()
    status = subprocess.run(["start-stop-daemon", "--status", "--pidfile", f"/run/{name}.pid"])
    return "active" if status.returncode == 0 else "inactive"


def timed(label: str, timings: dict, argv, **kwargs) -> subprocess.CompletedProcess:
    start = time.monotonic()
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    timings[label] = time.monotonic() - start
    return result


@pytest.fixture(scope="module")
def site(fleet, tmp_path_factory):
    """An operator's directory: ansible.cfg, the fleet's inventory, the installed collection, a venv."""
    timings: dict[str, float] = {}
    base = tmp_path_factory.mktemp("galaxy")
    built = timed("make collection (build)", timings, ["bash", REPO / "scripts" / "build_collection.sh", base / "dist"],
                  cwd=REPO, timeout=600)
    assert built.returncode == 0, built.stderr
    tarball = Path(built.stdout.split()[-1])

    site = base / "site"
    (site / "inventory").mkdir(parents=True)
    inventory = yaml.safe_load(fleet.inventory.read_text())
    inventory["all"]["children"]["mdp_monitor"]["hosts"]["localhost"].update(
        MONITOR, mdp_monitor_listen=f"{fleet.bridge_ip}:12399")
    (site / "inventory" / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (site / "ansible.cfg").write_text("[defaults]\ninventory = inventory\ncollections_path = ./collections\n"
                                      "interpreter_python = auto_silent\nforks = 20\n")

    venv = site / "venv"
    made = timed("venv + ansible-core + controller library", timings, ["bash", "-c", " && ".join([
        f"{sys.executable} -m venv {venv}",
        f"{venv}/bin/pip install -q 'ansible-core=={importlib.metadata.version('ansible-core')}'",
    ])], timeout=900)
    assert made.returncode == 0, made.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MDP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv}/bin:/usr/sbin:/usr/bin:/sbin:/bin", ANSIBLE_NOCOLOR="1", HOME=str(base))
    installed = timed("ansible-galaxy collection install", timings,
                      [venv / "bin" / "ansible-galaxy", "collection", "install", tarball, "-p", "collections"],
                      cwd=site, env=env, timeout=300)
    assert installed.returncode == 0, installed.stderr
    collection = site / "collections" / "ansible_collections" / "mdp" / "core"
    # The controller library comes from the collection itself: requirements.txt names it, the
    # wheel is bundled because mdp-diagnostics is not on the index yet.
    wheel = next((collection / "roles" / "monitor" / "files").glob("mdp_diagnostics-*.whl"))
    assert (collection / "requirements.txt").read_text().count("mdp-diagnostics==") == 1
    lib = timed("pip install the bundled controller library", timings, [venv / "bin" / "pip", "install", "-q", wheel],
                env=env, timeout=300)
    assert lib.returncode == 0, lib.stderr
    yield site, env, collection, timings
    print("\n" + "\n".join(f"galaxy install: {label}: {seconds:.1f} s" for label, seconds in timings.items()))


def test_installed_collection_holds_no_path_into_the_checkout(site):
    _, _, collection, _ = site
    assert (collection / "roles" / "agent" / "files" / "agent_src" / "mdp_agent" / "protocol.py").is_file()
    assert (collection / "LICENSE").read_text().startswith("MIT License")
    for path in collection.rglob("*.yml"):
        text = path.read_text()
        assert "../../" not in text and "/pyproject.toml" not in text, path
    manifest = json.loads((collection / "MANIFEST.json").read_text())["collection_info"]
    assert "example.invalid" not in json.dumps(manifest) and manifest["license"] == ["MIT"]


def test_deploy_from_the_installed_collection(site, fleet):
    site_dir, env, _, timings = site
    argv = [site_dir / "venv" / "bin" / "ansible-playbook", "mdp.core.deploy"]
    result = timed("ansible-playbook mdp.core.deploy", timings, argv, cwd=site_dir, env=env, timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert str(REPO) not in output  # nothing of the checkout was used
    for host in fleet.hosts:
        assert f"ok: [{host.name}]" in output.split(f"TASK [mdp.core.agent : {PING_TASK}]")[1], output[-6000:]
        key = (site_dir / ".known_machines" / f"{host.ip}.txt").read_text()
        assert key == host.ssh("cat /var/lib/mdp-agent/agent.key").stdout
    assert monitor_state("mdp-monitor-galaxy") == "active"
    version = subprocess.run(["/opt/mdp-monitor-galaxy/venv/bin/mdp", "--help"], capture_output=True, text=True)
    assert version.returncode == 0

    # The controller library of the fresh venv talks to the agents with the keys the deploy fetched.
    sent = subprocess.run([site_dir / "venv" / "bin" / "mdp", "send", "--json", ",".join(h.ip for h in fleet.hosts),
                           "ping"], capture_output=True, text=True, cwd=site_dir, env=env, timeout=120)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    rerun = timed("ansible-playbook mdp.core.deploy (second run)", timings, argv, cwd=site_dir, env=env, timeout=1500)
    assert rerun.returncode == 0, rerun.stdout[-4000:]
    changed = re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", rerun.stdout, re.M)
    assert changed and all(count == "0" for _, count in changed), rerun.stdout[-6000:]


def test_monitor_uninstall_entry_point_removes_the_second_monitor(site):
    site_dir, env, _, timings = site
    checkout_monitor = monitor_state("mdp-monitor")
    playbook = site_dir / "uninstall-monitor.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Remove the galaxy test's monitor", "hosts": "mdp_monitor", "become": True,
        "tasks": [{"name": "Uninstall", "ansible.builtin.include_role": {"name": "mdp.core.monitor",
                                                                         "tasks_from": "uninstall.yml"}}]}]))
    result = timed("monitor uninstall", timings, [site_dir / "venv" / "bin" / "ansible-playbook", playbook],
                   cwd=site_dir, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert not Path("/etc/systemd/system/mdp-monitor-galaxy.service").exists()
    assert not Path("/opt/mdp-monitor-galaxy").exists()
    assert Path("/var/lib/mdp-monitor-galaxy").is_dir()  # the database is kept
    shutil.rmtree("/var/lib/mdp-monitor-galaxy")
    assert monitor_state("mdp-monitor-galaxy") == "inactive"
    assert monitor_state("mdp-monitor") == checkout_monitor  # the checkout's monitor is as it was
