"""Fixtures for cluster tests on real Syncthing instances (loopback addresses 127.0.40.x)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/role_render.py

import harness  # noqa: E402
from mdp_fleet import fleet  # noqa: E402,F401  (the session-scoped booted test fleet)


def _ensure_syncthing():
    """Syncthing is a Debian package; install it when we may (root with apt), else skip."""
    if shutil.which("syncthing"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        result = subprocess.run(["apt-get", "install", "-y", "-q", "syncthing"], env=env,
                                capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
            subprocess.run(["apt-get", "install", "-y", "-q", "syncthing"], env=env,
                           capture_output=True, timeout=600, check=False)
    if not shutil.which("syncthing"):
        pytest.skip("syncthing is not installed (apt-get install syncthing)")
    harness.SYNCTHING = shutil.which("syncthing")


@pytest.fixture(scope="session")
def syncthing_installed():
    _ensure_syncthing()


@pytest.fixture
def node_factory(tmp_path, syncthing_installed):
    """Makes started nodes on 127.0.40.x for one test; all are stopped afterwards."""
    nodes = []

    def make(index):
        node = harness.Node(tmp_path, f"127.0.40.{index}").start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
