"""Network interfaces, their counters and listening sockets."""

import binascii
import fcntl
import socket
import struct

from . import _host, _procfs, inline

# ioctl request numbers from <linux/sockios.h>; the kernel has no file that lists IPv4 addresses
# per interface (fib_trie lacks interface names), so these are the ioctl-free way's only gap.
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_IFNAMSIZ = 16
# if_inet6 scope values (include/net/ipv6.h IPV6_ADDR_*), shifted as the kernel prints them.
_SCOPES = {0x00: "global", 0x10: "host", 0x20: "link", 0x40: "site"}
# TCP states from include/net/tcp_states.h: 0A is LISTEN; an unconnected UDP socket shows 07.
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"
# Bound on the answer: a busy host can have thousands of sockets; a datagram reply cannot.
MAX_SOCKETS = 500


def _int_or_none(text):
    try:
        return int(text.strip())
    except ValueError:
        return None


def _ipv4(name):
    """[{"address", "netmask"}] of an interface via ioctl; [] when unknown or not on this host."""
    if not _host.is_real():
        return []  # fixture trees describe another machine: its addresses cannot be asked
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        request = struct.pack("%ds" % (_IFNAMSIZ * 2 + 8), name.encode("utf-8")[:_IFNAMSIZ - 1])
        try:
            address = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)[20:24]
            netmask = fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, request)[20:24]
        except OSError:
            return []  # no IPv4 address, or the interface went away
        return [{"address": socket.inet_ntoa(address), "netmask": socket.inet_ntoa(netmask)}]
    finally:
        sock.close()


def _ipv6_by_interface():
    result = {}
    for line in _host.read_or("", "proc", "net", "if_inet6").splitlines():
        parts = line.split()
        if len(parts) != 6:
            continue
        address = socket.inet_ntop(socket.AF_INET6, binascii.unhexlify(parts[0]))
        scope = int(parts[3], 16)
        result.setdefault(parts[5], []).append({
            "address": address,
            "prefixlen": int(parts[2], 16),
            "scope": _SCOPES.get(scope, hex(scope)),
        })
    return result


def interfaces():
    """Network interfaces with addresses and link state.

    No arguments. Returns a list, sorted by name, of {"name", "mac", "mtu", "state" (operstate:
    up, down, unknown...), "speed_mbps" (null when the driver does not say), "duplex",
    "ipv4": [{"address", "netmask"}] (the primary address, by ioctl), "ipv6": [{"address",
    "prefixlen", "scope"}]}.
    """
    ipv6 = _ipv6_by_interface()
    result = []
    for name in sorted(_host.listdir("sys", "class", "net")):
        def attr(key, name=name):
            return _host.read_or("", "sys", "class", "net", name, key).strip()
        result.append({
            "name": name,
            "mac": attr("address") or None,
            "mtu": _int_or_none(attr("mtu")),
            "state": attr("operstate") or None,
            "speed_mbps": _procfs.link_speed(name),
            "duplex": attr("duplex") or None,
            "ipv4": _ipv4(name),
            "ipv6": ipv6.get(name, []),
        })
    return result


_DEV_RX = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped", "rx_fifo", "rx_frame",
           "rx_compressed", "rx_multicast")
_DEV_TX = ("tx_bytes", "tx_packets", "tx_errors", "tx_dropped", "tx_fifo", "tx_collisions",
           "tx_carrier", "tx_compressed")


@inline
def stats():
    """Cumulative traffic counters per interface from /proc/net/dev.

    No arguments. Returns a list, sorted by name, of {"name", "rx_bytes", "rx_packets",
    "rx_errors", "rx_dropped", "rx_fifo", "rx_frame", "rx_compressed", "rx_multicast",
    "tx_bytes", "tx_packets", "tx_errors", "tx_dropped", "tx_fifo", "tx_collisions",
    "tx_carrier", "tx_compressed"}.
    """
    result = []
    for line in _host.read("proc", "net", "dev").splitlines()[2:]:
        # Older kernels print "eth0:123" with no space once counters grow: split on the colon.
        name, sep, rest = line.partition(":")
        values = rest.split()
        if not sep or len(values) < 16:
            continue
        entry = {"name": name.strip()}
        entry.update(zip(_DEV_RX + _DEV_TX, (int(v) for v in values)))
        result.append(entry)
    return sorted(result, key=lambda e: e["name"])


