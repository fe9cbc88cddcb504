"""AWX and execution environments, as far as they can be tested without an AWX server, a container
engine or Kubernetes (none exists here): the EE's build context from ansible-builder itself, with
ansible-builder's own introspection run over the collection installed from the built tarball; the
project settings AWX reads; the inventory AWX syncs; the key volume awx_configure.yml wires in.
What these cannot show (the image building, AWX mounting the claim, a job on a pod) is listed in
docs/awx.md under "What was tested here".
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mdp_ansible import BIN, REPO

COLLECTION = REPO / "collections" / "ansible_collections" / "mdp" / "core"


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(["bash", str(REPO / "scripts" / "build_collection.sh"), str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    return Path(built.stdout.split()[-1])


@pytest.mark.slow
def test_execution_environment_context_holds_the_collection_and_the_library(tarball, tmp_path):
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / tarball.name).write_bytes(tarball.read_bytes())
    (tmp_path / "execution-environment.yml").write_text((REPO / "execution-environment.yml").read_text())
    context = tmp_path / "context"
    created = subprocess.run([BIN / "ansible-builder", "create", "-f", "execution-environment.yml", "-c", context],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout + created.stderr
    containerfile = (context / "Dockerfile").read_text()
    assert (context / "_build" / "mdp-collection" / tarball.name).is_file()
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert requirements["collections"] == [{"name": f"/tmp/mdp-collection/{tarball.name}", "type": "file"}]
    assert "COPY _build/mdp-collection/ /tmp/mdp-collection/" in containerfile
    assert "mdp_diagnostics-0.1.0-py3-none-any.whl" in containerfile

    # The galaxy stage's install, then the builder stage's introspection, here instead of in a container.
    installed = tmp_path / "collections"
    # Outside the project (its ansible.cfg would find the checkout's mdp.core and install nothing).
    result = subprocess.run([BIN / "ansible-galaxy", "collection", "install", tarball, "-p", installed],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheel = installed / "ansible_collections" / "mdp" / "core" / "roles" / "monitor" / "files" / \
        "mdp_diagnostics-0.1.0-py3-none-any.whl"
    assert wheel.is_file() and f"/usr/share/ansible/collections/{wheel.relative_to(installed)}" in containerfile
    introspected = subprocess.run(
        [sys.executable, context / "_build" / "scripts" / "introspect.py", "introspect", installed],
        capture_output=True, text=True, timeout=120)
    assert introspected.returncode == 0, introspected.stderr
    assert "mdp-diagnostics==0.1.0" in introspected.stdout  # meta/execution-environment.yml -> requirements.txt
    excluded = subprocess.run(
        [sys.executable, context / "_build" / "scripts" / "introspect.py", "introspect", installed,
         "--exclude-pip-reqs", context / "_build" / "exclude-requirements.txt"],
        capture_output=True, text=True, timeout=120)
    assert excluded.returncode == 0, excluded.stderr
    # Not from the index (it is not there yet): the bundled wheel is installed instead.
    assert not any("mdp-diagnostics" in line for line in yaml.safe_load(excluded.stdout)["python"])


def test_project_settings_name_the_collections_for_old_and_new_awx():
    """AWX reads the project's ansible.cfg itself: older releases the plural key, newer the singular."""
    config = configparser.ConfigParser()
    config.read(REPO / "ansible.cfg")
    assert config["defaults"]["collections_path"] == config["defaults"]["collections_paths"] == "./collections"
    assert "roles_path" not in config["defaults"]  # the roles are the collection's


def test_awx_inventory_does_not_make_the_execution_environment_the_monitor():
    inventory = yaml.safe_load((REPO / "inventories" / "awx" / "hosts.yml").read_text())
    monitors = inventory["all"]["children"]["mdp_monitor"]["hosts"]
    assert monitors and "localhost" not in monitors
    assert all((h or {}).get("ansible_connection", "ssh") != "local" for h in monitors.values())
    address = inventory["all"]["vars"]["mdp_agent_monitor_address"]
    assert address in {h["ansible_host"] for h in monitors.values()}
    assert inventory["all"]["children"]["mdp_cluster"]["hosts"]


def test_awx_jobs_keep_their_keys_on_the_claim():
    play = yaml.safe_load((REPO / "playbooks" / "awx_configure.yml").read_text())[0]
    pod = play["vars"]["mdp_awx_pod_spec"]["spec"]
    mount = pod["containers"][0]["volumeMounts"][0]
    assert pod["volumes"][0] == {"name": mount["name"],
                                 "persistentVolumeClaim": {"claimName": "{{ mdp_awx_keys_claim }}"}}
    assert pod["containers"][0]["env"] == [{"name": "MDP_KNOWN_MACHINES",
                                            "value": "{{ mdp_awx_keys_mount }}/known_machines"}]
    tasks = {t["name"]: t for t in play["tasks"]}
    users = [t for t in tasks.values() if "awx.awx.job_template" in t or "awx.awx.inventory" in t]
    assert len(users) == 4
    for task in users:
        module = task.get("awx.awx.job_template") or task["awx.awx.inventory"]
        assert module["instance_groups"] == ["{{ mdp_awx_instance_group }}"], task["name"]
    source = next(t["awx.awx.inventory_source"] for t in tasks.values() if "awx.awx.inventory_source" in t)
    assert source["source_path"] == "inventories/awx/hosts.yml"


def test_navigator_settings_use_the_mdp_ee():
    settings = yaml.safe_load((REPO / "ansible-navigator.yml").read_text())["ansible-navigator"]
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert settings["execution-environment"]["image"] == "mdp-ee:0.1.0"
    assert ee["additional_build_files"][0]["src"] == "dist/mdp-core-0.1.0.tar.gz"
