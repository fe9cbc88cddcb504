# Copyright: MDP contributors
# MIT License (see galaxy.yml)
"""Inventory plugin mdp.core.mdp: the machines of an MDP key store, with what the monitor knows of them."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: mdp
short_description: Machines of an MDP key store, with the monitor's latest facts
version_added: "0.1.0"
description:
  - One host per machine in the key store O(known_machines), named by its IP address as the key
    file is (C(<ip>.txt)). Machines whose key is trusted are in the group C(mdp_agents); machines
    that offered a key that still waits for C(mdp keys accept IP) are in C(mdp_pending) only, so
    a play on C(mdp_agents) never targets a machine that cannot be sent to. Rejected keys are left out.
  - With O(database), the monitor's SQLite database (C(mdp monitor --db)) adds hostvars, read through
    a read-only connection, so the inventory can run beside a monitor that is writing
    (C(mdp_last_seen), C(mdp_reports), C(mdp_last_report_ok), C(mdp_status), C(mdp_load),
    C(mdp_agent_version), C(mdp_os)) and the groups C(mdp_up) (a report within O(stale_after) seconds)
    and C(mdp_stale) (no report within it, or none ever).
  - C(mdp_agent_version) and C(mdp_os) come from the newest C(system.info) a machine reported; agents
    report it when it is in their C(report_operations) (the C(mdp_agent_report_operations) role variable).
    C(mdp_load) comes from the newest C(load.avg), which agents report by default.
  - The file given with C(-i) must be YAML whose name ends in C(mdp.yml) or C(mdp.yaml).
  - With O(cache), the hosts and hostvars of one run are kept by Ansible's inventory cache plugin;
    C(mdp_status) and the status groups then say what was true when they were cached.
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; it makes Ansible use it for this file.
    type: str
    required: true
    choices: [mdp.core.mdp]
  known_machines:
    description:
      - The key store directory (C(<ip>.txt) trusted, C(pending/<ip>.txt) waiting for acceptance).
      - A relative path is taken from the directory of this inventory file.
      - When neither this nor E(MDP_KNOWN_MACHINES) is set, C(.known_machines) beside C(ansible.cfg)
        (else in the current directory), where the C(mdp_agent) role and C(mdp_send) keep keys.
    type: str
    env:
      - name: MDP_KNOWN_MACHINES
  database:
    description:
      - The monitor's SQLite database. When set, it must exist; when not set, hosts carry only
        C(mdp_key_state) and no status groups are made.
      - A relative path is taken from the directory of this inventory file.
    type: str
  stale_after:
    description:
      - A machine whose newest report is older than this many seconds is in C(mdp_stale), not C(mdp_up).
      - The default is three report intervals of the agent's default (60 s).
    type: int
    default: 180
requirements:
  - The C(mdp) Python distribution (the controller library) importable by the controller's Python.
"""

EXAMPLES = r"""
# inventories/mdp.mdp.yml, then: ansible-inventory -i inventories/mdp.mdp.yml --graph
plugin: mdp.core.mdp
known_machines: ../.known_machines
database: /var/lib/mdp-monitor/mdp.db
stale_after: 300
# Constructed: groups and variables of your own from the hostvars above.
keyed_groups:
  - key: mdp_os.id | default('unknown')
    prefix: os
groups:
  mdp_loaded: (mdp_load.load1 | default(0)) > 4
compose:
  mdp_uptime_reported: mdp_last_seen
# Keep one run's answer for 10 minutes (any cache plugin; jsonfile needs a directory).
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/mdp-inventory
cache_timeout: 600
"""

import os
import time

from ansible import constants as C
from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.unsafe_proxy import wrap_var

try:
    from mdp_controller.keystore import KeyStore
    from mdp_controller.storage import machine_status
except ImportError as exc:  # reported when the inventory is parsed, so that ansible-doc and sanity still load us
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None

TRUSTED_GROUP = "mdp_agents"
PENDING_GROUP = "mdp_pending"
UP_GROUP = "mdp_up"
STALE_GROUP = "mdp_stale"


