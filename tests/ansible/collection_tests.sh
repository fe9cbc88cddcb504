#!/usr/bin/env bash
# ansible-test sanity + units for the mdp.core collection, under the ansible-core of a given venv.
#   tests/ansible/collection_tests.sh            # the project's .venv (current ansible-core line)
#   tests/ansible/collection_tests.sh 2.16       # .venv-ansible216 with ansible-core 2.16, made if needed
# No container engine here, so ansible-test makes its own venvs (--venv); its pip bootstrap script is
# replaced by get_pip_shim.py because the host it is downloaded from is unreachable.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
line="${1:-current}"
python="${PYTHON:-python3.11}"

if [ "$line" = current ]; then
  venv="$root/.venv"
else
  venv="$root/.venv-ansible${line//./}"
  if [ ! -e "$venv/.done" ]; then
    echo "== making $venv with ansible-core $line"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "ansible-core>=$line,<$(echo "$line" | awk -F. '{print $1"."$2+1}')" pytest
    # The action plugin imports the controller library; without deps, it is pure Python.
    "$venv/bin/pip" install -q --no-deps -e "$root"
    touch "$venv/.done"
  fi
fi

for pip_version in 24.2 23.1.2 25.0.1; do
  cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
  [ -e "$cache" ] || { mkdir -p "$(dirname "$cache")"; cp "$root/tests/ansible/get_pip_shim.py" "$cache"; }
done

cd "$root/collections/ansible_collections/mdp/core"
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
echo "== ansible-core $("$venv/bin/python" -c "import ansible.release as r; print(r.__version__)") / Python $pyver"
PATH="$venv/bin:$PATH" ansible-test sanity --venv --python "$pyver" --color no
PATH="$venv/bin:$PATH" ansible-test units --venv --python "$pyver" --color no
