"""The one place operations touch the host: reads of /proc, /sys and /etc, and running programs.

Tests point the roots at recorded fixture trees (tests/fixtures/proc/NAME, tests/fixtures/sys/NAME)
so every parser can be checked against exact, hand-computed values from another kernel.
"""

import contextlib
import os
import signal
import threading

_REAL = {"proc": "/proc", "sys": "/sys", "etc": "/etc", "var": "/var", "run": "/run", "dev": "/dev"}
_roots = dict(_REAL)
_lock = threading.Lock()

# Programs run by operations see only this environment: no inherited secrets, C locale so the
# output we parse is not translated.
MINIMAL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
# Bound on what we keep of a program's output; service status output is a few hundred bytes.
MAX_OUTPUT = 64 * 1024
READ_CHUNK = 64 * 1024   # most /proc files arrive in one read()


# Paths the agent config allows files.stat and files.certificates to read (file_paths, cert_paths).
allowed_paths = {"files": (), "certs": ()}


def configure_paths(files=(), certs=()):
    """Set the allowed paths from the agent config (at start and on SIGHUP)."""
    allowed_paths["files"] = tuple(files)
    allowed_paths["certs"] = tuple(certs)


def set_roots(proc=None, sys=None, etc=None, var=None, run=None, dev=None):
    """Point reads at other trees (None keeps the current one); returns the previous roots."""
    with _lock:
        previous = dict(_roots)
        for key, value in (("proc", proc), ("sys", sys), ("etc", etc), ("var", var), ("run", run),
                           ("dev", dev)):
            if value is not None:
                _roots[key] = value
        return previous


def reset_roots():
    set_roots(**_REAL)


@contextlib.contextmanager
def roots(proc=None, sys=None, etc=None, var=None, run=None, dev=None):
    previous = set_roots(proc, sys, etc, var, run, dev)
    try:
        yield
    finally:
        set_roots(**previous)


def is_real():
    """True when reading this machine itself (not fixtures); ioctl-based answers need that."""
    return _roots == _REAL


def identity():
    """A key that changes when the roots change, so cached samples never mix two hosts."""
    return (_roots["proc"], _roots["sys"])


def path(kind, *parts):
    """Host path for kind ('proc', 'sys', 'etc', 'var', 'run' or 'dev') and parts below it."""
    return os.path.join(_roots[kind], *parts)


def read(kind, *parts):
    """Text of a host file; IOError/OSError propagate (callers decide what absence means).

    os.open/os.read, not open(): no buffered file object per read, a third of reading /proc/meminfo.
    """
    fd = os.open(path(kind, *parts), os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def read_or(default, kind, *parts):
    """Text of a host file, or default when it is absent or unreadable (a process that exited,
    a /sys attribute the driver does not implement: EINVAL on a virtual NIC's speed)."""
    try:
        return read(kind, *parts)
    except OSError:
        return default


def listdir(kind, *parts):
    try:
        return os.listdir(path(kind, *parts))
    except OSError:
        return []


def readlink(kind, *parts):
    try:
        return os.readlink(path(kind, *parts))
    except OSError:
        return None


def pids():
    """Process ids present now, as ints."""
    return [int(name) for name in listdir("proc") if name.isdigit()]


def page_size():
    return os.sysconf("SC_PAGE_SIZE")


def clock_ticks():
    return os.sysconf("SC_CLK_TCK")


def run(argv, timeout=5.0, max_output=MAX_OUTPUT, keep_end=False, merge_stderr=True):
    """Run argv (a list, never a shell) with the minimal environment and a timeout.

    Returns (exit_code, output_text) with stderr merged (unless merge_stderr is false: then it is
    dropped) and output bounded by max_output bytes: its start, or its end when keep_end (logs).
    Raises OSError when the program cannot be started, and subprocess.TimeoutExpired after
    killing it when it runs past timeout.
    """
    import subprocess  # here: the families that run programs import it; /proc readers (ping) need not
    # Its own session, so a timeout kills everything it started: a grandchild left holding the
    # output pipe would otherwise keep us waiting.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_stderr else subprocess.DEVNULL,
                            env=MINIMAL_ENV, close_fds=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    out = out[-max_output:] if keep_end else out[:max_output]
    return proc.returncode, out.decode("utf-8", "replace")


def find_program(name, dirs=("/usr/sbin", "/usr/bin", "/sbin", "/bin")):
    """Absolute path of an executable program in dirs, or None."""
    for d in dirs:
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def read_tail(max_bytes, kind, *parts):
    """The last max_bytes of a host file as text (whole lines only when it was cut), or None if absent."""
    try:
        with open(path(kind, *parts), "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except OSError:
        return None
    if size > max_bytes:
        data = data.partition(b"\n")[2]  # the first line was cut in the middle
    return data.decode("utf-8", "replace")


def processes_named(names):
    """{name: pid} of running processes whose comm is in names (first found of each)."""
    found = {}
    for pid in pids():
        comm = read_or("", "proc", str(pid), "comm").strip()
        if comm in names and comm not in found:
            found[comm] = pid
    return found