def default_known_machines():
    """Where the mdp_send action plugin and the mdp_agent role look: beside ansible.cfg, else here."""
    base = os.path.dirname(C.CONFIG_FILE) if C.CONFIG_FILE else os.getcwd()
    return os.path.join(base, ".known_machines")


def machine_facts(row, now, stale_after):
    """The hostvars a machine_status() row gives: when it last reported, how it was, what it runs."""
    latest = row.get("latest") or {}
    info = (latest.get("system.info") or {}).get("result")
    info = info if isinstance(info, dict) else {}
    load = (latest.get("load.avg") or {}).get("result")
    last_seen = row.get("last_seen")
    if last_seen is None:
        status = "unseen"
    else:
        status = "up" if now - last_seen <= stale_after else "stale"
    return {
        "mdp_last_seen": last_seen,
        "mdp_reports": row.get("reports", 0),
        "mdp_last_report_ok": row.get("status"),
        "mdp_status": status,
        "mdp_load": load if isinstance(load, dict) else None,
        "mdp_agent_version": info.get("agent_version"),
        "mdp_os": info.get("os"),
    }


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "mdp.core.mdp"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("mdp.yml", "mdp.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        if IMPORT_ERROR is not None:
            raise AnsibleParserError("mdp.core.mdp needs the MDP controller library on the controller "
                                     "(pip install the project): %s" % to_text(IMPORT_ERROR))

        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        machines = None
        if use_cache:
            try:
                machines = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if machines is None:
            machines = self._collect(os.path.dirname(path))
        if update_cache:
            self._cache[cache_key] = machines
        self._populate(machines)

    def _path_option(self, name, base):
        value = self.get_option(name)
        if not value:
            return None
        value = os.path.expanduser(to_text(value))
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))

    def _collect(self, base):
        """{ip: hostvars} from the key store and, when configured, the monitor's database."""
        known_machines = self._path_option("known_machines", base) or default_known_machines()
        if not os.path.isdir(known_machines):
            raise AnsibleParserError("mdp.core.mdp: no key store at %s (set known_machines)" % known_machines)
        machines = {}
        for row in KeyStore(known_machines).list():
            if row["state"] in ("trusted", "pending"):
                machines[row["ip"]] = {"mdp_key_state": row["state"]}

        database = self._path_option("database", base)
        if database:
            try:
                rows = machine_status(database, list(machines))
            except FileNotFoundError:
                raise AnsibleParserError("mdp.core.mdp: no monitor database at %s" % database)
            except Exception as exc:  # sqlite3.Error and friends: say which file, not a traceback
                raise AnsibleParserError("mdp.core.mdp: cannot read the monitor database %s: %s"
                                         % (database, to_text(exc)))
            now = time.time()
            for row in rows:
                if row["ip"] in machines:
                    machines[row["ip"]].update(machine_facts(row, now, self.get_option("stale_after")))
        return machines

    def _populate(self, machines):
        for group in (TRUSTED_GROUP, PENDING_GROUP):
            self.inventory.add_group(group)
        with_status = any("mdp_status" in hostvars for hostvars in machines.values())
        if with_status:
            for group in (UP_GROUP, STALE_GROUP):
                self.inventory.add_group(group)
        strict = self.get_option("strict")
        for ip, hostvars in machines.items():
            # What agents reported is data, never a template: an OS name of "{{ ... }}" stays text.
            hostvars = {name: wrap_var(value) for name, value in hostvars.items()}
            pending = hostvars["mdp_key_state"] == "pending"
            self.inventory.add_host(ip, group=PENDING_GROUP if pending else TRUSTED_GROUP)
            for name, value in hostvars.items():
                self.inventory.set_variable(ip, name, value)
            if "mdp_status" in hostvars and not pending:
                self.inventory.add_child(UP_GROUP if hostvars["mdp_status"] == "up" else STALE_GROUP, ip)
            self._set_composite_vars(self.get_option("compose"), hostvars, ip, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, ip, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, ip, strict=strict)
