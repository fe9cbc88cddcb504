#!/usr/bin/env bash
# The mdp.core collection's checks under one ansible-core line: ansible-test sanity, ansible-test
# units, then mdp_send (its failure cases included) and the mdp.core.mdp inventory plugin against real
# agents and a real monitor on loopback (tests/ansible/test_mdp_send_action.py, test_inventory_plugin.py).
#   tests/ansible/collection_tests.sh                        # the project's .venv (the pinned line)
#   tests/ansible/collection_tests.sh 2.16 python3.11        # .venv-ansible216, made if needed
#   tests/ansible/collection_tests.sh 2.21 /root/.pyenv/versions/3.12.1/bin/python3
#   MDP_COLLECTION_LOOPBACK_TESTS=0 tests/ansible/collection_tests.sh   # sanity + units only
# A line's venv is made once with the interpreter that line needs (2.21 wants Python 3.12+) and kept
# (.venv-ansibleXY/.done), so a second run only runs the checks. No container engine here, so
# ansible-test makes its own venvs (--venv); its pip bootstrap script is replaced by get_pip_shim.py
# because the host it is downloaded from is unreachable.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
line="${1:-current}"
python="${2-${PYTHON:-python3.11}}"   # an empty one given (none found) is an error below
start=$SECONDS

if [ "$line" = current ]; then
  venv="$root/.venv"
else
  [[ $line =~ ^[0-9]+\.[0-9]+$ ]] || { echo "collection_tests.sh: LINE is 'current' or like 2.16, not '$line'" >&2; exit 2; }
  command -v "$python" >/dev/null || { echo "collection_tests.sh: no interpreter '$python' for ansible-core $line" >&2; exit 1; }
  venv="$root/.venv-ansible${line//./}"
  if [ ! -e "$venv/.done" ]; then
    echo "== making $venv with ansible-core $line on $("$python" --version 2>&1)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "ansible-core>=$line,<$(echo "$line" | awk -F. '{print $1"."$2+1}')" pytest pytest-timeout
    # The action plugin imports the controller library; without deps, it is pure Python.
    "$venv/bin/pip" install -q --no-deps -e "$root"
    touch "$venv/.done"
  fi
fi

# Every pip version this ansible-test may bootstrap into its venvs gets the shim.
requirements="$("$venv/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py"
for pip_version in $(grep -oE "pip='[0-9.]+'" "$requirements" | grep -oE "[0-9.]+" | sort -u); do
  cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
  [ -e "$cache" ] || { mkdir -p "$(dirname "$cache")"; cp "$root/tests/ansible/get_pip_shim.py" "$cache"; }
done

pyver="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
echo "== ansible-core $("$venv/bin/python" -c "import ansible.release as r; print(r.__version__)") / Python $pyver"
(
  cd "$root/collections/ansible_collections/mdp/core"
  PATH="$venv/bin:$PATH" ansible-test sanity --venv --python "$pyver" --color no
  PATH="$venv/bin:$PATH" ansible-test units --venv --python "$pyver" --color no
)
if [ "${MDP_COLLECTION_LOOPBACK_TESTS:-1}" != 0 ]; then
  # ansible, ansible-inventory, ansible-doc of this venv (mdp_ansible.BIN is the interpreter's bin/).
  cd "$root"
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/ansible/test_mdp_send_action.py \
    tests/ansible/test_inventory_plugin.py
fi
echo "== ansible-core $line line: $((SECONDS - start)) s"
