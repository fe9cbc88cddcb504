#!/usr/bin/python
# Copyright: MDP contributors
# MIT License (see galaxy.yml)
# Documentation only: the work is done on the controller by plugins/action/mdp_send.py.

from __future__ import absolute_import, division, print_function

# ansible-core 2.16 still checks modules for Python 2 boilerplate.
__metaclass__ = type

DOCUMENTATION = r"""
---
module: mdp_send
short_description: Run operations on an MDP agent over signed UDP
version_added: "0.1.0"
description:
  - Sends a signed request to the MDP agent of each targeted host and returns its verified reply.
  - Runs entirely on the controller with the MDP controller library; no module is copied to the host
    and no SSH connection is made. The host is reached at its C(ansible_host) (else its inventory name).
  - The key for a host is read from O(known_machines)C(/<address>.txt), written there by the
    C(mdp_agent) role when it deployed the agent.
  - Fails with the cause when there is no key, the agent does not answer in time, the reply's signature
    is bad, the agent answers status false, or any operation fails on the agent.
options:
  operations:
    description:
      - Operations to run, in order. Each is a name such as V(ping) or V(load.avg), or a mapping
        with C(name) and C(args).
      - A comma-separated string is split into names, which suits ad-hoc use.
      - May be empty when O(cluster_info) is given; at least one of the two is required.
    type: list
    elements: raw
    default: []
  cluster_info:
    description:
      - Cluster settings passed to the agent as they are (see the cluster documentation), for example the
        seed's message with C(cluster_machines) and C(cluster_mode) (a list of C(name=sync_folders) and C(folder)).
      - When it has C(cluster_mode) but no C(cluster_devices), the cluster is activated as the controller
        library does it (C(mdp cluster activate)), once for all the hosts of the task in this run; every
        machine of C(cluster_machines) is asked for its Syncthing identity (C(cluster.identity)), then sent
        the seed's fields plus C(cluster_devices), so the seed's message works as written. Each host's
        result is its own machine's answer. O(operations) must then be empty.
      - In check mode a O(cluster_info) with C(cluster_mode) or C(cluster_leave) is not sent and the task
        is skipped.
    type: dict
  port:
    description: UDP port the agent listens on, 1-65535.
    type: int
    default: 12345
  timeout:
    description: Seconds to wait for a verified reply, retries included; more than 0.
    type: float
    default: 15.0
  known_machines:
    description:
      - Directory holding one key file per agent address.
      - Defaults to E(MDP_KNOWN_MACHINES), else C(.known_machines) beside the C(ansible.cfg) in use.
    type: path
attributes:
  check_mode:
    support: full
    description:
      - Operations that only read run in check mode. Operations the agent's registry marks as
        mutating, and a O(cluster_info) with C(cluster_mode) or C(cluster_leave), are not sent;
        the task is skipped.
  diff_mode:
    support: none
    description: Nothing on the host is compared or changed.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller; the target only needs the MDP agent listening on UDP.
author:
  - MDP contributors (@mdp-project)
notes:
  - Needs the C(mdp) Python distribution (the controller library) importable by the controller's Python.
"""

EXAMPLES = r"""
- name: Ask every agent for its load
  mdp.core.mdp_send:
    operations:
      - ping
      - load.avg

- name: Operation with arguments, longer timeout
  mdp.core.mdp_send:
    operations:
      - name: filesystem.usage
        args:
          path: /
    timeout: 30
  register: usage

# Ad hoc, from the project root:
#   ansible mdp_agents -m mdp_send -a 'operations=ping,memory.info'

# The seed's cluster activation, as written (identities are gathered by the controller):
#   ansible mdp_agents -m mdp_send -a '{"cluster_info": {"cluster_machines": ["192.168.33.10", "192.168.33.15"],
#                                       "cluster_mode": [{"name": "sync_folders", "folder": "/uploaded_files"}]}}'
"""

RETURN = r"""
status:
  description: The agent's overall status (always true when the task did not fail).
  returned: success
  type: bool
  sample: true
version:
  description: The agent's version.
  returned: success
  type: str
  sample: 0.1.0
operations:
  description: One result per requested operation, in order, as the agent returned them.
  returned: success
  type: list
  elements: dict
  sample: [{"name": "ping", "status": true, "result": "pong"}]
cluster_info:
  description: The agent's cluster information, as returned.
  returned: success
  type: dict
  sample: {}
"""
