"""Who is logged in (utmp), who logged in lately (wtmp), and accounts without a password hash."""

import socket
import struct

from . import _host

# struct utmp as glibc writes it on Linux (x86, x86-64, arm, arm64 alike: 384 bytes, 32-bit times):
# type, pad, pid, line[32], id[4], user[32], host[256], exit (2 shorts), session, tv_sec, tv_usec,
# addr_v6[16], unused[20].
UTMP = struct.Struct("=h2xi32s4s32s256shhiii16s20s")
_BOOT_TIME, _USER_PROCESS = 2, 7
# Bounds: sessions on one machine are few; wtmp grows for months, so only its end is read.
MAX_SESSIONS = 200
MAX_LOGINS = 200
WTMP_SCAN_RECORDS = 5000           # 1.9 MB of wtmp: weeks of logins on a busy host
MAX_ACCOUNTS = 2000


def _text(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _address(raw):
    """ut_addr_v6: IPv4 in the first word when the other three are 0, else IPv6; None when empty."""
    if raw == b"\0" * 16:
        return None
    if raw[4:] == b"\0" * 12:
        return socket.inet_ntoa(raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def _records(data):
    for offset in range(0, len(data) - UTMP.size + 1, UTMP.size):
        kind, pid, line, _, user, host, _, _, _, sec, usec, addr, _ = UTMP.unpack_from(data, offset)
        yield {"type": kind, "pid": pid, "line": _text(line), "user": _text(user), "host": _text(host) or None,
               "time": sec + usec / 1e6, "address": _address(addr)}


def _read_records(max_records, kind, *parts):
    try:
        with open(_host.path(kind, *parts), "rb") as f:
            f.seek(0, 2)
            size = f.tell() - f.tell() % UTMP.size
            start = max(0, size - max_records * UTMP.size)
            f.seek(start)
            return f.read(size - start)
    except OSError:
        return None


def sessions():
    """Logged-in sessions, from utmp (/run/utmp), as `who` shows them.

    No arguments. Returns {"count", "truncated", "sessions": [{"user", "line", "host", "address",
    "pid", "login_time" (epoch seconds)}]} in login order, at most 200. Example: {"count": 1,
    "truncated": false, "sessions": [{"user": "alice", "line": "pts/0", "host": "10.0.0.9",
    "address": "10.0.0.9", "pid": 2211, "login_time": 1764590000.0}]}.
    """
    data = _read_records(MAX_SESSIONS * 8, "run", "utmp") or b""
    rows = [{"user": r["user"], "line": r["line"], "host": r["host"], "address": r["address"], "pid": r["pid"],
             "login_time": r["time"]} for r in _records(data) if r["type"] == _USER_PROCESS and r["user"]]
    return {"count": len(rows), "truncated": len(rows) > MAX_SESSIONS, "sessions": rows[:MAX_SESSIONS]}


def logins(n=20):
    """Recent logins and reboots, newest first, from the end of wtmp (/var/log/wtmp), as `last` shows them.

    n: how many, 1-200. Only the last 5000 wtmp records are read. Returns {"logins": [{"user"
    ("reboot" for a boot record), "line", "host", "address", "time"}], "records_scanned"}.
    Example: {"logins": [{"user": "alice", "line": "pts/0", "host": "10.0.0.9", "address":
    "10.0.0.9", "time": 1764590000.0}, {"user": "reboot", "line": "~", "host": "6.1.0-28-amd64", ...}],
    "records_scanned": 120}.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_LOGINS:
        raise ValueError("n must be an integer from 1 to %d" % MAX_LOGINS)
    data = _read_records(WTMP_SCAN_RECORDS, "var", "log", "wtmp") or b""
    rows = []
    for r in _records(data):
        if r["type"] == _USER_PROCESS and r["user"]:
            rows.append({"user": r["user"], "line": r["line"], "host": r["host"], "address": r["address"],
                         "time": r["time"]})
        elif r["type"] == _BOOT_TIME:
            rows.append({"user": "reboot", "line": r["line"], "host": r["host"], "address": None, "time": r["time"]})
    rows.reverse()
    return {"logins": rows[:n], "records_scanned": len(data) // UTMP.size}


def without_password():
    """Accounts with no usable password hash: an empty one (no password asked) or a locked one.

    No arguments; needs root (it reads /etc/shadow; hashes never leave the machine). Returns
    {"empty": [{"name", "uid", "shell"}] (login without a password where PAM allows nullok),
    "locked_count", "with_hash_count", "locked": [names] (at most 2000)}. Example: {"empty": [],
    "locked_count": 18, "with_hash_count": 1, "locked": ["daemon", "bin", ...]}.
    """
    passwd = {}
    for line in _host.read("etc", "passwd").splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[0]:
            passwd[fields[0]] = fields
    shadow = {}
    for line in _host.read("etc", "shadow").splitlines():
        fields = line.split(":")
        if len(fields) >= 2 and fields[0]:
            shadow[fields[0]] = fields[1]
    empty, locked, with_hash = [], [], 0
    for name in sorted(passwd):
        fields = passwd[name]
        # The hash lives in shadow when passwd says "x"; an old-style passwd may hold it itself.
        hashed = shadow.get(name, "!") if fields[1] == "x" else fields[1]
        if hashed == "":
            empty.append({"name": name, "uid": int(fields[2]) if fields[2].isdigit() else None, "shell": fields[6]})
        elif hashed[:1] in ("!", "*") or len(hashed) < 13:  # locked, disabled, or no crypt(3) hash
            locked.append(name)
        else:
            with_hash += 1
    return {"empty": empty[:MAX_ACCOUNTS], "locked_count": len(locked), "with_hash_count": with_hash,
            "locked": locked[:MAX_ACCOUNTS]}
