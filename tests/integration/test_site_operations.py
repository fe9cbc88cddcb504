"""Site operations in a real agent process: loaded from operations_dir at start, reloaded on SIGHUP,
failures logged and counted in agent.stats; the mutating switch refuses service control with its reason."""

from __future__ import annotations

import signal

import pytest

from .harness import OLDEST_PYTHON, wait_for, write_config

SITE = '''
def depth(queue="mail"):
    """Messages waiting in a site queue.

    queue: which one. Returns {"queue", "depth"}.
    """
    return {"queue": queue, "depth": DEPTH}

DEPTH = 7
'''


def test_site_modules_load_reload_on_sighup_and_failures_are_counted(spawn_agent, tmp_path):
    site = tmp_path / "operations.d"
    site.mkdir()
    (site / "queue.py").write_text(SITE)
    (site / "broken.py").write_text("raise RuntimeError('the site database is down')\n")
    config = write_config(tmp_path / "agent.conf", operations_dir=str(site))
    agent = spawn_agent("127.0.0.2", config=config)
    assert agent.result({"name": "queue.depth", "args": {"queue": "print"}}) == {"queue": "print", "depth": 7}
    stats = agent.stats()["site_modules"]
    assert stats == {"loaded": ["queue.py"], "failed": {"broken.py": "RuntimeError: the site database is down"},
                     "failed_count": 1}
    assert "site operations: not loading broken.py: RuntimeError: the site database is down" in agent.log()
    assert agent.result("system.ping")["reply"] == "pong"   # the agent and the built-ins are unharmed

    (site / "queue.py").write_text(SITE.replace("DEPTH = 7", "DEPTH = 8"))
    (site / "broken.py").unlink()
    (site / "extra.py").write_text('def hi():\n    """Hi."""\n    return "hi"\n')
    agent.signal(signal.SIGHUP)
    wait_for(lambda: agent.result("queue.depth")["depth"] == 8, "the changed module after SIGHUP")
    assert agent.result("extra.hi") == "hi"
    assert agent.stats()["site_modules"] == {"loaded": ["extra.py", "queue.py"], "failed": {}, "failed_count": 0}


def test_service_control_is_refused_with_the_reason_unless_enabled(spawn_agent, tmp_path):
    agent = spawn_agent("127.0.0.2", config=write_config(tmp_path / "agent.conf", enable_mutating="false"))
    error = agent.request([{"name": "service.restart", "args": {"name": "cron"}}])["operations"][0]["error"]
    assert error == {"code": "not_allowed",
                     "message": "service.restart changes the machine and mutating operations are disabled"}
    methods = {m["name"]: m for m in agent.result("get_available_methods")}
    assert "service.restart" not in methods
    assert methods["report.subscribe"]["changes_state"] is True and methods["report.subscribe"]["mutating"] is False


@pytest.mark.skipif(OLDEST_PYTHON is None, reason="no older Python (pyenv 3.6) on this machine")
def test_the_oldest_python_loads_site_modules_too(spawn_agent, tmp_path):
    site = tmp_path / "operations.d"
    site.mkdir()
    (site / "queue.py").write_text(SITE)
    agent = spawn_agent("127.0.0.3", config=write_config(tmp_path / "agent.conf", operations_dir=str(site)),
                        python=OLDEST_PYTHON)
    assert agent.result("queue.depth") == {"queue": "mail", "depth": 7}
