"""The mdp.core.mdp inventory plugin against a real monitor database.

A real `mdp monitor` on 127.0.0.1 stores the reports of real agents on loopback; the key store it
uses is the one the inventory reads. `ansible-inventory` runs from the project root, as an operator would.
"""

from __future__ import annotations

import json
import platform
import sqlite3
import time

import pytest
import yaml
from integration.harness import Agent, Monitor, free_port, wait_for, write_config
from mdp_ansible import run

from mdp_agent import __version__, protocol
from mdp_controller.keystore import KeyStore

STALE_AFTER = 5   # seconds; the reporting agent reports every second


def os_id() -> str:
    return platform.freedesktop_os_release()["ID"]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """A monitor, an agent that keeps reporting (127.0.0.2), one that reported and stopped (127.0.0.3),
    a trusted key that never reported (127.0.0.7) and a pending key (127.0.0.6)."""
    work = tmp_path_factory.mktemp("monitored")
    known = work / "known_machines"
    port = free_port()
    monitor = Monitor(work, port, known).start()
    config = write_config(work / "agent.conf", report_operations="system.info, load.avg")
    agents = [Agent(work, ip, port, known, config=config, flags=["--monitor", monitor.address, "--interval", "1"])
              for ip in ("127.0.0.2", "127.0.0.3")]
    try:
        for agent in agents:
            agent.start().trust()
        KeyStore(known).put("127.0.0.7", protocol.generate_key_text())
        KeyStore(known).put("127.0.0.6", protocol.generate_key_text(), state="pending")
        for agent in agents:
            wait_for(lambda ip=agent.ip: monitor.report_count(ip, containing="agent_version") >= 2,
                     f"two reports with system.info from {agent.ip}")
        agents[1].stop()

        def gone_quiet():
            rows = monitor.query("SELECT last_seen FROM machines WHERE ip = '127.0.0.3'")
            return rows and time.time() - rows[0][0] > STALE_AFTER + 1
        wait_for(gone_quiet, "127.0.0.3's last report to be older than stale_after", timeout=30)
        yield work, known, monitor
    finally:
        for agent in agents:
            agent.kill()
        monitor.kill()


def inventory_file(path, **options):
    path.write_text(yaml.safe_dump({"plugin": "mdp.core.mdp", **options}))
    return path


