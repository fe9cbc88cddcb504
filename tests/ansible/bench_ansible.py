"""Prints how long Ansible takes against the fleet: deploy.yml (cold and warm) and one round of
`ansible -m mdp_send -a operations=ping` vs `ansible -m ping` (SSH) vs `mdp send ... ping`.

    .venv/bin/python tests/ansible/bench_ansible.py [-i INVENTORY] [--rounds 5] [--deploy]

Numbers only, never pass/fail. --deploy runs deploy.yml twice on the agents (the first is "cold"
only on freshly booted hosts, e.g. a second fleet: MDP_FLEET_INSTANCE=b MDP_FLEET_SUBNET=10.207.44
tests/fleet/fleet.sh up 3, inventory /run/mdp-fleet-b/hosts.yml). The monitor play is left out so
that a second fleet does not move the monitor of the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def timed(argv) -> float:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    start = time.perf_counter()
    result = subprocess.run([str(a) for a in argv], cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", default=str(REPO / "inventories" / "fleet" / "hosts.yml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deploy", action="store_true")
    args = parser.parse_args()
    hosts = yaml.safe_load(Path(args.inventory).read_text())["all"]["children"]["mdp_agents"]["hosts"]
    ips = ",".join(h["ansible_host"] for h in hosts.values())

    if args.deploy:
        deploy = ["ansible-playbook", "-i", args.inventory, "deploy.yml", "-l", "mdp_agents"]
        print(f"deploy.yml first run ({len(hosts)} hosts): {timed(deploy):.1f} s")
        print(f"deploy.yml warm rerun:                 {timed(deploy):.1f} s")

    commands = {
        "ansible -m mdp_send -a operations=ping": ["ansible", "-i", args.inventory, "mdp_agents", "-m", "mdp_send",
                                                   "-a", "operations=ping"],
        "ansible -m ping (SSH)": ["ansible", "-i", args.inventory, "mdp_agents", "-m", "ping"],
        "mdp send TARGETS ping": [BIN / "mdp", "send", ips, "ping"],
    }
    medians = {}
    for name, argv in commands.items():
        timed(argv)  # warm-up: SSH control sockets, page cache
        samples = [timed(argv) for _ in range(args.rounds)]
        medians[name] = statistics.median(samples)
        print(f"{name:42s} median {medians[name]:.2f} s  min {min(samples):.2f} s  ({args.rounds} rounds, "
              f"{len(hosts)} hosts)")
    ssh = medians["ansible -m ping (SSH)"]
    for name, value in medians.items():
        print(f"ratio {name:36s} / ansible -m ping: {value / ssh:.2f}")


if __name__ == "__main__":
    main()
