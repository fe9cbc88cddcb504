"""Suite-wide rule: under CI=true, a skipped fleet, cluster or Ansible test fails the run.

Those tests skip for reasons of the machine (no root, MDP_FLEET=0, a missing tool), which is right
on a developer's laptop and wrong in CI: there a skip would hide that the claim was never checked.
Also loaded by the agent's old-Python run (tests/agent on 3.6), so: Python 3.6, pytest 7.0.
"""

import os

import pytest

# Folders under tests/ whose skips are failures in CI, and the marker that means the same anywhere.
STRICT_FOLDERS = ("fleet", "cluster", "ansible")
STRICT_MARKER = "fleet"
HERE = os.path.dirname(os.path.abspath(__file__))


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def must_run(item):
    relative = os.path.relpath(str(item.fspath), HERE)
    return relative.split(os.sep)[0] in STRICT_FOLDERS or item.get_closest_marker(STRICT_MARKER) is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci() and must_run(item)) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where this test must run: {reason}"
