#!/usr/bin/env bash
# The loopback demo: a monitor on 127.0.0.1 and three real agents on 127.0.0.2-4, all on this machine.
#   bash scripts/demo_local.sh         start (or restart) it and show it working
#   bash scripts/demo_local.sh stop    stop every process it started
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=$PWD/.demo/local
BIN=$PWD/.venv/bin   # absolute, so the commands printed at the end work when pasted anywhere
PORT=${MDP_DEMO_PORT:-12345}
HTTP=127.0.0.1:${MDP_DEMO_HTTP_PORT:-9123}
AGENTS=(127.0.0.2 127.0.0.3 127.0.0.4)
export MDP_KNOWN_MACHINES=$DEMO/known_machines

stop() {
  for pidfile in "$DEMO"/*.pid; do
    [ -e "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds or fail loudly
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "demo: gave up waiting for $what (logs in $DEMO/)" >&2; exit 1; fi
    sleep 0.2
  done
}

if [ "${1:-}" = stop ]; then stop; echo "demo stopped"; exit 0; fi

stop
rm -rf "$DEMO"; mkdir -p "$DEMO"; chmod 700 "$DEMO"
echo "== starting the monitor on 127.0.0.1:$PORT (db $DEMO/mdp.db), its page and /metrics on http://$HTTP/"
nohup "$BIN/mdp" monitor --listen "127.0.0.1:$PORT" --db "$DEMO/mdp.db" --http "$HTTP" > "$DEMO/monitor.log" 2>&1 &
echo $! > "$DEMO/monitor.pid"
wait_for 10 "the monitor to listen" grep -q "monitor listening" "$DEMO/monitor.log"
if grep -q "cannot listen" "$DEMO/monitor.log"; then cat "$DEMO/monitor.log" >&2; exit 1; fi

for ip in "${AGENTS[@]}"; do
  echo "== starting an agent on $ip:$PORT (reports every 2 s, agrees its key with the monitor)"
  nohup "$BIN/python" -m mdp_agent --config /dev/null --bind "$ip" --port "$PORT" --state-dir "$DEMO/agent-$ip" \
    --monitor "127.0.0.1:$PORT" --interval 2 --enrol > "$DEMO/agent-$ip.log" 2>&1 &
  echo $! > "$DEMO/agent-$ip.pid"
done

echo "== enrolment: each agent agrees a key by HELLO; it waits in pending/ until the operator accepts it,"
echo "   comparing the fingerprint the agent logged with the one the monitor filed"
for ip in "${AGENTS[@]}"; do
  wait_for 15 "the enrolment of $ip" grep -q "enrolment fingerprint" "$DEMO/agent-$ip.log"
  fingerprint=$(grep -o "enrolment fingerprint [A-Z2-7-]*" "$DEMO/agent-$ip.log" | tail -n1 | cut -d" " -f3)
  "$BIN/mdp" keys accept "$ip" --fingerprint "$fingerprint"
done
"$BIN/mdp" keys list

echo; echo "== mdp send (signed UDP, one request per machine)"
"$BIN/mdp" send --port "$PORT" "$(IFS=,; echo "${AGENTS[*]}")" ping system.uptime load.avg memory.info
echo; echo "== mdp send --json ${AGENTS[0]} get_cpu_percent"
"$BIN/mdp" send --port "$PORT" --json "${AGENTS[0]}" get_cpu_percent

echo; echo "== waiting for the agents' reports to reach the monitor"
reported() { [ "$("$BIN/mdp" status --db "$DEMO/mdp.db" --json | "$BIN/python" -c \
  'import json,sys; print(sum(1 for m in json.load(sys.stdin) if m["reports"]))')" = "${#AGENTS[@]}" ]; }
wait_for 30 "reports from every agent" reported
"$BIN/mdp" status --db "$DEMO/mdp.db"

cat <<MSG

The demo is running: a monitor and ${#AGENTS[@]} agents on loopback, state in $DEMO/.
Page:  http://$HTTP/            (the live fleet; Prometheus scrapes http://$HTTP/metrics)
Try:   MDP_KNOWN_MACHINES=$MDP_KNOWN_MACHINES $BIN/mdp send --port $PORT ${AGENTS[1]} process.top network.listening
       $BIN/mdp status --db $DEMO/mdp.db --watch
       $BIN/mdp status --db $DEMO/mdp.db --since 5m ${AGENTS[0]}
       $BIN/mdp ops
Stop:  make -C $PWD demo-local-stop
MSG
