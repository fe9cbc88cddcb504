# Copyright: MDP contributors
# MIT License (see galaxy.yml)
"""Unit tests of the mdp_send action plugin that need no agent.

A real agent answering real signed requests is tested from the project (tests/ansible/); these run
under ansible-test, whose venv has ansible-core but not necessarily the MDP controller library.
"""

from __future__ import annotations

import pytest
import yaml

from ansible.errors import AnsibleActionFail

from ansible_collections.mdp.core.plugins.action import mdp_send as action
from ansible_collections.mdp.core.plugins.modules import mdp_send as module


def test_argument_spec_matches_the_documentation():
    options = yaml.safe_load(module.DOCUMENTATION)["options"]
    assert set(options) == set(action.ARGUMENT_SPEC)
    for name, spec in action.ARGUMENT_SPEC.items():
        doc = options[name]
        assert doc["type"] == spec["type"], name
        assert doc.get("required", False) == spec.get("required", False), name
        assert doc.get("default") == spec.get("default"), name
        assert doc.get("elements") == spec.get("elements"), name


def test_whole_request_refusal_is_reported_as_is():
    reply = {"status": False, "error": "bad signature: 10.0.0.5 says mac mismatch"}
    assert action.describe_failure(reply) == "bad signature: 10.0.0.5 says mac mismatch"


def test_failed_operations_are_named_with_their_cause():
    reply = {
        "status": False,
        "operations": [
            {"name": "ping", "result": {"reply": "pong"}},
            {"name": "nope", "error": {"code": "unknown_operation", "message": "no operation named nope"}},
            {"name": "disk.io", "error": "timed out"},
        ],
    }
    assert action.describe_failure(reply) == (
        "failed on the agent: nope (unknown_operation: no operation named nope); disk.io (timed out)"
    )


def test_status_false_without_a_cause_still_says_so():
    assert action.describe_failure({"status": False}) == "agent answered status false"


def test_known_machines_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MDP_KNOWN_MACHINES", str(tmp_path))
    assert action.default_known_machines() == str(tmp_path)
    monkeypatch.delenv("MDP_KNOWN_MACHINES")
    assert action.default_known_machines().endswith(".known_machines")


@pytest.mark.skipif(action.IMPORT_ERROR is not None, reason="the MDP controller library is not importable here")
@pytest.mark.parametrize(
    "operations, cause",
    [
        ([], "operations is empty"),
        ([{"name": "ping", "argz": {}}], "unknown field(s) argz"),
        ([{"name": "ping", "args": [1]}], "args of 'ping' must be an object"),
        ([42], "an operation is a name or an object"),
    ],
)
def test_bad_operations_fail_with_their_cause(operations, cause):
    with pytest.raises(AnsibleActionFail) as info:
        action.parse_operations(operations)
    assert cause in str(info.value)
