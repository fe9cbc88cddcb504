#!/usr/bin/env bash
# The MDP test fleet: real booted Debian hosts on this machine, without a container engine.
#
# Each host is systemd-nspawn booting real systemd from an overlayfs over a cached debootstrap
# rootfs, inside its own network namespace whose veth sits on one bridge. The bridge holds this
# machine's address; hosts get no default route and ip_forward is never touched, so a host reaches
# the other hosts and the bridge address (an HTTP proxy for apt) and nothing else.
#
# Usage: fleet.sh up [N] | reset [N] | down | status | ssh INDEX [CMD...]
#   reset: every host booted anew from the cached rootfs (a fresh overlay: never deployed, no python),
#          keeping the bridge and the proxy; what a deploy test starts from.
# Environment: MDP_FLEET_SUBNET (first three octets, default 10.207.33), MDP_FLEET_MIRROR,
# MDP_FLEET_SECURITY_MIRROR, MDP_FLEET_BOOT_TIMEOUT (seconds, default 300),
# MDP_FLEET_PROXY_ALLOW (domains the proxy forwards to), MDP_FLEET_INSTANCE (a second, separate
# fleet beside the default one: 1-3 letters/digits starting with a letter; give it its own subnet).
set -euo pipefail

INSTANCE=${MDP_FLEET_INSTANCE:-}
SUBNET=${MDP_FLEET_SUBNET:-10.207.33}
MIRROR=${MDP_FLEET_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${MDP_FLEET_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BOOT_TIMEOUT=${MDP_FLEET_BOOT_TIMEOUT:-300}
# The proxy forwards only to the package registries, so a host cannot reach anything else through it.
PROXY_ALLOW=${MDP_FLEET_PROXY_ALLOW:-deb.debian.org security.debian.org pypi.org files.pythonhosted.org}
SUITES=(bullseye bookworm trixie)
MAX_HOSTS=99
# Every name the harness creates derives from these, so an instance never touches another's.
BRIDGE=mdpbr${INSTANCE:-0}
NAME_PREFIX=mdp-fleet-${INSTANCE:+$INSTANCE-}
VETH_PREFIX=mdpv${INSTANCE:+$INSTANCE-}
BRIDGE_IP=$SUBNET.1
PROXY_PORT=8888
STATE=/run/mdp-fleet${INSTANCE:+-$INSTANCE}
CACHE=/var/cache/mdp-fleet
LIB=/var/lib/mdp-fleet
KEY=$LIB/ssh/id_ed25519
# Bump when customize_rootfs changes: caches built by an older recipe are rebuilt.
RECIPE=1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
INVENTORY=$REPO/inventories/fleet/hosts.yml
[ -z "$INSTANCE" ] || INVENTORY=$STATE/hosts.yml
SSH_OPTS=(-i "$KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
          -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=3)

say() { printf '[fleet] %s\n' "$*" >&2; }
die() { printf '[fleet] error: %s\n' "$*" >&2; exit 1; }

host_name() { echo "$NAME_PREFIX$1"; }
host_ip() { echo "$SUBNET.$((10 + $1))"; }
host_suite() { echo "${SUITES[$((($1 - 1) % ${#SUITES[@]}))]}"; }
host_veth() { echo "$VETH_PREFIX$1"; }
host_dir() { echo "$STATE/hosts/$1"; }

check_config() {
    [[ $INSTANCE =~ ^([a-z][a-z0-9]{0,2})?$ ]] ||
        die "MDP_FLEET_INSTANCE='$INSTANCE' must be 1-3 lowercase letters or digits, starting with a letter"
    [[ $SUBNET =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] ||
        die "MDP_FLEET_SUBNET='$SUBNET' is not three dotted octets like 10.207.33"
    local octet
    for octet in "${BASH_REMATCH[@]:1}"; do
        ((10#$octet <= 255)) || die "MDP_FLEET_SUBNET='$SUBNET' has an octet above 255"
    done
    [[ $BOOT_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "MDP_FLEET_BOOT_TIMEOUT='$BOOT_TIMEOUT' is not a number of seconds"
}

need_root() { [ "$(id -u)" = 0 ] || die "the fleet needs root (namespaces, mounts, systemd-nspawn)"; }

# One harness at a time: the pytest fixture and `make fleet-up` may race.
take_lock() {
    install -d -m 0755 "$LIB"
    exec 9>"$LIB/lock"
    flock -w 1800 9 || die "another fleet.sh held $LIB/lock for 30 minutes"
}

ensure_deps() {
    local need=()
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v systemd-nspawn >/dev/null || need+=(systemd-container)
    command -v tinyproxy >/dev/null || need+=(tinyproxy)
    command -v ip >/dev/null || need+=(iproute2)
    command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || need+=(openssh-client)
    [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
    if ((${#need[@]})); then
        say "installing ${need[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -q -o DPkg::Lock::Timeout=600 update >&2
        apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends "${need[@]}" >&2
    fi
    disable_system_tinyproxy
}

# Debian's tinyproxy package starts a service on every interface; the fleet runs its own instance.
disable_system_tinyproxy() {
    [ -e /etc/init.d/tinyproxy ] || [ -e /lib/systemd/system/tinyproxy.service ] || return 0
    local pid
    pid=$(cat /run/tinyproxy/tinyproxy.pid 2>/dev/null || true)
    if [ -d /run/systemd/system ]; then
        systemctl disable --now tinyproxy.service >/dev/null 2>&1 || true
    elif [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        say "stopping Debian's tinyproxy service (the fleet runs its own, on $BRIDGE_IP only)"
        # By its own pid file: its init script's stop would match the fleet's tinyproxy too.
        [ -z "$(signal_and_wait TERM 10 "$pid")" ] || signal_and_wait KILL 5 "$pid" >/dev/null
    fi
    if [ -e /etc/systemd/system/multi-user.target.wants/tinyproxy.service ] ||
        compgen -G '/etc/rc[2-5].d/S*tinyproxy' >/dev/null; then
        systemctl disable tinyproxy.service >/dev/null 2>&1 || update-rc.d tinyproxy disable >/dev/null 2>&1 || true
    fi
}

ensure_key() {
    install -d -m 0700 "$LIB/ssh"
    [ -s "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C mdp-fleet -f "$KEY"
    chmod 0600 "$KEY"
}

# Unmount everything at or below DIR in this mount namespace, deepest first.
umount_under() {
    local dir=$1 mnt
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt"
        done
}

customize_rootfs() {
    local suite=$1 root=$2
    # apt: the suite, its updates and its security archive (hosts reach them through the proxy).
    rm -f "$root/etc/apt/sources.list.d/debian.sources"
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $suite main
deb $MIRROR $suite-updates main
deb $SECURITY_MIRROR $suite-security main
EOF
    # Hosts have no DNS: names are resolved by the proxy.
    echo "# mdp-fleet: no DNS inside the fleet; apt goes through the proxy on the bridge" >"$root/etc/resolv.conf"
    # Root logs in by key only. Debian's sshd_config includes sshd_config.d/ first, so these win.
    grep -q '^Include /etc/ssh/sshd_config.d/\*.conf' "$root/etc/ssh/sshd_config" ||
        die "$suite's sshd_config does not include sshd_config.d/"
    cat >"$root/etc/ssh/sshd_config.d/mdp-fleet.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
    # Identity is per host (written into each overlay): no shared host keys or machine-id.
    rm -f "$root"/etc/ssh/ssh_host_*
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    # apt's daily jobs would hold the dpkg lock just when Ansible bootstraps the host.
    ln -sf /dev/null "$root/etc/systemd/system/apt-daily.timer"
    ln -sf /dev/null "$root/etc/systemd/system/apt-daily-upgrade.timer"
    rm -f "$root"/var/cache/apt/archives/*.deb
    # The bootstrap role must install python itself.
    if compgen -G "$root/usr/bin/python*" >/dev/null; then
        die "the $suite rootfs contains python; the fleet's hosts must start without it"
    fi
}

build_cache() {
    local suite=$1 dest=$CACHE/$1
    [ "$(cat "$dest/.mdp-fleet-recipe" 2>/dev/null)" = "$RECIPE" ] && return 0
    install -d -m 0755 "$CACHE"
    if [ -e "$dest" ]; then
        grep -q "lowerdir=$dest," /proc/self/mountinfo &&
            die "the $suite cache is from an older recipe but hosts still use it: run 'fleet.sh down' first"
        say "the $suite cache is from an older recipe: rebuilding it"
        mv -T "$dest" "$CACHE/.old-$suite.$$"
    fi
    # Leftovers of a crashed build (debootstrap may have left /proc mounted inside).
    local old
    for old in "$CACHE/.build-$suite".* "$CACHE/.old-$suite".*; do
        [ -d "$old" ] || continue
        umount_under "$old"
        rm -rf --one-file-system "$old"
    done
    local tmp=$CACHE/.build-$suite.$$ log=$CACHE/$suite.build.log start=$SECONDS
    say "first boot of a $suite host: building its rootfs with debootstrap into $dest"
    say "  this takes about a minute per suite (35-45 s measured), once; later runs reuse it (log: $log)"
    if ! debootstrap --variant=minbase --components=main \
        --include=systemd,systemd-sysv,dbus,openssh-server,iproute2 \
        "$suite" "$tmp" "$MIRROR" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        umount_under "$tmp"
        die "debootstrap of $suite failed (full log: $log)"
    fi
    umount_under "$tmp"
    customize_rootfs "$suite" "$tmp"
    echo "$RECIPE" >"$tmp/.mdp-fleet-recipe"
    # Renamed only when complete, so a crash never leaves a half cache behind.
    mv -T "$tmp" "$dest"
    say "built the $suite rootfs in $((SECONDS - start)) s"
}

ensure_bridge() {
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip -4 -o addr show dev "$BRIDGE" | grep -q " $BRIDGE_IP/24 " ||
            die "$BRIDGE exists without $BRIDGE_IP/24 (another MDP_FLEET_SUBNET?): run 'fleet.sh down' first"
        return 0
    fi
    if ip -4 -o addr show | awk '{ print $4 }' | grep -q "^${SUBNET//./\\.}\."; then
        die "$SUBNET.0/24 is already used on this machine: choose another MDP_FLEET_SUBNET"
    fi
    [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 0 ] ||
        say "warning: ip_forward is on here (not by the fleet): a host that adds a route could reach beyond $BRIDGE"
    say "creating bridge $BRIDGE with $BRIDGE_IP/24"
    ip link add "$BRIDGE" type bridge
    # IPv4 only: no link-local chatter beyond the assigned addresses.
    sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1" || true
    ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
}

# PIDs (one per line) of NAME processes whose argument list contains exactly ARG.
pids_with_arg() {
    local re=${2//./\\.}
    pgrep -f -- "^([^ ]*/)?$1 (.* )?$re( |\$)" || true
}

# Send SIGNAL to PIDS, wait up to SECONDS for them to exit; print those still alive.
signal_and_wait() {
    local sig=$1 secs=$2 p alive
    shift 2
    (($#)) || return 0
    kill "-$sig" "$@" 2>/dev/null || true
    local deadline=$((SECONDS + secs))
    while :; do
        alive=()
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        ((${#alive[@]})) || return 0
        ((SECONDS < deadline)) || break
        sleep 0.2
    done
    echo "${alive[@]}"
}

proxy_pids() {
    {
        cat "$STATE/proxy/tinyproxy.pid" 2>/dev/null || true
        pids_with_arg tinyproxy "$STATE/proxy/tinyproxy.conf"
    } | sort -u | while read -r p; do
        [ -n "$p" ] && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "$STATE/proxy/tinyproxy.conf" && echo "$p"
    done
    return 0
}

proxy_answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$BRIDGE_IP/$PROXY_PORT" 2>/dev/null; }

start_proxy() {
    if [ -n "$(proxy_pids)" ] && proxy_answers; then return 0; fi
    stop_proxy
    local dir=$STATE/proxy user=tinyproxy domain
    id tinyproxy >/dev/null 2>&1 || user=nobody
    install -d -m 0755 "$STATE"
    install -d -m 0750 -o "$user" "$dir"
    for domain in $PROXY_ALLOW; do echo "^${domain//./\\.}\$"; done >"$dir/allow"
    cat >"$dir/tinyproxy.conf" <<EOF
# The MDP fleet's apt proxy: the bridge address only, the fleet subnet only, registries only.
User $user
Group $(id -gn "$user")
Listen $BRIDGE_IP
Port $PROXY_PORT
Allow $SUBNET.0/24
Timeout 600
MaxClients 64
ConnectPort 443
Filter "$dir/allow"
FilterType ere
FilterDefaultDeny Yes
PidFile "$dir/tinyproxy.pid"
LogFile "$dir/tinyproxy.log"
LogLevel Notice
EOF
    say "starting the apt proxy on $BRIDGE_IP:$PROXY_PORT (for $SUBNET.0/24; forwards to: $PROXY_ALLOW)"
    tinyproxy -c "$dir/tinyproxy.conf" </dev/null >>"$dir/start.log" 2>&1 9>&-
    local deadline=$((SECONDS + 15))
    until proxy_answers; do
        ((SECONDS < deadline)) || { cat "$dir/start.log" "$dir/tinyproxy.log" >&2 2>/dev/null; die "the proxy did not start"; }
        sleep 0.2
    done
}

stop_proxy() {
    local pids left
    pids=$(proxy_pids)
    [ -n "$pids" ] || return 0
    say "stopping the apt proxy"
    # shellcheck disable=SC2086
    left=$(signal_and_wait TERM 10 $pids)
    # shellcheck disable=SC2086
    [ -z "$left" ] || signal_and_wait KILL 5 $left >/dev/null
}

nspawn_pids() { pids_with_arg systemd-nspawn "--network-namespace-path=/run/netns/$(host_name "$1")"; }

host_running() {
    [ -n "$(nspawn_pids "$1")" ] && [ -e "/run/netns/$(host_name "$1")" ] && mountpoint -q "$(host_dir "$1")/root"
}

# Every host index that has anything left on this machine, found by name, not only by pid file.
known_indexes() {
    {
        ls "$STATE/hosts" 2>/dev/null || true
        ip netns list 2>/dev/null | sed -n "s/^$NAME_PREFIX\([0-9][0-9]*\)\b.*/\1/p"
        ip -o link show 2>/dev/null | sed -n "s/^[0-9]*: $VETH_PREFIX\([0-9][0-9]*\)[@:].*/\1/p"
        pids_with_arg systemd-nspawn --register=no | while read -r p; do
            tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null |
                sed -n "s|^--network-namespace-path=/run/netns/$NAME_PREFIX\([0-9][0-9]*\)\$|\1|p"
        done
    } | grep -E '^[0-9]+$' | sort -nu
}

# Stop the hosts with these indexes: all asked at once, then everything of theirs removed.
stop_hosts() {
    local i pids="" left name
    for i in "$@"; do
        left=$(nspawn_pids "$i" | tr '\n' ' ')
        [ -z "$left" ] || { say "stopping $(host_name "$i")"; pids="$pids $left"; }
    done
    if [ -n "$pids" ]; then
        # SIGTERM makes nspawn ask each host's systemd for an orderly poweroff.
        # shellcheck disable=SC2086
        left=$(signal_and_wait TERM 60 $pids)
        # shellcheck disable=SC2086
        [ -z "$left" ] || { say "killing hosts that did not stop in 60 s"; signal_and_wait KILL 10 $left >/dev/null; }
    fi
    for i in "$@"; do
        name=$(host_name "$i")
        # A host whose nspawn was killed leaves its processes behind in the namespace.
        if [ -e "/run/netns/$name" ]; then
            pids=$(ip netns pids "$name" 2>/dev/null | tr '\n' ' ') || true
            # shellcheck disable=SC2086
            [ -z "$pids" ] || signal_and_wait KILL 10 $pids >/dev/null
            ip netns delete "$name" 2>/dev/null || true
        fi
        ip link delete "$(host_veth "$i")" 2>/dev/null || true
        umount_under "$(host_dir "$i")"
        rm -rf --one-file-system "$(host_dir "$i")"
    done
}

start_host() {
    local i=$1 name ip suite dir root veth
    name=$(host_name "$i") ip=$(host_ip "$i") suite=$(host_suite "$i") dir=$(host_dir "$i") veth=$(host_veth "$i")
    root=$dir/root
    say "starting $name ($suite, $ip)"
    mkdir -p "$dir/upper" "$dir/work" "$root"
    echo "$suite" >"$dir/suite"
    mount -t overlay overlay -o "lowerdir=$CACHE/$suite,upperdir=$dir/upper,workdir=$dir/work" "$root"
    # This host's identity; written through the overlay, so it lands in the upper dir.
    tr -d '-' </proc/sys/kernel/random/uuid >"$root/etc/machine-id"
    echo "$name" >"$root/etc/hostname"
    {
        printf '127.0.0.1\tlocalhost\n'
        local j
        for j in $(seq 1 "$FLEET_N"); do printf '%s\t%s\n' "$(host_ip "$j")" "$(host_name "$j")"; done
    } >"$root/etc/hosts"
    ssh-keygen -q -A -f "$root" >/dev/null
    install -d -m 0700 "$root/root/.ssh"
    install -m 0600 "$KEY.pub" "$root/root/.ssh/authorized_keys"

    ip netns add "$name"
    ip link add "$veth" type veth peer name eth0 netns "$name"
    sysctl -qw "net.ipv6.conf.$veth.disable_ipv6=1" || true
    ip link set "$veth" master "$BRIDGE" up
    ip netns exec "$name" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 || true
    ip -n "$name" addr add "$ip/24" dev eth0
    ip -n "$name" link set lo up
    ip -n "$name" link set eth0 up

    # setsid + closed fds: the host outlives this script and holds neither its lock nor its pipes.
    setsid systemd-nspawn --quiet -D "$root" --machine="$name" --register=no --keep-unit \
        --network-namespace-path="/run/netns/$name" --resolv-conf=off --timezone=off --link-journal=no \
        --console=read-only --boot </dev/null >"$dir/console.log" 2>&1 9>&- &
    echo $! >"$dir/nspawn.pid"
}

ssh_host() { local i=$1; shift; ssh "${SSH_OPTS[@]}" "root@$(host_ip "$i")" "$@"; }

# Wait until every host's sshd answers and its systemd has finished booting.
wait_ready() {
    local n=$1 deadline=$((SECONDS + BOOT_TIMEOUT)) pending i state
    pending=$(seq 1 "$n")
    while [ -n "$pending" ]; do
        local still=""
        for i in $pending; do
            if [ -z "$(nspawn_pids "$i")" ]; then
                tail -n 30 "$(host_dir "$i")/console.log" >&2 || true
                die "$(host_name "$i") exited while booting (console: $(host_dir "$i")/console.log)"
            fi
            state=$(ssh_host "$i" 'timeout 20 systemctl is-system-running --wait' 2>/dev/null) || true
            case $state in
            running | degraded)
                say "$(host_name "$i") ($(host_suite "$i"), $(host_ip "$i")) is up: systemd $state"
                [ "$state" = running ] ||
                    ssh_host "$i" 'systemctl --failed --no-legend --plain' 2>/dev/null | sed 's/^/[fleet]   failed unit: /' >&2 || true
                ;;
            *) still="$still $i" ;;
            esac
        done
        pending=$still
        [ -z "$pending" ] && break
        if ((SECONDS >= deadline)); then
            for i in $pending; do tail -n 20 "$(host_dir "$i")/console.log" >&2 || true; done
            die "hosts$pending not ready after $BOOT_TIMEOUT s (MDP_FLEET_BOOT_TIMEOUT); consoles in $STATE/hosts/*/console.log"
        fi
        sleep 1
    done
}

write_inventory() {
    local n=$1 i tmp
    mkdir -p "$(dirname "$INVENTORY")"
    tmp=$INVENTORY.tmp.$$
    {
        cat <<EOF
# Generated by tests/fleet/fleet.sh up $n: the booted test fleet. Do not edit; inventories/local/ is
# the committed copy for the default subnet and N=3.
all:
  vars:
    mdp_bootstrap_apt_proxy: http://$BRIDGE_IP:$PROXY_PORT
    mdp_agent_monitor_address: $BRIDGE_IP
  children:
    mdp_agents:
      vars:
        ansible_user: root
        ansible_ssh_private_key_file: $KEY
        ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
        ansible_python_interpreter: /usr/bin/python3
      hosts:
EOF
        for i in $(seq 1 "$n"); do
            cat <<EOF
        fleet$i:
          ansible_host: $(host_ip "$i")
          mdp_fleet_suite: $(host_suite "$i")
          mdp_fleet_hostname: $(host_name "$i")
EOF
        done
        cat <<'EOF'
    # playbooks/cluster.yml targets this group when no mdp_cluster_hosts is given.
    mdp_cluster:
      children:
        mdp_agents:
    mdp_monitor:
      hosts:
        localhost:
          ansible_connection: local
          ansible_python_interpreter: "{{ ansible_playbook_python }}"
EOF
    } >"$tmp"
    mv -f "$tmp" "$INVENTORY"
}

cmd_up() {
    local n=${1:-3} i start=$SECONDS
    [[ $n =~ ^[1-9][0-9]*$ ]] && ((n <= MAX_HOSTS)) || die "N='$n' must be a number of hosts from 1 to $MAX_HOSTS"
    FLEET_N=$n
    need_root
    take_lock
    ensure_deps
    ensure_key
    for i in $(seq 1 "$((n < ${#SUITES[@]} ? n : ${#SUITES[@]}))"); do build_cache "$(host_suite "$i")"; done
    ensure_bridge
    start_proxy
    local extra=()
    for i in $(known_indexes); do ((i <= n)) || extra+=("$i"); done
    ((${#extra[@]} == 0)) || { say "stopping hosts beyond N=$n"; stop_hosts "${extra[@]}"; }
    local booted=0
    for i in $(seq 1 "$n"); do
        if host_running "$i"; then
            say "reusing $(host_name "$i") ($(host_suite "$i"), $(host_ip "$i")), already running"
        else
            stop_hosts "$i" # leftovers of a crash, if any
            start_host "$i"
            booted=$((booted + 1))
        fi
    done
    wait_ready "$n"
    write_inventory "$n"
    say "fleet of $n ready in $((SECONDS - start)) s ($booted booted, $((n - booted)) reused); inventory: $INVENTORY"
    say "ssh: bash tests/fleet/fleet.sh ssh INDEX [CMD]   proxy: http://$BRIDGE_IP:$PROXY_PORT"
}

# deploy.yml's monitor play, on a machine whose PID 1 is not systemd (like this one), leaves
# `mdp monitor` under start-stop-daemon listening on this fleet's bridge address: it goes down with
# the fleet. A monitor listening anywhere else is not ours and is left alone.
stop_fleet_monitor() {
    local pidfile=/run/mdp-monitor.pid pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    pgrep -P "$pid" -f "mdp monitor --listen $BRIDGE_IP:" >/dev/null 2>&1 || return 0
    say "stopping the mdp monitor that listens on $BRIDGE_IP"
    start-stop-daemon --stop --quiet --oknodo --retry TERM/10/KILL/5 --pidfile "$pidfile" || true
}

cmd_reset() {
    local n=${1:-3}
    [[ $n =~ ^[1-9][0-9]*$ ]] && ((n <= MAX_HOSTS)) || die "N='$n' must be a number of hosts from 1 to $MAX_HOSTS"
    need_root
    take_lock
    stop_fleet_monitor
    # shellcheck disable=SC2046
    stop_hosts $(known_indexes)
    cmd_up "$n"
}

cmd_down() {
    local i start=$SECONDS
    need_root
    take_lock
    stop_fleet_monitor
    # shellcheck disable=SC2046
    stop_hosts $(known_indexes)
    stop_proxy
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        say "removing bridge $BRIDGE"
        ip link delete "$BRIDGE"
    fi
    umount_under "$STATE"
    rm -rf --one-file-system "$STATE"
    rm -f "$INVENTORY"
    say "fleet is down ($((SECONDS - start)) s)"
}

# One line per host: inventory name, host name, address, suite, state, memory (PSS of its processes).
# Exit status 0 only when at least one host exists and every host is running and booted.
cmd_status() {
    need_root
    local i ok=0 any=1 state name mem
    for i in $(known_indexes); do
        any=0
        name=$(host_name "$i")
        if host_running "$i"; then
            state=$(ssh_host "$i" 'systemctl is-system-running' 2>/dev/null) || true
            state=${state:-unreachable}
        else
            state=stopped
        fi
        case $state in running | degraded) ;; *) ok=1 ;; esac
        # Processes come and go (our own ssh session just ended): a vanished one simply counts nothing.
        mem=$(ip netns pids "$name" 2>/dev/null | while read -r p; do cat "/proc/$p/smaps_rollup" 2>/dev/null || true; done |
            awk '/^Pss:/ { kb += $2 } END { printf "%d", kb / 1024 }') || true
        printf 'fleet%s\t%s\t%s\t%s\t%s\t%sMB\n' "$i" "$name" "$(host_ip "$i")" "$(host_suite "$i")" "$state" "${mem:-0}"
    done
    if [ -n "$(proxy_pids)" ]; then say "proxy: http://$BRIDGE_IP:$PROXY_PORT"; else say "proxy: stopped"; fi
    ((any == 0)) || say "no fleet hosts"
    return $((ok | any))
}

cmd_ssh() {
    local i=${1:-}
    [[ $i =~ ^[1-9][0-9]*$ ]] || die "usage: fleet.sh ssh HOST_INDEX [CMD...]"
    shift
    [ -r "$KEY" ] || die "no fleet key at $KEY: run 'fleet.sh up' first"
    host_running "$i" || die "$(host_name "$i") is not running (see 'fleet.sh status')"
    if (($#)); then ssh_host "$i" "$@"; else exec ssh -t "${SSH_OPTS[@]}" "root@$(host_ip "$i")"; fi
}

check_config
FLEET_N=0
case ${1:-} in
up) shift; cmd_up "$@" ;;
reset) shift; cmd_reset "$@" ;;
down) cmd_down ;;
status) cmd_status ;;
ssh) shift; cmd_ssh "$@" ;;
*) die "usage: fleet.sh up [N] | reset [N] | down | status | ssh HOST_INDEX [CMD...]" ;;
esac
