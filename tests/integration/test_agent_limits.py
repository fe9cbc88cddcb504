"""The upstart job's memory cap on a real agent process: `limit as` (RLIMIT_AS) at the role's default.

Upstart cannot run here; what its `limit as N N` stanza does is setrlimit(RLIMIT_AS) before exec,
which `prlimit --as=N:N -- python ...` does the same way, so the agent below runs under exactly the
limit an Ubuntu 14.04 host gives it. The value is read from the role's defaults: the agent must
start, run its workers and answer under it, and a runaway allocation must fail inside the operation
(MemoryError, an error reply) while the agent goes on answering.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from .harness import PYTHON, REPO, write_config

DEFAULTS = REPO / "collections" / "ansible_collections" / "mdp" / "core" / "roles" / "agent" / "defaults" / "main.yml"
SITE = '''
def hog(mib=64):
    """Allocate and touch mib MiB, then free it.

    mib: MiB to allocate. Returns the bytes allocated.
    """
    return len(b"x" * (int(mib) << 20))
'''


@pytest.mark.skipif(not shutil.which("prlimit"), reason="prlimit (util-linux) is not installed")
def test_the_upstart_address_space_limit_stops_a_runaway_allocation_not_the_agent(spawn_agent, tmp_path):
    limit = yaml.safe_load(DEFAULTS.read_text())["mdp_agent_address_space_max"]
    python = tmp_path / "python-limited"
    python.write_text(f'#!/bin/sh\nexec prlimit --as={limit}:{limit} -- {PYTHON} "$@"\n')
    python.chmod(0o755)
    site = tmp_path / "operations.d"
    site.mkdir()
    (site / "limits.py").write_text(SITE)
    agent = spawn_agent("127.0.0.3", config=write_config(tmp_path / "agent.conf", operations_dir=str(site)),
                        python=str(python))
    with open(f"/proc/{agent.pid}/limits") as handle:
        assert any(line.startswith("Max address space") and str(limit) in line for line in handle)
    # Normal work under the limit: the workers run operations side by side, and 64 MiB is no runaway.
    reply = agent.request(["memory.info", "load.avg", "system.uptime", {"name": "limits.hog", "args": {"mib": 64}}])
    assert all(op.get("error") is None for op in reply["operations"]), reply
    assert reply["operations"][3]["result"] == 64 << 20
    runaway = limit * 2 >> 20   # twice the whole address space allowed, in MiB
    reply = agent.request([{"name": "limits.hog", "args": {"mib": runaway}}], timeout=15)
    error = reply["operations"][0]["error"]
    print("runaway allocation answered:", error)
    assert error is not None and "MemoryError" in (error["message"] + error["code"]), reply
    assert agent.running() and agent.result("ping")["reply"] == "pong"
