"""Installed packages, pending updates and whether a reboot is due (dpkg and apt: Debian, Ubuntu)."""

import os
import re
import subprocess
import time

from . import NotAvailable, _host

# Bound on listed packages: a server has 500-1500, a desktop 3000; at ~60 bytes each 5000 stay
# far under the 4 MiB message limit. The default asks for fewer (one screen).
MAX_PACKAGES = 5000
MAX_MATCH = 100
# apt-get -s reads the package lists in 1-3 s; keep under the agent's 10 s operation_timeout.
APT_TIMEOUT = 8.0
# apt-get -s output is one "Inst" line (~100 bytes) per upgrade; 2 MiB holds 20,000 of them.
MAX_APT_OUTPUT = 2 * 1024 * 1024
# "Inst libc6 [2.36-9] (2.36-9+deb12u4 Debian-Security:12/stable-security [amd64])"
_INST = re.compile(r"^Inst (\S+) (?:\[([^\]]*)\] )?\((\S+) (.*?)(?: \[[^\]]*\])?\)")
APT_DIRS = ["/usr/bin", "/bin"]


def _dpkg_paragraphs():
    text = _host.read_or(None, "var", "lib", "dpkg", "status")
    if text is None:
        raise NotAvailable("no /var/lib/dpkg/status: not a dpkg-based system")
    for paragraph in text.split("\n\n"):
        fields = {}
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation of a long field (Description, Conffiles)
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Package"):
            yield fields


def installed(match="", limit=200):
    """Installed packages and their versions, from dpkg's status file.

    match: only names containing this text (at most 100 characters). limit: how many to list,
    1-5000. Returns {"total" (installed packages), "matched", "truncated", "packages": [{"name",
    "version", "arch"}] sorted by name}. Example: {"total": 412, "matched": 1, "truncated": false,
    "packages": [{"name": "openssl", "version": "3.0.15-1~deb12u1", "arch": "amd64"}]}.
    """
    if not isinstance(match, str) or len(match) > MAX_MATCH:
        raise ValueError("match must be a string of at most %d characters" % MAX_MATCH)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PACKAGES:
        raise ValueError("limit must be an integer from 1 to %d" % MAX_PACKAGES)
    total, rows = 0, []
    for fields in _dpkg_paragraphs():
        # "install ok installed"; "deinstall ok config-files" is removed with its config kept.
        if not fields.get("Status", "").endswith(" installed"):
            continue
        total += 1
        if match in fields["Package"]:
            rows.append({"name": fields["Package"], "version": fields.get("Version"),
                         "arch": fields.get("Architecture")})
    rows.sort(key=lambda r: (r["name"], r["arch"] or ""))
    return {"total": total, "matched": len(rows), "truncated": len(rows) > limit, "packages": rows[:limit]}


def _lists_age():
    """Seconds since apt's package lists were last updated (the lists directory's mtime), or None."""
    try:
        return max(0.0, round(time.time() - os.stat(_host.path("var", "lib", "apt", "lists")).st_mtime, 1))
    except OSError:
        return None


def _parse_simulation(text):
    """apt-get -s output -> [{"name", "current", "candidate", "origin", "security"}]."""
    rows = []
    for line in text.splitlines():
        m = _INST.match(line)
        if m:
            name, current, candidate, origin = m.groups()
            rows.append({"name": name, "current": current, "candidate": candidate, "origin": origin,
                         "security": "security" in origin.lower()})
    return rows


def upgradable(limit=200):
    """Packages with a newer version in apt's lists, and how many of those are security updates.

    limit: how many to list, 1-5000 (the counts always cover all). Asks `apt-get -s dist-upgrade`
    (a simulation: it changes nothing and does not refresh the lists, so the answer is as fresh
    as the last `apt-get update`, whose age is given). Returns {"count", "security_count",
    "lists_age_seconds", "truncated", "packages": [{"name", "current", "candidate", "origin",
    "security"}]}. Example: {"count": 2, "security_count": 1, "lists_age_seconds": 3600.0,
    "truncated": false, "packages": [{"name": "libc6", "current": "2.36-9", "candidate":
    "2.36-9+deb12u4", "origin": "Debian-Security:12/stable-security", "security": true}, ...]}.
    Error "not_available" without apt-get.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PACKAGES:
        raise ValueError("limit must be an integer from 1 to %d" % MAX_PACKAGES)
    apt_get = _host.find_program("apt-get", APT_DIRS)
    if apt_get is None:
        raise NotAvailable("apt-get is not installed")
    try:
        code, out = _host.run([apt_get, "-s", "-q", "-o", "Debug::NoLocking=true", "dist-upgrade"],
                              APT_TIMEOUT, max_output=MAX_APT_OUTPUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError("apt-get -s did not finish within %g s" % APT_TIMEOUT)
    if code != 0:
        raise RuntimeError("apt-get -s failed (exit %d): %s" % (code, out.strip()[-300:]))
    rows = _parse_simulation(out)
    return {"count": len(rows), "security_count": sum(1 for r in rows if r["security"]),
            "lists_age_seconds": _lists_age(), "truncated": len(rows) > limit, "packages": rows[:limit]}


def reboot_required():
    """Whether an installed update asks for a reboot (/var/run/reboot-required, as update-notifier writes it).

    No arguments. Returns {"required": bool, "since": epoch seconds the flag was written or null,
    "packages": [names from reboot-required.pkgs]}. Example: {"required": true, "since":
    1764590000.0, "packages": ["linux-image-6.1.0-28-amd64"]}.
    """
    try:
        since = os.stat(_host.path("run", "reboot-required")).st_mtime
    except OSError:
        return {"required": False, "since": None, "packages": []}
    text = _host.read_or("", "run", "reboot-required.pkgs")
    packages = sorted({line.strip() for line in text.splitlines() if line.strip()})[:MAX_PACKAGES]
    return {"required": True, "since": since, "packages": packages}
