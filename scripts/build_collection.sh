#!/usr/bin/env bash
# make collection: the mdp.core collection as one tarball that installs and runs without this checkout.
#   bash scripts/build_collection.sh [OUTPUT_DIR]      # default dist/; prints the tarball's path last
# The collection in the checkout holds no copy of the agent: agent_src/ is its one source. This
# stages the collection, bundles into it what a checkout finds through the controller library
# (agent_src/ into mdp.core.agent, the controller library's wheel into mdp.core.monitor), and
# builds the stage with ansible-galaxy.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
galaxy="${ANSIBLE_GALAXY:-$root/.venv/bin/ansible-galaxy}"
src="$root/collections/ansible_collections/mdp/core"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
dst="$stage/ansible_collections/mdp/core"
mkdir -p "$dst"

# The collection as git sees it: tracked and new files, not ignored ones (test output, caches).
git -C "$src" ls-files -z --cached --others --exclude-standard . | (cd "$src" && xargs -0 tar -cf - --no-recursion) | tar -xf - -C "$dst"

mkdir -p "$dst/roles/agent/files/agent_src"
tar -C "$root/agent_src" --exclude=__pycache__ --exclude='*.pyc' -cf - mdp_agent mdp_operations \
  | tar -xf - -C "$dst/roles/agent/files/agent_src"

mkdir -p "$dst/roles/monitor/files"
"$python" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$dst/roles/monitor/files" "$root" 2>/dev/null \
  || "$python" -m pip wheel -q --no-deps --wheel-dir "$dst/roles/monitor/files" "$root"
rm -rf "$root/build"  # setuptools' build directory

"$galaxy" collection build "$dst" --output-path "$out" --force >&2
version="$(sed -n 's/^version: *//p' "$src/galaxy.yml")"
echo "$out/mdp-core-$version.tar.gz"
