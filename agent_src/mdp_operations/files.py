"""Files under the paths the agent config allows: stat and SHA-256, and X.509 certificate expiry.

file_paths (for files.stat) and cert_paths (for files.certificates) in /etc/mdp/agent.conf say
where these may look; a path is checked after resolving symlinks, so a link cannot lead outside.
"""

import base64
import binascii
import os
import re
import stat as stat_module
import time

from . import NotAvailable, _host

MAX_HASH_BYTES = 64 * 1024 * 1024   # SHA-256 runs ~400 MB/s: 64 MiB stays well under a second
HASH_CHUNK = 1024 * 1024
MAX_ENTRIES = 200                    # names listed for a directory
MAX_CERT_FILES = 200                 # files looked at in one call
MAX_CERT_FILE_BYTES = 1024 * 1024    # a bundle of 200 certificates is ~300 KB
MAX_CERTS = 500                      # certificates reported
MAX_CERT_ERRORS = 50
MAX_CERT_DEPTH = 3                   # /etc/letsencrypt/live/DOMAIN/cert.pem is depth 2
_PEM = re.compile(br"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END")
_TYPES = ((stat_module.S_ISREG, "file"), (stat_module.S_ISDIR, "directory"), (stat_module.S_ISLNK, "symlink"),
          (stat_module.S_ISCHR, "char_device"), (stat_module.S_ISBLK, "block_device"),
          (stat_module.S_ISFIFO, "fifo"), (stat_module.S_ISSOCK, "socket"))


def _inside(real, allowed):
    for root in allowed:
        root = os.path.realpath(root)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            return True
    return False


def _checked_path(path, kind, setting, resolve=True):
    """path, checked to lie under the allowed paths: resolved (symlinks followed) first when resolve.

    files.stat resolves, as it returns a hash of the content. files.certificates checks the path
    as written, because certificate directories are made of links that lead elsewhere
    (/etc/ssl/certs -> /usr/share/ca-certificates, letsencrypt's live/ -> archive/) and it returns
    only the validity and names of what parses as a certificate.
    """
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise ValueError("path must be an absolute path")
    allowed = _host.allowed_paths[kind]
    if not allowed:
        raise NotAvailable("no %s are configured in the agent config" % setting)
    real = os.path.realpath(path) if resolve else os.path.normpath(path)
    if not _inside(real, allowed if resolve else [os.path.normpath(p) for p in allowed]):
        raise ValueError("%s is not under the agent's %s (%s)" % (path, setting, ", ".join(allowed)))
    return real


def _names(uid, gid):
    try:
        import grp  # here, not at import: the agent's start-up pays only for what runs
        import pwd
    except ImportError:
        return None, None
    try:
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        owner = None
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = None
    return owner, group


