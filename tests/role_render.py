"""Render a role's own templates and expressions for a fake host, with Ansible's templar.

No upstart host (Ubuntu 14.04) can boot here, so the roles' init-system choice and their upstart jobs
are checked as rendered text; tests/ansible and tests/cluster share this one way of doing it.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar

ROLES = Path(__file__).resolve().parents[1] / "collections" / "ansible_collections" / "mdp" / "core" / "roles"
init_plugin_loader()  # lookups and filters, as ansible-playbook loads them


def role_vars(role: str, facts: dict, **overrides) -> dict:
    """The role's defaults and vars over the given facts, as a play would see them."""
    variables = {"role_path": str(ROLES / role), "inventory_hostname": "legacy1",
                 "ansible_managed": "Ansible managed", **facts}
    for name in ("defaults", "vars"):
        variables.update(yaml.safe_load((ROLES / role / name / "main.yml").read_text()))
    variables.update(overrides)
    return variables


def render(role: str, text: str, variables: dict):
    loader = DataLoader()
    loader.set_basedir(str(ROLES / role))
    return Templar(loader=loader, variables=variables).template(text)


def render_template(role: str, name: str, variables: dict) -> str:
    return render(role, (ROLES / role / "templates" / name).read_text(), variables)


def template_task(role: str, tasks_file: str) -> dict:
    """The arguments of the first ansible.builtin.template task in the role's tasks_file."""
    tasks = yaml.safe_load((ROLES / role / "tasks" / tasks_file).read_text())
    return next(t for t in tasks if "ansible.builtin.template" in t)["ansible.builtin.template"]


def service_import(role: str, tasks_file: str, entry: str = "main.yml") -> dict:
    """The vars a role's tasks_file passes to the internal mdp.core.service role for that entry point."""
    tasks = yaml.safe_load((ROLES / role / "tasks" / tasks_file).read_text())
    return next(t["vars"] for t in tasks if t.get("ansible.builtin.import_role", {}).get("name") == "mdp.core.service"
                and t["ansible.builtin.import_role"].get("tasks_from", "main.yml") == entry)


def service_vars(role: str, tasks_file: str, variables: dict, entry: str = "main.yml") -> dict:
    """variables as mdp.core.service sees them when role's tasks_file imports it (its vars, then the import's)."""
    service = dict(variables)
    for name in ("defaults", "vars"):
        service.update(yaml.safe_load((ROLES / "service" / name / "main.yml").read_text()))
    service.update(service_import(role, tasks_file, entry))
    return service
