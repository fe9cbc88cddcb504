# Copyright: MDP contributors
# MIT License (see galaxy.yml)
"""Action plugin for mdp.core.mdp_send: runs on the controller, nothing is shipped to the host.

The agent is reached over signed UDP, not SSH, so the whole job is done here with the controller
library (mdp_controller.client.send_sync): sign, send, retry, verify the reply.
"""

from __future__ import annotations

import asyncio
import os

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

try:
    from mdp_agent import protocol
    from mdp_agent.registry import load_default_registry
    from mdp_controller import cluster as mdp_cluster
    from mdp_controller.client import send_many, send_sync
except ImportError as exc:  # reported when the task runs, so that ansible-doc and sanity still load us
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None

# Kept in step with DOCUMENTATION in plugins/modules/mdp_send.py (a unit test compares the two).
ARGUMENT_SPEC = {
    "operations": {"type": "list", "elements": "raw", "default": []},
    "cluster_info": {"type": "dict"},
    "port": {"type": "int", "default": 12345},
    "timeout": {"type": "float", "default": 15.0},
    "known_machines": {"type": "path"},
}


def default_known_machines():
    """Same place the mdp CLI and the mdp_agent role use: $MDP_KNOWN_MACHINES, else beside ansible.cfg."""
    env = os.environ.get("MDP_KNOWN_MACHINES")
    if env:
        return env
    base = os.path.dirname(C.CONFIG_FILE) if C.CONFIG_FILE else os.getcwd()
    return os.path.join(base, ".known_machines")


def parse_operations(operations, cluster_info=None):
    """Check each operation with the protocol's own parser, so a typo fails here with its cause."""
    if not operations and not cluster_info:
        raise AnsibleActionFail("operations is empty: name at least one operation, e.g. ping (or give cluster_info)")
    operations = [op.strip() if isinstance(op, str) else op for op in operations]
    for index, op in enumerate(operations):
        try:
            protocol.parse_operation(op)
        except ValueError as exc:
            raise AnsibleActionFail("operations[%d]: %s" % (index, exc))
    return operations


def mutating_operations(operations):
    """Requested operations that change the host or the agent's own state (report.subscribe...),
    as the agent's own registry marks them: check mode sends none of them."""
    changing = {op["name"] for op in load_default_registry(enable_mutating=True).describe()
                if op["mutating"] or op.get("changes_state")}
    return [name for name in (protocol.parse_operation(op)[0] for op in operations) if name in changing]


def describe_failure(reply):
    """The cause in words: the whole request refused, or which operations failed and why."""
    if reply.get("error"):
        return str(reply["error"])
    causes = []
    for op in reply.get("operations") or []:
        error = op.get("error") if isinstance(op, dict) else None
        if error:
            if isinstance(error, dict):
                error = "%s: %s" % (error.get("code", "error"), error.get("message", ""))
            causes.append("%s (%s)" % (op.get("name", "?"), error))
    cluster_error = (reply.get("cluster_info") or {}).get("error")
    if cluster_error:
        causes.append("cluster_info (%s)" % (cluster_error,))
    return "failed on the agent: " + "; ".join(causes) if causes else "agent answered status false"


def with_identities(cluster_info, known_machines, port, timeout):
    """The seed's cluster_info plus cluster_devices: each listed machine's Syncthing identity, asked
    for by the controller (docs/cluster.md). Machines that do not answer are left out; the agents
    report them under missing_identities."""
    machines = cluster_info.get("cluster_machines")
    if not isinstance(machines, list):
        return cluster_info   # the agent refuses it with the precise reason
    found = asyncio.run(mdp_cluster.identities(send_many, [str(m) for m in machines],
                                               known_machines=known_machines, port=port, timeout=timeout))
    devices = {ip: v["device_id"] for ip, v in found.items() if "device_id" in v}
    return dict(cluster_info, cluster_devices=devices)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        try:
            result.update(self._send(task_vars or {}))
        except AnsibleActionFail as exc:  # a failed result with its cause, not a traceback
            result.update(exc.result)
            result.pop("exception", None)  # the cause is in msg; a traceback would only hide it
        return result

    def _send(self, task_vars):
        result = {}
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]

        if IMPORT_ERROR is not None:
            raise AnsibleActionFail(
                "mdp_send needs the MDP controller library on the controller (pip install the project): %s"
                % to_text(IMPORT_ERROR)
            )

        cluster_info = args["cluster_info"]
        operations = parse_operations(args["operations"], cluster_info)
        if self._task.check_mode:
            if cluster_info and cluster_info.get("cluster_mode"):
                result.update(skipped=True, msg="check mode: not sending cluster_info with cluster_mode (it changes the host)")
                return result
            changing = mutating_operations(operations)
            if changing:
                result.update(skipped=True, msg="check mode: not sending operations that change the host: %s"
                              % ", ".join(changing))
                return result

        target = to_text(self._templar.template(task_vars.get("ansible_host") or task_vars["inventory_hostname"]))
        known_machines = args["known_machines"] or default_known_machines()
        where = "%s:%d" % (target, args["port"])
        try:
            if cluster_info and cluster_info.get("cluster_mode") and "cluster_devices" not in cluster_info:
                cluster_info = with_identities(cluster_info, known_machines, args["port"], args["timeout"])
            replies = send_sync(
                [target],
                operations,
                cluster_info,
                known_machines=known_machines,
                port=args["port"],
                timeout=args["timeout"],
            )
        except OSError as exc:  # e.g. an unreadable key directory, no route to the host
            raise AnsibleActionFail("mdp_send to %s: %s" % (where, to_text(exc)))

        reply = replies.get(target)
        if not isinstance(reply, dict):
            raise AnsibleActionFail("mdp_send to %s: the controller library returned no reply for it" % where)
        if not reply.get("status"):
            raise AnsibleActionFail("mdp_send to %s: %s" % (where, describe_failure(reply)))

        answered_cluster = reply.get("cluster_info") or {}
        result.update(
            # Operations only read; a cluster_info reply says itself whether it changed the host.
            changed=bool(answered_cluster.get("changed")),
            status=True,
            version=reply.get("version"),
            operations=reply.get("operations", []),
            cluster_info=answered_cluster,
        )
        return result