def plain(value):
    """ansible-inventory's JSON without the {"__ansible_unsafe": ...} marks of values that are not templates."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return plain(value["__ansible_unsafe"])
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def listed(source):
    result = run(["ansible-inventory", "-i", source, "--list"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stderr, result.stderr   # a source that fails to parse is only a warning
    return plain(json.loads(result.stdout))


def hosts(inventory, group):
    return sorted(inventory.get(group, {}).get("hosts", []))


def test_hosts_groups_and_hostvars_from_the_key_store_and_the_monitor(monitored):
    work, known, monitor = monitored
    source = inventory_file(work / "fleet.mdp.yml", known_machines="known_machines", database=str(monitor.db),
                            stale_after=STALE_AFTER, keyed_groups=[{"key": "mdp_os.id", "prefix": "os"}],
                            groups={"mdp_busy": "mdp_reports > 0"})
    inventory = listed(source)
    assert hosts(inventory, "mdp_agents") == ["127.0.0.2", "127.0.0.3", "127.0.0.7"]
    assert hosts(inventory, "mdp_pending") == ["127.0.0.6"]
    assert hosts(inventory, "mdp_up") == ["127.0.0.2"]
    assert hosts(inventory, "mdp_stale") == ["127.0.0.3", "127.0.0.7"]
    assert hosts(inventory, f"os_{os_id()}") == ["127.0.0.2", "127.0.0.3"]   # keyed_groups (Constructable)
    assert hosts(inventory, "mdp_busy") == ["127.0.0.2", "127.0.0.3"]

    hostvars = inventory["_meta"]["hostvars"]
    up = hostvars["127.0.0.2"]
    assert up["mdp_key_state"] == "trusted" and up["mdp_status"] == "up"
    assert up["mdp_agent_version"] == __version__
    assert up["mdp_os"]["id"] == os_id()
    assert up["mdp_load"]["load1"] >= 0 and set(up["mdp_load"]) >= {"load1", "load5", "load15"}
    assert up["mdp_reports"] >= 2 and up["mdp_last_report_ok"] is True
    assert time.time() - STALE_AFTER <= up["mdp_last_seen"] <= time.time()
    assert hostvars["127.0.0.3"]["mdp_status"] == "stale"
    assert hostvars["127.0.0.7"]["mdp_status"] == "unseen" and hostvars["127.0.0.7"]["mdp_last_seen"] is None
    assert hostvars["127.0.0.6"]["mdp_key_state"] == "pending"


def test_what_agents_report_is_never_templated(monitored):
    """An agent's OS name that looks like Jinja stays text when a play uses it (the value is in a copy
    of the real monitor's database, written as the collector writes a system.info result)."""
    work, known, monitor = monitored
    db = work / "templated.db"
    with sqlite3.connect(monitor.db) as live, sqlite3.connect(db) as copy:
        live.backup(copy)
        row = copy.execute("SELECT result FROM latest WHERE ip = '127.0.0.2' AND name = 'system.info'").fetchone()
        info = dict(json.loads(row[0]), os={"id": "evil", "pretty_name": "{{ 6 * 7 }}"})
        copy.execute("UPDATE latest SET result = ? WHERE ip = '127.0.0.2' AND name = 'system.info'",
                     (json.dumps(info),))
    source = inventory_file(work / "templated.mdp.yml", known_machines=str(known), database=str(db))
    result = run(["ansible", "127.0.0.2", "-i", source, "-o", "-m", "ansible.builtin.debug",
                  "-a", "var=mdp_os.pretty_name"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.split("=>", 1)[1])["mdp_os.pretty_name"] == "{{ 6 * 7 }}", result.stdout


def test_without_a_database_only_the_key_store(monitored):
    work, known, _ = monitored
    inventory = listed(inventory_file(work / "keys.mdp.yml", known_machines=str(known)))
    assert hosts(inventory, "mdp_agents") == ["127.0.0.2", "127.0.0.3", "127.0.0.7"]
    assert "mdp_up" not in inventory and "mdp_stale" not in inventory
    assert inventory["_meta"]["hostvars"]["127.0.0.2"] == {"mdp_key_state": "trusted"}


def test_a_missing_database_is_a_clear_error_and_is_not_created(monitored):
    """The plugin opens the database read-only: a read-write open would have created the file."""
    work, known, _ = monitored
    missing = work / "no-such.db"
    source = inventory_file(work / "missing.mdp.yml", known_machines=str(known), database=str(missing))
    result = run(["ansible-inventory", "-i", source, "--list"], timeout=120, ANSIBLE_INVENTORY_UNPARSED_FAILED="true")
    assert result.returncode != 0
    unwrapped = "".join(result.stderr.split())   # Ansible wraps warnings at 80 columns, also inside paths
    assert "".join(f"mdp.core.mdp: no monitor database at {missing}".split()) in unwrapped, result.stderr
    assert not missing.exists()


def test_the_inventory_cache_keeps_one_run_until_flushed(monitored):
    work, known, monitor = monitored
    keys = work / "cached_keys"
    KeyStore(keys).put("127.0.0.2", (known / "127.0.0.2.txt").read_text())
    source = inventory_file(work / "cached.mdp.yml", known_machines=str(keys), database=str(monitor.db),
                            cache=True, cache_plugin="ansible.builtin.jsonfile",
                            cache_connection=str(work / "cache"), cache_timeout=3600)
    assert hosts(listed(source), "mdp_agents") == ["127.0.0.2"]
    assert list((work / "cache").iterdir()), "the jsonfile cache plugin wrote nothing"
    KeyStore(keys).put("127.0.0.8", protocol.generate_key_text())
    assert hosts(listed(source), "mdp_agents") == ["127.0.0.2"]          # from the cache
    play = work / "list.yml"
    play.write_text("- name: List\n  hosts: all\n  gather_facts: false\n  tasks: []\n")
    flushed = run(["ansible-playbook", "-i", source, "--flush-cache", "--list-hosts", play], timeout=120)
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert "127.0.0.8" in flushed.stdout                                 # read anew...
    assert hosts(listed(source), "mdp_agents") == ["127.0.0.2", "127.0.0.8"]   # ...and cached again


def test_ansible_doc_renders_the_documentation():
    result = run(["ansible-doc", "-t", "inventory", "mdp.core.mdp"], timeout=120)
    assert result.returncode == 0, result.stderr
    for text in ("known_machines", "database", "stale_after", "mdp_pending", "keyed_groups", "cache_plugin"):
        assert text in result.stdout, text
