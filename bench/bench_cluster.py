"""Cluster mode: how long files written on one machine take to reach every other one.

    .venv/bin/python bench/bench_cluster.py                 # 3 Syncthing instances on 127.0.41.x
    .venv/bin/python bench/bench_cluster.py --fleet         # the booted fleet (after playbooks/cluster.yml)

Measures one 1 MB file (several rounds) and a batch of 1,000 small files, from the moment the
writer has them on disk until every other machine holds identical bytes. The clusters are set up
through ClusterManager / playbooks/cluster.yml exactly as in production (fsWatcherDelayS 1), so the
numbers include the watcher delay. Prints numbers; passes or fails nothing. Target: one file < 5 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cluster"))
sys.path.insert(0, str(ROOT / "tests" / "fleet"))

FOLDER = "/srv/mdp-cluster-bench"
POLL_S = 0.02
DEADLINE_S = 300


def _wait(condition, what):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(POLL_S)
    raise SystemExit(f"bench_cluster: gave up after {DEADLINE_S} s waiting for {what}")


class LocalMachines:
    """Three real Syncthing instances on loopback, clustered by ClusterManager."""

    def __init__(self, count=3):
        import harness
        self.harness = harness
        self.tmp = tempfile.TemporaryDirectory(prefix="mdp-bench-cluster-")
        self.nodes = [harness.Node(Path(self.tmp.name), f"127.0.41.{i}").start() for i in range(1, count + 1)]
        harness.activate(self.nodes, FOLDER)
        harness.wait_for(lambda: all(a.connected_to(b) for a in self.nodes for b in self.nodes if a is not b),
                         120, "the instances to connect")
        self.names = [n.ip for n in self.nodes]

    def write(self, index, files: dict[str, bytes]):
        base = self.nodes[index].path(FOLDER)
        for name, data in files.items():
            path = base / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def digests(self, index, names) -> dict[str, str]:
        base = self.nodes[index].path(FOLDER)
        out = {}
        for name in names:
            try:
                out[name] = hashlib.sha256((base / name).read_bytes()).hexdigest()
            except OSError:
                out[name] = None
        return out

    def close(self):
        for node in self.nodes:
            node.stop()
        self.tmp.cleanup()


class FleetMachines:
    """The booted fleet's first three hosts, clustered by playbooks/cluster.yml; files over SSH."""

    # Runs on the host (Python 3.4+): write files, or print the sha256 of each named file.
    WRITE = ("import json,os,sys\nfor n,d in json.load(sys.stdin).items():\n p=os.path.join(sys.argv[1],n)\n"
             " os.makedirs(os.path.dirname(p),exist_ok=True)\n open(p,'wb').write(bytes.fromhex(d))\n")
    DIGEST = ("import hashlib,json,os,sys\nr={}\nfor n in json.load(sys.stdin):\n try:\n"
              "  r[n]=hashlib.sha256(open(os.path.join(sys.argv[1],n),'rb').read()).hexdigest()\n"
              " except IOError:\n  r[n]=None\nprint(json.dumps(r))\n")

    def __init__(self):
        import mdp_fleet
        fleet = mdp_fleet.load()
        self.hosts = list(fleet.hosts[:3])
        self.names = [h.ip for h in self.hosts]
        bin_dir = Path(sys.executable).parent
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
        subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(fleet.inventory), "playbooks/cluster.yml",
                        "-e", "mdp_cluster_hosts=" + ":".join(h.name for h in self.hosts),
                        "-e", f"mdp_cluster_folder={FOLDER}"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)

    def _python(self, index, script, payload):
        host = self.hosts[index]
        command = f"python3 -c {shlex.quote(script)} {shlex.quote(FOLDER)}"
        result = subprocess.run([*host.ssh_args, command], input=json.dumps(payload), capture_output=True,
                                text=True, check=True, timeout=120)
        return result.stdout

    def write(self, index, files):
        self._python(index, self.WRITE, {name: data.hex() for name, data in files.items()})

    def digests(self, index, names):
        return json.loads(self._python(index, self.DIGEST, list(names)))

    def close(self):
        pass


def reach_everywhere(machines, files: dict[str, bytes]) -> float:
    """Seconds from the writer (machine 0) having files on disk until every other machine has them."""
    want = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    machines.write(0, files)
    start = time.monotonic()
    for index in range(1, len(machines.names)):
        _wait(lambda i=index: machines.digests(i, want) == want, f"{len(files)} file(s) on {machines.names[index]}")
    return time.monotonic() - start


def run(fleet=False, rounds=5, small_files=1000, small_size=1024):
    machines = FleetMachines() if fleet else LocalMachines()
    try:
        tag = uuid.uuid4().hex[:8]
        one = [reach_everywhere(machines, {f"{tag}/one-{r}.bin": os.urandom(1024 * 1024)}) for r in range(rounds)]
        many = reach_everywhere(machines, {f"{tag}/many/{i:04d}.txt": os.urandom(small_size)
                                           for i in range(small_files)})
    finally:
        machines.close()
    return {"where": "fleet (3 hosts, 1.12/1.19/1.29)" if fleet else "loopback (3 Syncthing 1.19)",
            "one_mb_s": {"median": statistics.median(one), "min": min(one), "max": max(one), "rounds": rounds},
            "small_files_s": many, "small_files": small_files, "small_size": small_size}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", action="store_true", help="use the booted fleet instead of loopback instances")
    parser.add_argument("--rounds", type=int, default=5, help="1 MB files to time (default 5)")
    parser.add_argument("--small-files", type=int, default=1000, help="files in the batch (default 1000)")
    args = parser.parse_args()
    result = run(args.fleet, args.rounds, args.small_files)
    one = result["one_mb_s"]
    print(f"cluster sync on {result['where']}:")
    print(f"  one 1 MB file to every machine: median {one['median']:.2f} s "
          f"(min {one['min']:.2f}, max {one['max']:.2f}, {one['rounds']} rounds; target < 5 s)")
    print(f"  {result['small_files']} files of {result['small_size']} B to every machine: {result['small_files_s']:.2f} s")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
