"""Helpers for the Ansible side's tests: ansible commands run from the project root as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def ansible_env(known_machines: Path | None = None, **extra) -> dict:
    """The environment of an operator in the project root: this venv first, ansible.cfg found by cwd."""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PYTHONDONTWRITEBYTECODE="1")
    env.pop("ANSIBLE_CONFIG", None)
    if known_machines is not None:
        env["MDP_KNOWN_MACHINES"] = str(known_machines)
    env.update(extra)
    return env


def run(argv, *, known_machines=None, timeout=900, **extra) -> subprocess.CompletedProcess:
    """Run an ansible command from the project root; stdout+stderr captured as text."""
    return subprocess.run([str(a) for a in argv], cwd=REPO, env=ansible_env(known_machines, **extra),
                          capture_output=True, text=True, timeout=timeout)


def run_tree(argv, tree: Path, *, known_machines=None, timeout=900) -> tuple[subprocess.CompletedProcess, dict]:
    """Run with ansible-core's tree callback: returns the process and {host: its last task result}."""
    result = run(argv, known_machines=known_machines, timeout=timeout, ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
                 ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree", ANSIBLE_CALLBACK_TREE_DIR=str(tree))
    last = {p.name: json.loads(p.read_text()) for p in tree.iterdir()} if tree.is_dir() else {}
    return result, last


def deploy(fleet, known_machines, tmp_path: Path, *, timeout=1500, **extra_vars) -> subprocess.CompletedProcess:
    """deploy.yml on the booted fleet with extra vars (a JSON vars file keeps their types); asserts it succeeded."""
    vars_file = tmp_path / ("vars-%d.json" % time.monotonic_ns())
    vars_file.write_text(json.dumps(extra_vars))
    result = run(["ansible-playbook", "-i", fleet.inventory, "deploy.yml", "-e", f"@{vars_file}"], timeout=timeout,
                 known_machines=known_machines)
    assert result.returncode == 0, result.stdout[-6000:]
    return result
