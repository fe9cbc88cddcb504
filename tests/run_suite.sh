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
pytest_log=$(mktemp /tmp/mdp-pytest.XXXXXX.log)
.venv/bin/pytest -q tests "$@" 2>&1 | tee "$pytest_log"
tests_status=${PIPESTATUS[0]}
wait "$collection"
collection_status=$?
echo
echo "== collection checks on every ansible-core line: exit $collection_status (log $log; last lines below)"
grep -E "^== |passed|failed|ERROR|FAILED" "$log" | tail -n 40
echo "== suite: pytest exit $tests_status, collection checks exit $collection_status, $((SECONDS - start)) s"
# The closing line CI reads: pytest's counts (errors count as failures), last.
summary=$(grep -E "^=*\s*[0-9]+ (passed|failed)" "$pytest_log" | tail -n 1)
passed=$(grep -oE "[0-9]+ passed" <<<"$summary" | grep -oE "[0-9]+" || echo 0)
failed=$(( $(grep -oE "[0-9]+ failed" <<<"$summary" | grep -oE "[0-9]+" || echo 0) \
         + $(grep -oE "[0-9]+ error" <<<"$summary" | grep -oE "[0-9]+" || echo 0) ))
skipped=$(grep -oE "[0-9]+ skipped" <<<"$summary" | grep -oE "[0-9]+" || echo 0)
echo "${passed:-0} passed, ${failed} failed, ${skipped:-0} skipped"
if [ "$tests_status" -ne 0 ]; then exit "$tests_status"; fi
exit "$collection_status"
