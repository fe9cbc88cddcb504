"""Fixtures: real agent and monitor processes on 127.0.0.x, one random port per session, all killed afterwards."""

from __future__ import annotations

import pytest

from .harness import Agent, Monitor, free_port


@pytest.fixture(scope="session")
def port() -> int:
    return free_port()


@pytest.fixture
def known_machines(tmp_path):
    """The controller's key store for this test (the monitor gets its own where a test needs that)."""
    return tmp_path / "known_machines"


@pytest.fixture
def spawn_agent(tmp_path, port, known_machines):
    """spawn_agent(ip, config=None, flags=(), trust=True) -> a started Agent whose key the controller trusts."""
    agents: list[Agent] = []

    def spawn(ip, config=None, flags=(), trust=True, state_dir=None, umask=-1, python=None) -> Agent:
        agent = Agent(tmp_path, ip, port, known_machines, config=config, flags=flags, state_dir=state_dir,
                      python=python)
        agents.append(agent)
        agent.start(umask=umask)
        return agent.trust() if trust else agent

    yield spawn
    for agent in agents:
        agent.kill()


@pytest.fixture
def spawn_monitor(tmp_path, port):
    """spawn_monitor(known_machines, accept_new=False) -> a started `mdp monitor` on 127.0.0.1."""
    monitors: list[Monitor] = []

    def spawn(known_machines, accept_new=False, umask=-1) -> Monitor:
        monitor = Monitor(tmp_path, port, known_machines, accept_new)
        monitors.append(monitor)
        return monitor.start(umask=umask)

    yield spawn
    for monitor in monitors:
        monitor.kill()

