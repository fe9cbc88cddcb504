"""Private files: keys and state, 0600 in 0700 directories, written atomically.

Used by the agent (its key and state) and by the controller's key store (.known_machines).
"""

import errno
import os
import stat
import tempfile

from . import protocol

KEY_FILE = "agent.key"


def ensure_private_dir(path):
    """Create path (and parents) if needed and make it 0700; refuse a symlink or non-directory."""
    try:
        os.makedirs(path, 0o700)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory", path)
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


def write_private_file(path, text):
    """Write text to path atomically (temp file + fsync + rename), mode 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")   # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_key_file(path):
    """The KeyPair in path; ValueError naming the file if its content is not a key."""
    with open(path) as handle:
        text = handle.read(4096)
    try:
        return protocol.KeyPair.from_text(text)
    except ValueError as exc:
        raise ValueError("%s: %s" % (path, exc))


def create_private_file(path, text):
    """Write text to path only if path does not exist yet (atomically: a complete file or none).

    Returns False when another process created it first: two agents starting at once on one fresh
    state dir then both use the one key that won, never two different keys.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)   # fails with EEXIST instead of replacing, like O_EXCL
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            return False
        return True
    finally:
        os.unlink(tmp)


def load_or_create_key(state_dir):
    """The agent's KeyPair, generated on first start. Returns (keys, path, created)."""
    ensure_private_dir(state_dir)
    path = os.path.join(state_dir, KEY_FILE)
    created = False
    if not os.path.exists(path):
        created = create_private_file(path, protocol.generate_key_text())
    elif stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        os.chmod(path, 0o600)   # a key readable by others is a leak waiting to happen; tighten it
    return read_key_file(path), path, created
