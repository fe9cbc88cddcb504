"""The key store: .known_machines/<ip>.txt holds each machine's key, exactly as the agent wrote it.

Layout (directories 0700, files 0600, every write atomic):
    .known_machines/<ip>.txt            trusted keys
    .known_machines/pending/<ip>.txt    keys agreed by enrolment (HELLO), waiting for `mdp keys accept IP`
    .known_machines/pending/<ip>.fingerprint   that enrolment's fingerprint (of its transcript, which
                                        the agent logs too; it cannot be computed from the key)
    .known_machines/rejected/<ip>.txt   keys refused (a known machine showing a different key, or rejected)
    .known_machines/next/<ip>.txt       during a key rotation: the agent's new key, installed, not yet in use
    .known_machines/previous/<ip>.txt   during a key rotation: the key `use` replaced, accepted until `remove`
The trusted <ip>.txt is the key in use (requests are sealed with it); reports are accepted under any
key of the ring (mdp_agent.keyfile.Keyring; docs/security.md, "Rotating keys").
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from mdp_agent import protocol
from mdp_agent.errors import MDPError
from mdp_agent.keyfile import Keyring, ensure_private_dir, read_key_file, read_key_file_and_mtime, write_private_file

DEFAULT_DIR = ".known_machines"
RING_STATES = ("next", "previous")   # the keyring's other keys, beside the trusted one (see Keyring)


class KeyStoreError(MDPError):
    """A key problem, stated in words that name the machine and the file (code "no_key", "bad_key", ...)."""

    def __init__(self, message: str, code: str = "no_key"):
        super().__init__(code, message)


def default_path() -> Path:
    return Path(os.environ.get("MDP_KNOWN_MACHINES") or DEFAULT_DIR)


# An IPv4 address already in canonical form (no leading zeros, no spaces): the usual case, taken as
# it is without building an ipaddress object (a fan-out asks once per machine; ~25 us each).
_CANONICAL_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                             r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\Z")


def normalise_ip(ip: str) -> str:
    """The canonical text of an IP address; KeyStoreError for anything else (no paths sneak in).

    An IPv4 address as an IPv6 socket shows it (::ffff:10.0.0.5) is the IPv4 address.
    """
    if _CANONICAL_IPV4.match(ip):
        return ip
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise KeyStoreError(f"{ip!r} is not an IP address") from None
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def unmap_ip(ip: str) -> str:
    """::ffff:a.b.c.d -> a.b.c.d (cheap: called per datagram); any other text unchanged."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def ip_sort_key(ip: str):
    """Sorts IPv4 before IPv6, each numerically (ipaddress objects of two versions do not compare)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return (9, 0, ip)
    return (address.version, int(address), "")


class KeyStore:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_path()
        self._dir = str(self.path)
        self._cache: dict[str, tuple[float, protocol.KeyPair]] = {}
        self._paths: dict[str, str] = {}   # ip as given -> its trusted key file
        self._ring_cache: dict[tuple[str, str], tuple[int, protocol.KeyPair]] = {}

    def file(self, ip: str, state: str = "trusted") -> Path:
        ip = normalise_ip(ip)
        base = self.path if state == "trusted" else self.path / state
        return base / f"{ip}.txt"

    def lookup(self, ip: str) -> protocol.KeyPair | None:
        """The trusted key for ip, or None: the receive path's cheap form of get() (no hint, no exception).

        A cached key costs one stat per call, so a revoked or replaced key counts at once; a key not
        yet cached costs one open (its mtime from fstat). Plain strings, no pathlib: the collector
        asks once per datagram, a fan-out once per machine.
        """
        path = self._paths.get(ip)
        if path is None:
            try:
                path = os.path.join(self._dir, normalise_ip(ip) + ".txt")
            except KeyStoreError:
                return None
            if len(self._paths) > 100_000:   # bounded: addresses come from datagrams
                self._paths.clear()
            self._paths[ip] = path
        cached = self._cache.get(ip)
        if cached is not None:
            try:
                if os.stat(path).st_mtime == cached[0]:
                    return cached[1]
            except OSError:
                return None
        try:
            keys, mtime = read_key_file_and_mtime(path)
        except (OSError, ValueError):
            return None
        self._cache[ip] = (mtime, keys)
        return keys

    def alternates(self, ip: str) -> tuple[protocol.KeyPair, ...]:
        """The other keys of ip's keyring (next, previous) during a rotation: the receive path asks only
        when the trusted key did not open a datagram, so steady state costs no extra stat."""
        out = []
        for state in RING_STATES:
            try:
                path = self.file(unmap_ip(ip), state)
                mtime = path.stat().st_mtime_ns
            except (KeyStoreError, OSError):
                continue
            cached = self._ring_cache.get((ip, state))
            if cached is None or cached[0] != mtime:
                try:
                    cached = (mtime, read_key_file(str(path)))
                except (OSError, ValueError):
                    continue
                if len(self._ring_cache) > 100_000:   # bounded: addresses come from datagrams
                    self._ring_cache.clear()
                self._ring_cache[(ip, state)] = cached
            out.append(cached[1])
        return tuple(out)

    def keyring(self, ip: str) -> Keyring:
        """ip's key files as a Keyring, for the rotation steps (`mdp keys install|use|remove IP`)."""
        for directory in (self.path, *(self.path / state for state in RING_STATES)):
            ensure_private_dir(str(directory))
        self._forget(ip)
        return Keyring(str(self.file(ip)), str(self.file(ip, "next")), str(self.file(ip, "previous")))

    def get(self, ip: str) -> protocol.KeyPair:
        """The trusted key for ip (cached until the file changes); KeyStoreError naming the cause."""
        keys = self.lookup(ip)
        if keys is not None:
            return keys
        path = self.file(ip)
        if path.exists():
            try:
                read_key_file(str(path))
            except (OSError, ValueError) as exc:
                raise KeyStoreError(f"key for {ip} is unreadable: {exc}", "bad_key") from None
        hint = " (a key is pending: `mdp keys accept " + ip + "`)" if self.file(ip, "pending").exists() else ""
        raise KeyStoreError(f"no key for {ip} in {self.path}{hint}")

    def get_text(self, ip: str, state: str = "trusted") -> str | None:
        try:
            return self.file(ip, state).read_text().strip()
        except FileNotFoundError:
            return None

    def put(self, ip: str, key_text: str, state: str = "trusted", replace: bool = False) -> Path:
        """Store a key; a different trusted key is never replaced unless replace=True."""
        protocol.parse_key_text(key_text)   # refuse anything that is not a key
        path = self.file(ip, state)
        existing = self.get_text(ip, state)
        if state == "trusted" and existing and existing != key_text.strip() and not replace:
            raise KeyStoreError(f"{path} holds a different key for {ip}; revoke it first or rotate deliberately",
                                "key_mismatch")
        ensure_private_dir(str(self.path))
        ensure_private_dir(str(path.parent))
        write_private_file(str(path), key_text.strip() + "\n")
        self._forget(ip)
        return path

    def _forget(self, ip: str):
        for name in (ip, normalise_ip(ip)):
            self._cache.pop(name, None)

    def count(self, state: str = "trusted") -> int:
        base = self.path if state == "trusted" else self.path / state
        return sum(1 for _ in base.glob("*.txt")) if base.is_dir() else 0

    def fingerprint(self, ip: str, state: str = "trusted") -> str | None:
        """A pending key's enrolment fingerprint (what the agent logged); any other key's own fingerprint."""
        if state == "pending":
            try:
                return self._fingerprint_file(ip).read_text().strip() or None
            except FileNotFoundError:
                return None
        text = self.get_text(ip, state)
        try:
            return protocol.key_fingerprint(protocol.parse_key_text(text)) if text is not None else None
        except ValueError:
            return None

    def list(self) -> list[dict]:
        """Every key file: [{"ip", "state", "fingerprint", "path"}] sorted by state then address."""
        rows = []
        for state in ("trusted", *RING_STATES, "pending", "rejected"):
            base = self.path if state == "trusted" else self.path / state
            for path in sorted(base.glob("*.txt")) if base.is_dir() else []:
                try:
                    ip = normalise_ip(path.stem)
                except KeyStoreError:
                    continue
                rows.append({"ip": ip, "state": state, "fingerprint": self.fingerprint(ip, state), "path": str(path)})
        order = {"trusted": 0, "next": 1, "previous": 2, "pending": 3, "rejected": 4}
        return sorted(rows, key=lambda r: (order[r["state"]], ip_sort_key(r["ip"])))

    def ips(self) -> list[str]:
        return [row["ip"] for row in self.list() if row["state"] == "trusted"]

    def _fingerprint_file(self, ip: str) -> Path:
        return self.file(ip, "pending").with_suffix(".fingerprint")

    def put_pending(self, ip: str, key_text: str, fingerprint: str) -> Path:
        """File an enrolment's key and fingerprint under pending/, replacing any earlier one for ip.

        The old pair goes first and the fingerprint is written before the key, so whenever a pending
        key exists its fingerprint file belongs to it (the monitor and `mdp keys accept` are two processes).
        """
        protocol.parse_key_text(key_text)
        path = self.file(ip, "pending")
        ensure_private_dir(str(self.path))
        ensure_private_dir(str(path.parent))
        for old in (path, self._fingerprint_file(ip)):
            old.unlink(missing_ok=True)
        write_private_file(str(self._fingerprint_file(ip)), fingerprint + "\n")
        write_private_file(str(path), key_text.strip() + "\n")
        return path

    def accept(self, ip: str, fingerprint: str | None = None) -> Path:
        """Trust the key a machine enrolled (pending -> trusted); with fingerprint, only if the enrolment's
        fingerprint matches it (compared in constant time). Without, it is trust on first use."""
        text = self.get_text(ip, "pending")
        if text is None:
            raise KeyStoreError(f"no pending key for {ip} in {self.path / 'pending'}")
        if fingerprint is not None:
            actual = self.fingerprint(ip, "pending")
            # Read the key again: if the monitor filed a newer enrolment meanwhile, neither is taken.
            if actual is None or not protocol.same_fingerprint(fingerprint, actual) or \
                    self.get_text(ip, "pending") != text:
                raise KeyStoreError(f"the enrolment of {ip} has fingerprint {actual}, not {fingerprint}: not "
                                    "accepted (compare with the enrolment fingerprint the agent logs)",
                                    "fingerprint_mismatch")
        path = self.put(ip, text)
        self.file(ip, "pending").unlink()
        self._fingerprint_file(ip).unlink(missing_ok=True)
        return path

    def reject(self, ip: str) -> Path:
        """Refuse a pending key (kept under rejected/ for the record)."""
        text = self.get_text(ip, "pending")
        if text is None:
            raise KeyStoreError(f"no pending key for {ip} in {self.path / 'pending'}")
        path = self.put(ip, text, state="rejected")
        self.file(ip, "pending").unlink()
        self._fingerprint_file(ip).unlink(missing_ok=True)
        return path

    def revoke(self, ip: str) -> Path:
        """Stop trusting a machine: its key moves to rejected/."""
        text = self.get_text(ip)
        if text is None:
            raise KeyStoreError(f"no key for {ip} in {self.path}")
        path = self.put(ip, text, state="rejected")
        self.file(ip).unlink()
        self._forget(ip)
        return path
