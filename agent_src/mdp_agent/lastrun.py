"""Why the agent was (re)started: how its previous run ended, read from two files in the state dir.

RUN_RECORD says state=running from start until the agent exits cleanly (SIGTERM, SIGINT), when it
says state=stopped; finding state=running at the next start means the previous run was killed,
crashed or lost its host. This works under any supervisor (upstart included). SERVICE_EXIT_FILE is written after every stop by the
service manager: the systemd unit's ExecStopPost records $SERVICE_RESULT, $EXIT_CODE and $EXIT_STATUS
(systemd 232 and later), which tell an out-of-memory kill (MemoryMax) from a signal or an exit code.
Neither file is needed to run; a state dir the agent cannot write only costs this record.
"""

import logging
import os
import time

log = logging.getLogger("mdp_agent")

RUN_RECORD = "agent.run"
# The name the role's unit template writes to (mdp-agent.service.j2, ExecStopPost); a test holds them equal.
SERVICE_EXIT_FILE = "last-exit"

# systemd's $SERVICE_RESULT values (systemd.exec(5)) in words.
SERVICE_RESULTS = {
    "success": "stopped cleanly",
    "oom-kill": "was killed for going over its memory cap (MemoryMax)",
    "signal": "was killed by a signal",
    "core-dump": "crashed (core dump)",
    "exit-code": "exited with an error",
    "timeout": "timed out",
    "watchdog": "missed its watchdog",
    "start-limit-hit": "hit the start limit",
    "resources": "could not get the resources to run",
    "protocol": "broke the service protocol",
}


def _read_pairs(path):
    """key=value words of a small file -> dict; None when the file is absent or unreadable."""
    try:
        with open(path) as handle:
            text = handle.read(4096)
    except (IOError, OSError):
        return None
    pairs = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep:
            pairs[key] = value
    return pairs


def _write_atomically(path, text):
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.chmod(temporary, 0o600)
    os.rename(temporary, path)


def previous_run(state_dir):
    """How the previous run ended: {"clean": True/False/None, "pid", "started", "service_result",
    "exit_code", "exit_status"} (missing keys unknown); None when nothing was recorded (a first start)."""
    run = _read_pairs(os.path.join(state_dir, RUN_RECORD))
    service = _read_pairs(os.path.join(state_dir, SERVICE_EXIT_FILE))
    if run is None and service is None:
        return None
    record = {"clean": None}
    if run is not None:
        record["clean"] = run.get("state") == "stopped"
        record["pid"] = run.get("pid")
        record["started"] = run.get("started")
    if service:
        for key in ("service_result", "exit_code", "exit_status"):
            if service.get(key):
                record[key] = service[key]
        if record.get("service_result"):
            # The service manager saw the exit; an old one (before systemd 232) passes empty values.
            record["clean"] = record["clean"] is not False and record["service_result"] == "success"
    return record


def describe(record):
    """One line saying how the previous run ended, for the log."""
    if record is None:
        return "no previous run recorded in the state directory (first start)"
    result = record.get("service_result")
    if result:
        words = SERVICE_RESULTS.get(result, "ended")
    elif record["clean"]:
        words = "stopped cleanly"
    elif record["clean"] is None:
        return "the previous run left no record of how it ended"
    else:
        words = "did not exit cleanly (killed, crashed, out of memory or the host went down)"
    line = "the previous run"
    if record.get("pid"):
        line += " (pid %s" % record["pid"]
        try:
            line += ", started %s" % time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(record["started"])))
        except (TypeError, ValueError):
            pass
        line += ")"
    line += " " + words
    if result:
        line += " (service manager: result=%s exit_code=%s exit_status=%s)" % (
            result, record.get("exit_code", "?"), record.get("exit_status", "?"))
    return line


def log_previous_run(state_dir):
    """Log how the previous run ended (a warning unless it was clean); returns the record."""
    record = previous_run(state_dir)
    if record is not None and record["clean"] is False:
        log.warning("restarted: %s", describe(record))
    else:
        log.info("start: %s", describe(record))
    return record


_STARTED = []   # this run's start time, as mark_running wrote it


def mark_running(state_dir):
    """Record this run as running until mark_stopped. Returns False (and logs) when it cannot be written."""
    _STARTED[:] = [time.time()]
    try:
        try:
            os.remove(os.path.join(state_dir, SERVICE_EXIT_FILE))   # it described the run before this one
        except OSError:
            pass
        _write_atomically(os.path.join(state_dir, RUN_RECORD),
                          "state=running pid=%d started=%.3f\n" % (os.getpid(), _STARTED[0]))
        return True
    except (IOError, OSError) as exc:
        log.warning("cannot record this run in %s (%s): the next start cannot tell a crash from a clean stop",
                    state_dir, exc)
        return False


def mark_stopped(state_dir):
    """A clean exit: the next start reads state=stopped and reports no crash."""
    try:
        _write_atomically(os.path.join(state_dir, RUN_RECORD), "state=stopped pid=%d started=%.3f stopped=%.3f\n"
                          % (os.getpid(), _STARTED[0] if _STARTED else 0, time.time()))
    except (IOError, OSError) as exc:
        log.warning("cannot record the clean stop in %s: %s", state_dir, exc)
