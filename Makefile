# The verbs of the project. `make demo` and `make test` create .venv first when needed.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
N ?= 3
# The oldest Python 3 on the machine, for the agent's compatibility run (pyenv keeps several).
# Empty when there is none: the run then fails rather than quietly testing the default python3.
OLD_PY ?= $(shell ls -d /root/.pyenv/versions/3.*/bin/python3 2>/dev/null | sort -V | head -n1)
# Older than this is what "old Python" means here (the agent claims 3.4+; pyenv has 3.6).
OLD_PY_BELOW := (3, 8)
OLD_VENV := .venv-oldpy
# The ansible-core lines the collection claims (meta/runtime.yml requires_ansible), each with the
# interpreter it needs: the oldest (2.16, the last for python2.7 hosts), the pinned one in .venv
# (pyproject [dev]) and the newest (2.21 wants Python 3.12+). Empty when missing: the run then fails.
ANSIBLE_OLDEST := 2.16
ANSIBLE_NEWEST := 2.21
PY_ANSIBLE_OLDEST ?= $(PY)
PY_ANSIBLE_NEWEST ?= $(shell ls -d /root/.pyenv/versions/3.1[2-9].*/bin/python3 2>/dev/null | sort -V | head -n1)

.PHONY: setup demo demo-stop demo-local demo-local-stop collection ansible-216 test-collection test test-agent-oldpy lint vermin bench fleet-up fleet-down clean

setup: $(VENV)/.done

$(VENV)/.done: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(OLD_VENV)/.done: tests/agent/oldpy-requirements.txt
	@[ -n "$(OLD_PY)" ] && [ -x "$(OLD_PY)" ] || { echo "test-agent-oldpy: no old Python 3 found" \
	  "(looked in /root/.pyenv/versions/3.*); give one: make test-agent-oldpy OLD_PY=/path/to/python3.6" >&2; exit 1; }
	rm -rf $(OLD_VENV)
	$(OLD_PY) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/pip install -q --upgrade 'pip<22'   # 3.6's own pip 18 cannot install manylinux2014 wheels
	$(OLD_VENV)/bin/pip install -q -r tests/agent/oldpy-requirements.txt
	touch $@

demo: setup
	bash scripts/demo_fleet.sh

demo-stop:
	bash scripts/demo_fleet.sh stop

# The same story without root or a fleet: a monitor and three agents on loopback.
demo-local: setup
	bash scripts/demo_local.sh

demo-local-stop:
	bash scripts/demo_local.sh stop

vermin: setup
	$(BIN)/vermin --target=3.4- --no-tips --violations agent_src

lint: setup vermin
	$(BIN)/ruff check controller_src agent_src tests bench

test-agent-oldpy: $(OLD_VENV)/.done
	@$(OLD_VENV)/bin/python -c 'import sys; sys.exit(0 if sys.version_info[:2] < $(OLD_PY_BELOW) else \
	  "test-agent-oldpy: %s is Python %d.%d, not older than %d.%d" % ((sys.executable,) + sys.version_info[:2] + $(OLD_PY_BELOW)))'
	PYTHONPATH=agent_src $(OLD_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/agent

# Sanity, units, mdp_send's failure cases and the inventory plugin on every line; the pinned line's
# loopback tests run in the main pytest run below. Each line's venv is kept, so a second run only checks.
test-collection: setup
	bash tests/ansible/collection_tests.sh $(ANSIBLE_OLDEST) "$(PY_ANSIBLE_OLDEST)"
	MDP_COLLECTION_LOOPBACK_TESTS=0 bash tests/ansible/collection_tests.sh current
	bash tests/ansible/collection_tests.sh $(ANSIBLE_NEWEST) "$(PY_ANSIBLE_NEWEST)"

# The pytest run and the collection checks side by side (tests/run_suite.sh says why).
test: setup lint test-agent-oldpy
	bash tests/run_suite.sh

bench: setup
	$(BIN)/python bench/run_all.py

# dist/mdp-core-VERSION.tar.gz: the collection with the agent source and the controller library's
# wheel bundled in (ansible-galaxy collection install dist/mdp-core-*.tar.gz).
collection: setup
	bash scripts/build_collection.sh dist

ansible-216: setup
	bash tests/ansible/collection_tests.sh 2.16 "$(PY_ANSIBLE_OLDEST)"

fleet-up:
	bash tests/fleet/fleet.sh up $(N)

fleet-down:
	bash tests/fleet/fleet.sh down

clean:
	rm -rf $(VENV) $(OLD_VENV) .demo
