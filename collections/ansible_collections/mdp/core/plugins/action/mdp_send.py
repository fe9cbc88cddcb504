# Copyright: MDP contributors
# MIT License (see galaxy.yml)
"""Action plugin for mdp.core.mdp_send: runs on the controller, nothing is shipped to the host.

The agent is reached over signed UDP, not SSH, so the whole job is done here with the controller
library (mdp_controller.client.send_sync): sign, send, retry, verify the reply.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import tempfile
import time
from stat import S_IMODE as stat_mode

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


# cluster_info fields that change the host: joining (the seed's cluster_mode) and leaving.
CLUSTER_CHANGES = ("cluster_mode", "cluster_leave")


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
        error = reply["error"]
        return "%s: %s" % (error.get("code"), error.get("message")) if isinstance(error, dict) else str(error)
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


# An activation outcome outlives its run by this much, then the next activation removes it.
OUTCOME_KEPT_S = 86400


def ansible_run_id():
    """The ansible process this task's worker was forked from (pid and start time, so a reused pid
    is another run): every host's task of one run shares it."""
    parent = os.getppid()
    try:
        with open("/proc/%d/stat" % parent) as stat:
            started = stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "unknown"
    return "%d-%s" % (parent, started)


def activate_once(task_id, cluster_info, known_machines, port, timeout):
    """The library's activation (mdp_controller.cluster.activate_message: identities once, then the
    cluster_info to every machine), done by the first host's task of this run; the other hosts' tasks
    wait for it and read its outcome. So N hosts cost 2N requests, not N identity rounds of N each.
    The outcome is kept in a 0700 directory of this user, named by run, task and arguments."""
    directory = os.path.join(tempfile.gettempdir(), "mdp-cluster-activation-%d" % os.getuid())
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if info.st_uid != os.getuid() or stat_mode(info.st_mode) != 0o700 or not os.path.isdir(directory):
        raise AnsibleActionFail("%s must be a directory of this user with mode 0700" % directory)
    for name in os.listdir(directory):   # outcomes of runs long over
        try:
            if os.lstat(os.path.join(directory, name)).st_mtime < time.time() - OUTCOME_KEPT_S:
                os.unlink(os.path.join(directory, name))
        except FileNotFoundError:   # another host's task removed it first
            pass
    key = json.dumps([ansible_run_id(), task_id, cluster_info, known_machines, port], sort_keys=True)
    path = os.path.join(directory, hashlib.sha256(key.encode()).hexdigest() + ".json")
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # the other hosts' tasks wait here for the first
        if os.path.exists(path):
            with open(path) as saved:
                return json.load(saved)
        outcome = asyncio.run(mdp_cluster.activate_message(send_many, cluster_info, known_machines=known_machines,
                                                           port=port, timeout=timeout))
        with open(path + ".tmp", "w") as saved:
            json.dump(outcome, saved)
        os.replace(path + ".tmp", path)
    return outcome


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
            # Said here, not left to exc.result: on newer ansible-core (2.21 here) that dict no longer
            # carries failed/msg (the exception adds them only when it propagates), so a failure passed.
            result.update(failed=True, msg=to_text(exc.message))
            result.pop("exception", None)  # the cause is in msg; a traceback would only hide it
        return result

    def _send(self, task_vars):
        result = {}
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        if not 1 <= args["port"] <= 65535:
            raise AnsibleActionFail("port must be 1-65535, not %d" % args["port"])
        if not args["timeout"] > 0:
            raise AnsibleActionFail("timeout must be more than 0 seconds, not %g" % args["timeout"])

        if IMPORT_ERROR is not None:
            raise AnsibleActionFail(
                "mdp_send needs the MDP controller library on the controller (pip install the project): %s"
                % to_text(IMPORT_ERROR)
            )

        cluster_info = args["cluster_info"]
        operations = parse_operations(args["operations"], cluster_info)
        if self._task.check_mode:
            changes_cluster = [k for k in CLUSTER_CHANGES if (cluster_info or {}).get(k)]
            if changes_cluster:
                result.update(skipped=True, msg="check mode: not sending cluster_info with %s (it changes the host)"
                              % " and ".join(changes_cluster))
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
            if (cluster_info and cluster_info.get("cluster_mode") and "cluster_devices" not in cluster_info
                    and isinstance(cluster_info.get("cluster_machines"), list)):
                return self._activate(target, where, operations, cluster_info, known_machines, args)
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

        return self._answer(reply)

    def _activate(self, target, where, operations, cluster_info, known_machines, args):
        """The seed's message without identities: the cluster is activated once for every host's task."""
        if operations:
            raise AnsibleActionFail("cluster_info with cluster_mode activates the cluster by itself: "
                                    "send operations in a task of their own")
        outcome = activate_once(self._task._uuid, cluster_info, known_machines, args["port"], args["timeout"])
        machine = outcome["machines"].get(target)
        if machine is None:   # a host outside cluster_machines: the agent says what it makes of that
            reply = send_sync([target], [], dict(cluster_info, cluster_devices=outcome["devices"]),
                              known_machines=known_machines, port=args["port"], timeout=args["timeout"])[target]
            if not reply.get("status"):
                raise AnsibleActionFail("mdp_send to %s: %s" % (where, describe_failure(reply)))
            return self._answer(reply)
        if not machine["ok"]:
            raise AnsibleActionFail("mdp_send to %s: %s" % (where, machine["error"]))
        return self._answer({"status": True, "cluster_info": machine["cluster_info"]})

    @staticmethod
    def _answer(reply):
        """The task result of a reply with status true."""
        result = {}
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
