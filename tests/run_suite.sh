#!/usr/bin/env bash
# The main pytest run and the collection checks on every ansible-core line, side by side.
#
# The collection checks (tests/ansible/collection_tests.sh: ansible-test sanity and units, mdp_send's
# failure cases, on 2.16, the pinned line and the newest) are mostly pip installs and ansible-test's
# own venvs; the pytest run mostly waits on real processes (agents, a fleet booting, Syncthing). Run
# in turn they took most of CI's time budget; side by side they share the two cores. The collection
# log is printed when both are done; the exit status is non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/mdp-collection-checks.XXXXXX.log)
start=$SECONDS
make --no-print-directory test-collection >"$log" 2>&1 &
collection=$!
.venv/bin/pytest -q tests "$@"
tests_status=$?
wait "$collection"
collection_status=$?
echo
echo "== collection checks on every ansible-core line: exit $collection_status (log $log; last lines below)"
grep -E "^== |passed|failed|ERROR|FAILED" "$log" | tail -n 40
echo "== suite: pytest exit $tests_status, collection checks exit $collection_status, $((SECONDS - start)) s"
if [ "$tests_status" -ne 0 ]; then exit "$tests_status"; fi
exit "$collection_status"
