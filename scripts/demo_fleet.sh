#!/usr/bin/env bash
# The main demo: boot three bare Debian hosts (bullseye, bookworm, trixie) on this machine, deploy the
# agent to them with deploy.yml over SSH, and ask them things with mdp send and ansible -m mdp_send.
#   bash scripts/demo_fleet.sh         boot (or reuse) the fleet, deploy, show it working
#   bash scripts/demo_fleet.sh stop    stop the monitor and tear the fleet down
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
INVENTORY=inventories/fleet
DB=/var/lib/mdp-monitor/mdp.db
HTTP=127.0.0.1:${MDP_DEMO_HTTP_PORT:-9123}
MDP=$PWD/.venv/bin/mdp   # the printed commands use absolute paths: they must work when pasted anywhere

if [ "${1:-}" = stop ]; then
  bash tests/fleet/fleet.sh down   # also stops the monitor deploy.yml started on the bridge address
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "demo: the fleet needs root (network namespaces, systemd-nspawn); or run: make demo-local" >&2
  exit 1
fi

fresh=0
bash tests/fleet/fleet.sh status >/dev/null 2>&1 || fresh=1   # not running: its hosts are booted anew

echo "== 1/4 booting the test fleet (the first run debootstraps three suites: about 2 minutes)"
bash tests/fleet/fleet.sh up 3

IPS=$(ansible-inventory -i "$INVENTORY" --list | python3 -c \
  'import json,sys; d=json.load(sys.stdin); print(",".join(d["_meta"]["hostvars"][h]["ansible_host"] for h in d["mdp_agents"]["hosts"]))')
# Hosts booted anew generate new agent keys; the keys an earlier demo's hosts left in
# .known_machines/ would make deploy.yml refuse them (as it must for a real machine whose key changed).
if [ "$fresh" = 1 ]; then
  for ip in ${IPS//,/ }; do rm -f ".known_machines/$ip.txt"; done
fi

echo; echo "== 2/4 ansible-playbook deploy.yml: bare hosts -> python3 -> agent -> key in .known_machines/"
ansible-playbook -i "$INVENTORY" deploy.yml -e mdp_agent_interval=5 -e mdp_monitor_http="$HTTP"
ls -l .known_machines/

echo; echo "== 3/4 mdp send $IPS (signed UDP, no SSH)"
mdp send "$IPS" ping system.info load.avg memory.info
echo; echo "== ansible mdp_agents -m mdp_send -a 'operations=system.uptime'"
ansible -i "$INVENTORY" mdp_agents -o -m mdp_send -a 'operations=system.uptime'

echo; echo "== 4/4 the agents report every 5 s to the monitor on this machine"
deadline=$((SECONDS + 60))
since=$(date +%s)   # the database may hold reports from an earlier run: wait for fresh ones
until [ "$(mdp status --db "$DB" --json 2>/dev/null | SINCE=$since python3 -c \
  'import json,os,sys; print(sum(1 for m in json.load(sys.stdin) if (m["last_seen"] or 0) > int(os.environ["SINCE"])))' \
  2>/dev/null)" = 3 ]; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "demo: no reports from all 3 agents within 60 s" >&2; exit 1; }
  sleep 1
done
mdp status --db "$DB"

cat <<MSG

The demo fleet is running: 3 hosts with the agent, a monitor on this machine, keys in $PWD/.known_machines/.
Page:  http://$HTTP/            (the live fleet; Prometheus scrapes http://$HTTP/metrics)
Try:   cd $PWD
       $MDP send $IPS process.top network.interfaces
       $MDP send $IPS service.status --args '{"name": "ssh"}'
       $PWD/.venv/bin/ansible -i $INVENTORY mdp_agents -m mdp_send -a 'operations=network.listening'
       $MDP status --db $DB --watch
       bash tests/fleet/fleet.sh ssh 1          (a shell on the first host)
Stop:  make -C $PWD demo-stop
MSG
