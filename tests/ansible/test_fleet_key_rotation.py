"""Key rotation without downtime on the booted test fleet (issue 8 item 3).

deploy.yml (this checkout's agent), then playbooks/rotate_keys.yml over SSH on the three hosts while a
thread asks every agent for a ping every 0.2 s with the controller's key store, as `mdp send` does:
no request fails during install, use and remove; afterwards every host has a new key, the controller
holds it, and a request under the old key is refused; neither key shows in the playbook's --diff -vvv
output. Check mode first changes nothing; a second
`remove` run finds nothing to do. Teardown puts the original keys back (other tests' stores hold them).
"""

from __future__ import annotations

import threading
import time

import pytest
from mdp_ansible import run
from test_fleet_deploy import recap

from mdp_agent import protocol
from mdp_controller import client
from mdp_controller.keystore import KeyStore

# Waiting for the shared fleet (flock) and deploying it count against the setup: more than the default 600 s.
pytestmark = [pytest.mark.fleet, pytest.mark.slow, pytest.mark.timeout(3600)]

STATE = "/var/lib/mdp-agent"
SEND_EVERY_S = 0.2


def playbook(fleet, known, *args, timeout=1500):
    return run(["ansible-playbook", "-i", fleet.inventory, *args], timeout=timeout, known_machines=known)


@pytest.fixture(scope="module")
def rotated_fleet(fleet, tmp_path_factory):
    """The fleet deployed with a private key store (the shared fleet may carry keys other stores hold)."""
    known = str(tmp_path_factory.mktemp("rotation") / "known_machines")
    result = playbook(fleet, known, "deploy.yml")
    assert result.returncode == 0, result.stdout[-6000:]
    original = {h.ip: h.ssh(f"cat {STATE}/agent.key").stdout for h in fleet.hosts}
    yield fleet, known, original
    for host in fleet.hosts:
        text = original[host.ip].strip()
        host.ssh(f"umask 077 && printf '%s\\n' {text} > {STATE}/agent.key && rm -f {STATE}/agent.next.key"
                 f" {STATE}/agent.previous.key && systemctl restart mdp-agent", check=False)


class Pinger(threading.Thread):
    """`mdp send ping` to every agent every 0.2 s (client.send_sync with the controller's store)."""

    def __init__(self, ips, known):
        super().__init__(daemon=True)
        self.ips, self.known = ips, known
        self.stop = threading.Event()
        self.rounds = 0
        self.failures = []

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            replies = client.send_sync(self.ips, ["ping"], known_machines=self.known, timeout=5)
            self.rounds += 1
            for ip, reply in replies.items():
                if not reply.get("status"):
                    self.failures.append((time.strftime("%H:%M:%S"), ip, reply.get("error")))
            self.stop.wait(max(0.0, SEND_EVERY_S - (time.monotonic() - started)))


def test_rotate_keys_keeps_every_agent_answering_and_the_old_key_is_refused_after(rotated_fleet, tmp_path):
    fleet, known, original = rotated_fleet
    ips = [h.ip for h in fleet.hosts]
    store = KeyStore(known)
    old_store = tmp_path / "old_keys"
    for ip in ips:
        KeyStore(old_store).put(ip, original[ip])
        assert store.get_text(ip) == original[ip].strip()

    check = playbook(fleet, known, "playbooks/rotate_keys.yml", "--check")
    assert check.returncode == 0, check.stdout[-6000:]
    assert all(h.ssh(f"cat {STATE}/agent.key").stdout == original[h.ip] for h in fleet.hosts)
    assert not any(h.ssh(f"test -e {STATE}/agent.next.key", check=False).returncode == 0 for h in fleet.hosts)

    pinger = Pinger(ips, known)
    pinger.start()
    try:
        result = playbook(fleet, known, "playbooks/rotate_keys.yml", "--diff", "-vvv")
    finally:
        pinger.stop.set()
        pinger.join(30)
    assert result.returncode == 0, result.stdout[-8000:]
    print(f"rotate_keys.yml on {len(ips)} hosts: {pinger.rounds} rounds of pings to all of them every "
          f"{SEND_EVERY_S} s, {len(pinger.failures)} failures")
    assert pinger.rounds >= 20, "the pings ran through the rotation"
    assert pinger.failures == []

    output = result.stdout + result.stderr
    for host in fleet.hosts:
        new_text = host.ssh(f"cat {STATE}/agent.key").stdout
        assert new_text != original[host.ip]
        for text in (new_text, original[host.ip]):   # no_log holds at -vvv with --diff
            assert text.strip() not in output, f"{host.name}'s key is in the playbook's output"
        assert store.get_text(host.ip) == new_text.strip(), "the controller holds the host's new key"
        assert host.ssh(f"ls {STATE}/agent.next.key {STATE}/agent.previous.key", check=False).returncode != 0
        assert host.ssh(f"stat -c %a {STATE}/agent.key").stdout.strip() == "600"
        for state in ("next", "previous"):
            assert store.get_text(host.ip, state) is None

    replies = client.send_sync(ips, ["agent.keyring"], known_machines=known, timeout=10)
    for ip in ips:
        ring = replies[ip]["operations"][0]["result"]
        fingerprint = protocol.key_fingerprint(protocol.parse_key_text(store.get_text(ip)))
        assert ring == {"in_use": fingerprint, "accepted": [fingerprint]}, ip
    stale = client.send_sync(ips, ["ping"], known_machines=str(old_store), timeout=3)
    assert all(not r["status"] and r["error"]["code"] == "timeout" for r in stale.values()), stale

    # The last step run again finds nothing to do (each step is idempotent; a whole run is a new rotation).
    step = tmp_path / "remove_again.yml"
    step.write_text(REMOVE_AGAIN)
    again = playbook(fleet, known, str(step), timeout=600)
    assert again.returncode == 0, again.stdout[-6000:]
    counts = recap(again.stdout)
    assert set(counts) >= {h.name for h in fleet.hosts} and all(c["changed"] == 0 for c in counts.values()), \
        again.stdout[-6000:]


REMOVE_AGAIN = """---
- name: Remove the old keys once more
  hosts: mdp_agents
  gather_facts: false
  become: true
  tasks:
    - name: Remove the old keys
      ansible.builtin.import_role:
        name: mdp.core.agent
        tasks_from: keyring.yml
      vars:
        mdp_agent_keyring_step: remove
"""
