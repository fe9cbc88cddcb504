"""The agent logs how its previous run ended, with real agent processes killed and stopped.

Each agent runs as `python -m mdp_agent` on 127.0.0.1 and a free UDP port, with its own state dir.
The systemd verdict (the unit's ExecStopPost writing STATE_DIR/last-exit) is written here the way that
command writes it, since no systemd supervises these processes; the fleet test
(tests/ansible/test_fleet_watchdog.py) has real systemd write it. Runs on the oldest Python too.
"""

import os
import signal
import socket
import subprocess
import sys
import time

from mdp_agent import lastrun

AGENT_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "agent_src")


def free_udp_port():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def wait_for(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %g s waiting for %s" % (timeout, what))
        time.sleep(0.05)


class AgentRun(object):
    """One real agent process; its stderr goes to a file the test reads."""

    def __init__(self, tmp_path, name):
        self.state_dir = str(tmp_path / "state")
        self.log_path = str(tmp_path / (name + ".log"))
        env = dict(os.environ, PYTHONPATH=os.path.abspath(AGENT_SRC), PYTHONDONTWRITEBYTECODE="1")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mdp_agent", "--config", str(tmp_path / "none.conf"), "--bind", "127.0.0.1",
                 "--port", str(free_udp_port()), "--state-dir", self.state_dir, "--log-level", "info"],
                env=env, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(lambda: "listening on" in self.log() or self.proc.poll() is not None, "the agent to listen")
        assert self.proc.poll() is None, self.log()

    def log(self):
        with open(self.log_path) as handle:
            return handle.read()

    def end(self, sig):
        self.proc.send_signal(sig)
        return self.proc.wait(20)


def run_record(state_dir):
    with open(os.path.join(state_dir, lastrun.RUN_RECORD)) as handle:
        return handle.read()


def test_a_killed_agent_is_reported_at_the_next_start_and_a_clean_stop_is_not(tmp_path):
    first = AgentRun(tmp_path, "first")
    assert "start: no previous run recorded in the state directory (first start)" in first.log()
    assert run_record(first.state_dir).startswith("state=running pid=%d " % first.proc.pid)
    assert first.end(signal.SIGKILL) == -signal.SIGKILL
    assert run_record(first.state_dir).startswith("state=running ")   # nothing ran after SIGKILL

    second = AgentRun(tmp_path, "second")
    lines = [line for line in second.log().splitlines() if "restarted:" in line]
    assert len(lines) == 1, second.log()
    assert lines[0].startswith("WARNING mdp_agent: restarted: the previous run (pid %d, started " % first.proc.pid)
    assert lines[0].endswith("did not exit cleanly (killed, crashed, out of memory or the host went down)")
    assert run_record(second.state_dir).startswith("state=running pid=%d " % second.proc.pid)
    assert second.end(signal.SIGTERM) == 0
    assert run_record(second.state_dir).startswith("state=stopped pid=%d " % second.proc.pid)

    third = AgentRun(tmp_path, "third")
    assert ("INFO mdp_agent: start: the previous run (pid %d, started " % second.proc.pid) in third.log()
    assert "stopped cleanly" in third.log()
    assert "restarted:" not in third.log()
    assert third.end(signal.SIGINT) == 0


def test_an_abort_with_the_service_managers_verdict_is_reported_in_its_words(tmp_path):
    first = AgentRun(tmp_path, "first")
    assert first.end(signal.SIGABRT) == -signal.SIGABRT
    # As the unit's ExecStopPost writes it after a MemoryMax kill (systemd 243+ says oom-kill).
    with open(os.path.join(first.state_dir, lastrun.SERVICE_EXIT_FILE), "w") as handle:
        handle.write("service_result=oom-kill exit_code=killed exit_status=KILL\n")
    second = AgentRun(tmp_path, "second")
    assert ("restarted: the previous run (pid %d, started " % first.proc.pid) in second.log()
    assert ("was killed for going over its memory cap (MemoryMax) (service manager: result=oom-kill"
            " exit_code=killed exit_status=KILL)") in second.log()
    # Read once: the record describes the run before this one, so this run removed it.
    assert not os.path.exists(os.path.join(second.state_dir, lastrun.SERVICE_EXIT_FILE))
    assert second.end(signal.SIGTERM) == 0


def test_records_read_back(tmp_path):
    state = str(tmp_path)
    assert lastrun.previous_run(state) is None
    with open(os.path.join(state, lastrun.SERVICE_EXIT_FILE), "w") as handle:
        handle.write("service_result=success exit_code=exited exit_status=0\n")
    record = lastrun.previous_run(state)
    assert record["clean"] is True
    assert lastrun.describe(record) == ("the previous run stopped cleanly (service manager: result=success"
                                        " exit_code=exited exit_status=0)")
    # An old systemd (before 232) passes empty variables: the agent's own record alone decides.
    with open(os.path.join(state, lastrun.SERVICE_EXIT_FILE), "w") as handle:
        handle.write("service_result= exit_code= exit_status=\n")
    assert lastrun.describe(lastrun.previous_run(state)) == "the previous run left no record of how it ended"
    with open(os.path.join(state, lastrun.RUN_RECORD), "w") as handle:
        handle.write("garbage without pairs\n")
    record = lastrun.previous_run(state)
    assert record["clean"] is False and record["pid"] is None
    assert lastrun.describe(record).startswith("the previous run did not exit cleanly")
    # A clean stop by the agent's own account but a failure by systemd's: systemd wins.
    with open(os.path.join(state, lastrun.RUN_RECORD), "w") as handle:
        handle.write("state=stopped pid=7 started=0\n")
    with open(os.path.join(state, lastrun.SERVICE_EXIT_FILE), "w") as handle:
        handle.write("service_result=timeout exit_code=killed exit_status=KILL\n")
    record = lastrun.previous_run(state)
    assert record["clean"] is False
    assert lastrun.describe(record).startswith("the previous run (pid 7, started 1970-01-01 00:00:00 UTC) timed out")