def _sha256(real, size):
    import hashlib
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        remaining = size
        while remaining > 0:
            chunk = handle.read(min(HASH_CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def stat(path):
    """Type, size, mode, owner, times and SHA-256 of a file under the configured file_paths.

    path: absolute; after resolving symlinks it must lie under a file_paths entry of the agent
    config (none by default: then "not_available"). Files up to 64 MiB are hashed; a directory
    lists its first 200 names. Returns {"path", "real_path", "type", "size", "mode" ("0644"),
    "uid", "gid", "owner", "group", "mtime", "ctime", "sha256" (null for non-files and larger
    files), "entries" and "entry_count" (directories)}. Example: {"path": "/etc/ssh/sshd_config",
    "real_path": "/etc/ssh/sshd_config", "type": "file", "size": 3223, "mode": "0644", "uid": 0,
    "gid": 0, "owner": "root", "group": "root", "mtime": 1764590000.0, "ctime": 1764590000.0,
    "sha256": "a3f1..."}.
    """
    real = _checked_path(path, "files", "file_paths")
    st = os.stat(real)
    kind = next((name for test, name in _TYPES if test(st.st_mode)), "unknown")
    owner, group = _names(st.st_uid, st.st_gid)
    result = {"path": path, "real_path": real, "type": kind, "size": st.st_size,
              "mode": "%04o" % stat_module.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
              "owner": owner, "group": group, "mtime": st.st_mtime, "ctime": st.st_ctime, "sha256": None}
    if kind == "file" and st.st_size <= MAX_HASH_BYTES:
        result["sha256"] = _sha256(real, st.st_size)
    elif kind == "file":
        result["hash_skipped"] = "larger than %d bytes" % MAX_HASH_BYTES
    if kind == "directory":
        names = sorted(os.listdir(real))
        result.update(entries=names[:MAX_ENTRIES], entry_count=len(names))
    return result


# --- a small DER walker: just enough of X.509 (RFC 5280) to find validity and common names -------

_CN = b"\x55\x04\x03"    # OID 2.5.4.3 commonName


def _tlv(data, pos):
    """(tag, start of value, end of value) of the DER element at pos."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = bytearray(data[pos:pos + 2])
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int(binascii.hexlify(data[pos:pos + count]), 16)
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _children(data, start, end):
    pos = start
    while pos < end:
        tag, value, pos = _tlv(data, pos)
        yield tag, value, pos


def _time(tag, raw):
    """Epoch seconds of a UTCTime (0x17) or GeneralizedTime (0x18), both in UTC ("Z").

    Computed here (days from the civil date, proleptic Gregorian) rather than with calendar or
    time.strptime, whose imports would cost the agent's start-up more than this whole module.
    """
    text = raw.decode("ascii")
    if tag == 0x17:   # UTCTime YYMMDDHHMMSSZ: 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    if len(text) < 15 or not text[:14].isdigit():
        raise ValueError("bad certificate time %r" % text)
    year, month, day = int(text[:4]), int(text[4:6]), int(text[6:8])
    hour, minute, second = int(text[8:10]), int(text[10:12]), int(text[12:14])
    y = year - (1 if month <= 2 else 0)
    era, yoe = y // 400, y % 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return days * 86400 + hour * 3600 + minute * 60 + second


def _common_name(data, start, end):
    for set_tag, set_start, set_end in _children(data, start, end):
        for _, seq_start, seq_end in _children(data, set_start, set_end):
            parts = list(_children(data, seq_start, seq_end))
            if len(parts) == 2 and parts[0][0] == 0x06 and data[parts[0][1]:parts[0][2]] == _CN:
                tag, value_start, value_end = parts[1]
                raw = data[value_start:value_end]
                return raw.decode("utf-16-be" if tag == 0x1E else "utf-8", "replace")
    return None


def _parse_certificate(der):
    """{"subject_cn", "issuer_cn", "not_before", "not_after"} (epoch seconds) of one DER certificate."""
    tag, start, end = _tlv(der, 0)
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    tag, start, end = _tlv(der, start)      # tbsCertificate
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    fields = list(_children(der, start, end))
    if fields and fields[0][0] == 0xA0:      # [0] EXPLICIT version, absent in v1 certificates
        fields = fields[1:]
    if len(fields) < 5:
        raise ValueError("certificate has too few fields")
    issuer, validity, subject = fields[2], fields[3], fields[4]
    times = list(_children(der, validity[1], validity[2]))
    if len(times) != 2 or any(t[0] not in (0x17, 0x18) for t in times):
        raise ValueError("certificate validity is not two times")
    return {"subject_cn": _common_name(der, subject[1], subject[2]),
            "issuer_cn": _common_name(der, issuer[1], issuer[2]),
            "not_before": _time(times[0][0], der[times[0][1]:times[0][2]]),
            "not_after": _time(times[1][0], der[times[1][1]:times[1][2]])}


def _certificates_in(data):
    blocks = _PEM.findall(data)
    if blocks:
        return [base64.b64decode(b"".join(block.split())) for block in blocks]
    if data[:1] == b"\x30":
        return [data]       # a DER file holds one certificate
    return []


def _candidate_files(root):
    if os.path.isfile(root):
        yield root
        return
    base_depth = root.rstrip("/").count("/")
    for directory, dirs, files in os.walk(root):
        if directory.rstrip("/").count("/") - base_depth >= MAX_CERT_DEPTH:
            dirs[:] = []
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(directory, name)


def certificates(path=None, expiring_within_days=-1):
    """Expiry of the X.509 certificates in PEM or DER files under the configured cert_paths.

    path: look only at this file or directory (it must lie under cert_paths); omitted: all of
    cert_paths (default /etc/letsencrypt/live and the snakeoil certificate); links inside are
    followed (certificate stores are made of them). expiring_within_days:
    only certificates that expire within this many days (-1: all). Looks at 200 files of at most
    1 MiB, 3 directories deep; private keys and other files are skipped. Returns {"certificates":
    [{"path", "subject_cn", "issuer_cn", "not_before", "not_after" (epoch seconds), "days_left",
    "expired"}] soonest first, "files_scanned", "errors": [{"path", "error"}], "truncated"}.
    Example: {"certificates": [{"path": "/etc/letsencrypt/live/example.com/cert.pem",
    "subject_cn": "example.com", "issuer_cn": "R11", "not_before": 1760000000, "not_after":
    1767776000, "days_left": 37.5, "expired": false}], "files_scanned": 4, "errors": [],
    "truncated": false}.
    """
    if isinstance(expiring_within_days, bool) or not isinstance(expiring_within_days, int) \
            or expiring_within_days < -1:
        raise ValueError("expiring_within_days must be an integer, -1 for all")
    roots = [_checked_path(path, "certs", "cert_paths", resolve=False)] if path is not None else [
        os.path.normpath(p) for p in _host.allowed_paths["certs"]]
    if not roots:
        raise NotAvailable("no cert_paths are configured in the agent config")
    now = time.time()
    found, errors, scanned, truncated, seen = [], [], 0, False, set()
    for root in roots:
        if not os.path.exists(root):
            continue
        for name in _candidate_files(root):
            real = os.path.realpath(name)
            if real in seen or not os.path.isfile(real):
                continue
            seen.add(real)
            if scanned >= MAX_CERT_FILES or len(found) >= MAX_CERTS:
                truncated = True
                break
            scanned += 1
            try:
                with open(real, "rb") as handle:
                    data = handle.read(MAX_CERT_FILE_BYTES + 1)
                if len(data) > MAX_CERT_FILE_BYTES:
                    raise ValueError("larger than %d bytes" % MAX_CERT_FILE_BYTES)
                for der in _certificates_in(data)[:MAX_CERTS - len(found)]:
                    cert = _parse_certificate(der)
                    days = (cert["not_after"] - now) / 86400.0
                    if expiring_within_days == -1 or days <= expiring_within_days:
                        cert.update(path=name, days_left=round(days, 1), expired=days < 0)
                        found.append(cert)
            except (OSError, ValueError, binascii.Error) as exc:
                if len(errors) < MAX_CERT_ERRORS:
                    errors.append({"path": name, "error": str(exc)[:200]})
    found.sort(key=lambda c: (c["not_after"], c["path"]))
    return {"certificates": found, "files_scanned": scanned, "errors": errors, "truncated": truncated}
