"""Real Syncthing instances on loopback addresses, each driven by its own ClusterManager.

Each node is one machine as the agent sees it: a Syncthing home prepared by the role's own setup
script (mdp.core.cluster's files/mdp_syncthing_setup.py), the sync port 22000 and the API on its
own 127.x address, and a ClusterManager whose folder_root keeps its synced tree apart from the
other nodes' (on real machines every node uses the same path). Used by tests/cluster and
bench/bench_cluster.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mdp_agent import syncthing
from mdp_agent.cluster import ClusterManager, folder_id

ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = ROOT / "collections/ansible_collections/mdp/core/roles/cluster/files/mdp_syncthing_setup.py"
SYNCTHING = shutil.which("syncthing") or "/usr/bin/syncthing"
API_PORT = 8384


def wait_for(condition, timeout, what, interval=0.1):
    """Poll condition() until it returns a truthy value; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a condition may fail while things start
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


class Node:
    def __init__(self, base: Path, ip: str):
        self.ip = ip
        self.base = base / ip
        self.home = self.base / "syncthing"
        self.key_file = self.base / "syncthing-api-key"
        self.state_dir = self.base / "agent-state"
        self.root = self.base / "root"          # this node's "/" for synced folders
        self.proc = None
        self.log = None
        self.base.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(SETUP_SCRIPT), "--home", str(self.home),
                        "--listen", f"tcp://{ip}:22000", "--gui-address", f"{ip}:{API_PORT}",
                        "--api-key-file", str(self.key_file), "--reconnect-s", "5",
                        "--syncthing", SYNCTHING], check=True, capture_output=True, timeout=120)
        self.manager = self.new_manager()

    def new_manager(self) -> ClusterManager:
        """A fresh ClusterManager on the same state dir, as after an agent restart."""
        return ClusterManager(str(self.state_dir), {
            "syncthing_api": f"http://{self.ip}:{API_PORT}",
            "syncthing_api_key_file": str(self.key_file),
            "syncthing_config": str(self.home / "config.xml"),
            "folder_root": str(self.root),
            "reconnect_s": "5",
        })

    @property
    def api(self) -> syncthing.Syncthing:
        return syncthing.Syncthing(f"http://{self.ip}:{API_PORT}", self.key_file.read_text().strip())

    def start(self):
        env = dict(os.environ, STNOUPGRADE="1", STNODEFAULTFOLDER="1", HOME=str(self.base))
        if os.environ.get("MDP_STTRACE"):
            env["STTRACE"] = os.environ["MDP_STTRACE"]
        self.log = open(self.base / "syncthing.log", "ab")  # noqa: SIM115 - open while Syncthing runs
        self.proc = subprocess.Popen([SYNCTHING, f"-home={self.home}", "-no-browser", "-no-restart"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        wait_for(lambda: self._alive() and self.api.my_id(), 60, f"Syncthing on {self.ip} to answer")
        return self

    def _alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"Syncthing on {self.ip} exited with {self.proc.returncode}; "
                               f"see {self.base / 'syncthing.log'}")
        return True

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log:
            self.log.close()
            self.log = None

    def restart(self):
        self.stop()
        return self.start()

    @property
    def device_id(self) -> str:
        return syncthing.device_id_from_cert(str(self.home / "cert.pem"))

    def path(self, folder: str, name: str = "") -> Path:
        return self.root / folder.lstrip("/") / name

    def folder_state(self, folder: str) -> dict:
        return self.api.folder_status(folder_id(folder))

    def connected_to(self, other: Node) -> bool:
        return bool(self.api.connections().get(other.device_id, {}).get("connected"))


def seed_request(nodes, folder):
    """The seed's cluster_info, exactly as written (no identities)."""
    return {"cluster_machines": [n.ip for n in nodes],
            "cluster_mode": [{"name": "sync_folders", "folder": folder}]}


def activate(nodes, folder):
    """What the controller does: collect identities, then hand everyone the full cluster_info."""
    identities = {n.ip: n.manager.identity()["device_id"] for n in nodes}
    request = dict(seed_request(nodes, folder), cluster_devices=identities)
    return {n.ip: n.manager.handle(request, n.ip) for n in nodes}


def read_or_none(path: Path):
    try:
        return path.read_bytes()
    except OSError:
        return None