def _address(hex_address):
    """Address from /proc/net/tcp's hex: 32-bit words in host (little-endian) byte order."""
    raw = binascii.unhexlify(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return socket.inet_ntoa(words)
    return socket.inet_ntop(socket.AF_INET6, words)


def _socket_owners(inodes):
    """{inode: (pid, process name)} for the wanted socket inodes, found through /proc/PID/fd."""
    owners = {}
    wanted = {"socket:[%d]" % i for i in inodes}
    for pid in _host.pids():
        for fd in _host.listdir("proc", str(pid), "fd"):
            target = _host.readlink("proc", str(pid), "fd", fd)
            if target in wanted:
                inode = int(target[8:-1])
                if inode not in owners:
                    comm = _host.read_or("", "proc", str(pid), "comm").strip() or None
                    owners[inode] = (pid, comm)
        if len(owners) == len(wanted):
            break
    return owners


def listening(resolve_processes=True, port=None):
    """Sockets waiting for connections: TCP in LISTEN, UDP bound and unconnected.

    resolve_processes: find the owning process through /proc/PID/fd (needs root for other
    users' processes; unresolved owners are null). port: only sockets on this port.
    Returns {"sockets": [{"proto": "tcp"|"tcp6"|"udp"|"udp6", "address", "port", "uid", "inode",
    "pid", "process"}, ...] sorted by protocol, port and address, "total": how many matched,
    "truncated": true when more than 500 matched and only the first 500 are listed}.
    """
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise ValueError("port must be an integer from 1 to 65535")
    entries = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        lines = _host.read_or("", "proc", "net", proto).splitlines()[1:]
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, remote, state = parts[1], parts[2], parts[3]
            if proto.startswith("tcp"):
                if state != _TCP_LISTEN:
                    continue
            elif state != _UDP_UNCONNECTED or not remote.endswith(":0000"):
                continue
            address, _, hex_port = local.rpartition(":")
            if port is not None and int(hex_port, 16) != port:
                continue
            entries.append({
                "proto": proto,
                "address": _address(address),
                "port": int(hex_port, 16),
                "uid": int(parts[7]),
                "inode": int(parts[9]),
                "pid": None,
                "process": None,
            })
    entries.sort(key=lambda e: (e["proto"], e["port"], e["address"]))
    total = len(entries)
    entries = entries[:MAX_SOCKETS]
    if resolve_processes:
        owners = _socket_owners([e["inode"] for e in entries if e["inode"]])
        for entry in entries:
            entry["pid"], entry["process"] = owners.get(entry["inode"], (None, None))
    return {"sockets": entries, "total": total, "truncated": total > len(entries)}


# include/net/tcp_states.h, as /proc/net/tcp prints them (hex).
TCP_STATES = {"01": "established", "02": "syn_sent", "03": "syn_recv", "04": "fin_wait1", "05": "fin_wait2",
              "06": "time_wait", "07": "close", "08": "close_wait", "09": "last_ack", "0A": "listen",
              "0B": "closing", "0C": "new_syn_recv"}
# Bounds: a busy proxy has hundreds of thousands of sockets (tens of MB of /proc/net/tcp): count at
# most MAX_SCAN_SOCKETS, and name only the busiest remotes.
MAX_SCAN_SOCKETS = 200000
MAX_TOP = 100
MAX_ROUTES = 1000        # a full BGP table has ~1 M routes; a diagnostics reply needs the first ones


def connections(top=10):
    """TCP connections counted by state and by remote address (IPv4 and IPv6), as `ss -s` and `ss -tn`.

    top: how many of the busiest remote addresses to name, 0-100. Counts at most 200,000 sockets.
    Returns {"total", "by_state": {"established": n, "time_wait": n, "listen": n, ...},
    "top_remotes": [{"address", "connections"}] (listening and unconnected sockets left out),
    "truncated"}. Example: {"total": 42, "by_state": {"established": 30, "listen": 8,
    "time_wait": 4}, "top_remotes": [{"address": "10.0.0.9", "connections": 12}], "truncated": false}.
    """
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP:
        raise ValueError("top must be an integer from 0 to %d" % MAX_TOP)
    by_state, remotes, total, truncated = {}, {}, 0, False
    for proto in ("tcp", "tcp6"):
        try:
            handle = open(_host.path("proc", "net", proto), "rb")
        except OSError:
            continue
        with handle:
            handle.readline()   # header
            for raw in handle:
                if total >= MAX_SCAN_SOCKETS:
                    truncated = True
                    break
                parts = raw.split(None, 4)
                if len(parts) < 4:
                    continue
                total += 1
                state = TCP_STATES.get(parts[3].decode("ascii", "replace").upper(), parts[3].decode("ascii", "replace"))
                by_state[state] = by_state.get(state, 0) + 1
                if state != "listen":
                    address = _address(parts[2].rpartition(b":")[0].decode("ascii"))
                    if address not in ("0.0.0.0", "::"):
                        remotes[address] = remotes.get(address, 0) + 1
    busiest = sorted(remotes.items(), key=lambda item: (-item[1], item[0]))[:top]
    return {"total": total, "by_state": by_state,
            "top_remotes": [{"address": a, "connections": n} for a, n in busiest], "truncated": truncated}


def _route_flags(value):
    # include/uapi/linux/route.h: U(p) G(ateway) H(ost) ... as `route -n` prints them.
    return "".join(letter for bit, letter in ((0x1, "U"), (0x2, "G"), (0x4, "H"), (0x10, "D"), (0x20, "M"),
                                              (0x200, "!")) if value & bit)


def routes():
    """The kernel's IPv4 and IPv6 routing tables (main table), as `ip route` and `ip -6 route`.

    No arguments. Returns {"ipv4": [{"interface", "destination", "prefix", "gateway" (null when
    on-link), "metric", "flags"}], "ipv6": [...same fields], "truncated"}; at most 1000 routes
    each. Example: {"ipv4": [{"interface": "eth0", "destination": "0.0.0.0", "prefix": 0,
    "gateway": "10.0.2.2", "metric": 100, "flags": "UG"}, ...], "ipv6": [...], "truncated": false}.
    """
    ipv4, ipv6, truncated = [], [], False
    for line in _host.read_or("", "proc", "net", "route").splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        if len(ipv4) >= MAX_ROUTES:
            truncated = True
            break
        mask = int(f[7], 16)
        gateway = _address(f[2])
        ipv4.append({"interface": f[0], "destination": _address(f[1]), "prefix": bin(mask).count("1"),  # noqa: FURB161
                     "gateway": None if gateway == "0.0.0.0" else gateway, "metric": int(f[6]),
                     "flags": _route_flags(int(f[3], 16))})
    for line in _host.read_or("", "proc", "net", "ipv6_route").splitlines():
        f = line.split()
        if len(f) < 10:
            continue
        if len(ipv6) >= MAX_ROUTES:
            truncated = True
            break
        # ipv6_route prints addresses as 32 hex digits in network order (unlike /proc/net/tcp6).
        dest = socket.inet_ntop(socket.AF_INET6, binascii.unhexlify(f[0]))
        gateway = socket.inet_ntop(socket.AF_INET6, binascii.unhexlify(f[4]))
        ipv6.append({"interface": f[9], "destination": dest, "prefix": int(f[1], 16),
                     "gateway": None if gateway == "::" else gateway, "metric": int(f[5], 16),
                     "flags": _route_flags(int(f[8], 16))})
    return {"ipv4": ipv4, "ipv6": ipv6, "truncated": truncated}


_RESOLVED_STUB = "127.0.0.53"
MAX_RESOLV_ENTRIES = 32   # resolv(5) uses 3 nameservers and 6 search domains; keep what is written


def _resolv_conf(kind, *parts):
    text = _host.read_or(None, kind, *parts)
    if text is None:
        return None
    conf = {"nameservers": [], "search": [], "options": []}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        if words[0] == "nameserver":
            conf["nameservers"].append(words[1])
        elif words[0] in ("search", "domain"):
            conf["search"] = words[1:]     # the last search/domain line wins, as in the resolver
        elif words[0] == "options":
            conf["options"].extend(words[1:])
    return {key: values[:MAX_RESOLV_ENTRIES] for key, values in conf.items()}


def dns():
    """The DNS resolvers this machine asks, from /etc/resolv.conf (and systemd-resolved's upstream).

    No arguments. Returns {"nameservers", "search", "options", "upstream": the servers behind
    systemd-resolved's stub 127.0.0.53 (from /run/systemd/resolve/resolv.conf) or null}.
    Example: {"nameservers": ["127.0.0.53"], "search": ["example.com"], "options": ["edns0"],
    "upstream": ["10.0.0.2"]}. On trusty, resolvconf with dnsmasq shows 127.0.1.1.
    """
    conf = _resolv_conf("etc", "resolv.conf")
    if conf is None:
        conf = {"nameservers": [], "search": [], "options": []}
    upstream = None
    if _RESOLVED_STUB in conf["nameservers"]:
        behind = _resolv_conf("run", "systemd", "resolve", "resolv.conf")
        upstream = behind["nameservers"] if behind else None
    conf["upstream"] = upstream
    return conf
