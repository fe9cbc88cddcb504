"""The end of the system log, filtered, and the kernel's error and OOM-kill messages."""

import errno
import os
import re
import subprocess

from . import NotAvailable, _host

# Bounds. A reply is a few datagrams, not a log shipper: at most MAX_LINES lines of at most
# MAX_LINE_CHARS each, MAX_REPLY_CHARS in all (oldest dropped first); the search looks at the
# last SCAN_LINES journal lines or SCAN_BYTES of a syslog file, so a filter that matches rarely
# still answers in bounded time.
MAX_LINES = 500
MAX_LINE_CHARS = 1000
MAX_REPLY_CHARS = 64 * 1024
MAX_MATCH = 200
SCAN_LINES = 5000
SCAN_BYTES = 1024 * 1024
# journalctl reading 5000 lines takes well under a second; logs.kernel may run it twice, and both
# must fit the agent's 10 s operation_timeout.
JOURNAL_TIMEOUT = 4.0
PROGRAM_DIRS = ["/usr/bin", "/bin"]
SYSLOG_FILES = (("log", "syslog"), ("log", "messages"))
KERN_FILES = (("log", "kern.log"),) + SYSLOG_FILES
# 3.13: "Out of memory: Kill process 1234 (java) score 900 or sacrifice child"; 4.x+: "Killed process".
_OOM = re.compile(r"[Oo]ut of memory: Kill(?:ed)? process (\d+) \(([^)]*)\)")
MAX_KMSG_RECORDS = 20000  # the kernel's ring buffer holds a few thousand records


def _journalctl():
    program = _host.find_program("journalctl", PROGRAM_DIRS)
    journal = any(os.path.isdir(_host.path(kind, "log", "journal")) for kind in ("run", "var"))
    return program if program and journal and _host.is_real() else None


def _journal_lines(extra, scan=SCAN_LINES):
    argv = [_journalctl(), "--no-pager", "-q", "-o", "short-iso", "-n", str(scan)] + extra
    try:
        code, out = _host.run(argv, JOURNAL_TIMEOUT, max_output=SCAN_BYTES, keep_end=True, merge_stderr=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError("journalctl did not answer within %g s" % JOURNAL_TIMEOUT)
    if code != 0:
        raise RuntimeError("journalctl failed (exit %d)" % code)
    return out.splitlines()


def _syslog_lines(files):
    for parts in files:
        text = _host.read_tail(SCAN_BYTES, "var", *parts)
        if text is not None:
            return "/var/" + "/".join(parts), text.splitlines()
    return None, None


def _bounded(lines, limit):
    """The last `limit` lines, each cut to MAX_LINE_CHARS, dropping the oldest past MAX_REPLY_CHARS."""
    kept, size = [], 0
    for line in reversed(lines):
        if len(kept) >= limit:
            break
        line = line[:MAX_LINE_CHARS]
        size += len(line) + 1
        if size > MAX_REPLY_CHARS:
            break
        kept.append(line)
    kept.reverse()
    return kept


def tail(lines=50, match="", source="auto"):
    """The last lines of the system log that contain a text.

    lines: how many, 1-500. match: keep only lines containing this text, case-insensitive (plain
    text, not a pattern; at most 200 characters). source: "journal", "syslog" (/var/log/syslog or
    /var/log/messages) or "auto" (the journal where one exists, else syslog). The search covers
    the last 5000 journal lines or 1 MiB of syslog; lines are cut at 1000 characters, the reply at
    64 KiB. Returns {"source", "lines": [...] oldest first, "scanned", "matched", "truncated"}.
    Example: {"source": "journal", "lines": ["2026-12-01T21:40:01+0000 web1 CRON[811]: (root) CMD
    (...)"], "scanned": 5000, "matched": 1, "truncated": false}.
    """
    if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= MAX_LINES:
        raise ValueError("lines must be an integer from 1 to %d" % MAX_LINES)
    if not isinstance(match, str) or len(match) > MAX_MATCH:
        raise ValueError("match must be a string of at most %d characters" % MAX_MATCH)
    if source not in ("auto", "journal", "syslog"):
        raise ValueError("source must be auto, journal or syslog")
    if source == "journal" or (source == "auto" and _journalctl()):
        if not _journalctl():
            raise NotAvailable("no systemd journal here")
        where, scanned = "journal", _journal_lines([])
    else:
        where, scanned = _syslog_lines(SYSLOG_FILES)
        if scanned is None:
            raise NotAvailable("no journal and no /var/log/syslog or /var/log/messages")
    needle = match.lower()
    found = [line for line in scanned if needle in line.lower()] if needle else scanned
    kept = _bounded(found, lines)
    return {"source": where, "lines": kept, "scanned": len(scanned), "matched": len(found),
            "truncated": len(kept) < min(len(found), lines)}


def _kmsg_records():
    """[(level, seconds since boot, message)] from /dev/kmsg, read without blocking to its end."""
    try:
        fd = os.open(_host.path("dev", "kmsg"), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    records = []
    try:
        while len(records) < MAX_KMSG_RECORDS:
            try:
                chunk = os.read(fd, 8192)   # /dev/kmsg gives one record per read; a file gives lines
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break          # the end of the ring buffer
                if exc.errno == errno.EPIPE:
                    continue       # records overwritten while reading: go on with the next
                raise
            if not chunk:
                break
            for line in chunk.decode("utf-8", "replace").splitlines():
                head, sep, message = line.partition(";")
                fields = head.split(",")
                if not sep or len(fields) < 3 or not fields[0].isdigit():
                    continue  # continuation lines (" KEY=value") and anything unexpected
                records.append((int(fields[0]) & 7, int(fields[2]) / 1e6, message))
    finally:
        os.close(fd)
    return records


def _stamp(line):
    """The time stamp a log line starts with: ISO (journal short-iso) or "Dec  1 21:40:01" (syslog)."""
    return line.split(" ", 1)[0] if line[:4].isdigit() else line[:15]


def _oom(message):
    m = _OOM.search(message)
    return {"pid": int(m.group(1)), "process": m.group(2)} if m else None


def kernel(n=20):
    """Kernel messages of this boot that are errors (level err or worse) and OOM kills.

    n: how many of each to return, newest last, 1-200. Reads /dev/kmsg (levels known), else the
    journal's kernel messages (journalctl -k), else /var/log/kern.log (no levels there: lines that
    say "error" count as errors). Returns {"source", "error_count", "errors": [{"level", "time",
    "message"}], "oom_count", "oom_kills": [{"pid", "process", "time", "message"}]}; "time" is
    seconds since boot (kmsg) or the log's own time stamp text. Example: {"source": "/dev/kmsg",
    "error_count": 1, "errors": [{"level": 3, "time": 12.5, "message": "ata1: COMRESET failed"}],
    "oom_count": 1, "oom_kills": [{"pid": 4242, "process": "java", "time": 8812.1, "message": "Out of
    memory: Killed process 4242 (java) ..."}]}.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 200:
        raise ValueError("n must be an integer from 1 to 200")
    records = _kmsg_records()
    if records is not None:
        source = "/dev/kmsg"
        errors = [{"level": level, "time": t, "message": m[:MAX_LINE_CHARS]} for level, t, m in records if level <= 3]
        ooms = [dict(_oom(m), time=t, message=m[:MAX_LINE_CHARS]) for _, t, m in records if _oom(m)]
    else:
        if _journalctl():
            source = "journal"
            error_lines = _journal_lines(["-k", "-b", "-p", "err"])
            all_lines = _journal_lines(["-k", "-b"])
        else:
            source, all_lines = _syslog_lines(KERN_FILES)
            if all_lines is None:
                raise NotAvailable("no /dev/kmsg, no journal and no /var/log/kern.log")
            error_lines = [line for line in all_lines if "error" in line.lower()]
        errors = [{"level": None, "time": _stamp(line), "message": line[:MAX_LINE_CHARS]} for line in error_lines]
        ooms = [dict(_oom(line), time=_stamp(line), message=line[:MAX_LINE_CHARS])
                for line in all_lines if _oom(line)]
    return {"source": source, "error_count": len(errors), "errors": errors[-n:], "oom_count": len(ooms),
            "oom_kills": ooms[-n:]}
