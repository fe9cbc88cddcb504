"""Private files: keys and state, 0600 in 0700 directories, written atomically.

Used by the agent (its key and state) and by the controller's key store (.known_machines).
"""

import binascii
import errno
import os
import stat

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


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _private_temp_file(path, text):
    """A new file beside path holding text, mode 0600 from its creation, synced to disk: the first
    half of every atomic write here (os.open with O_EXCL, not tempfile, whose imports cost the
    agent's start-up ~6 ms)."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       ".tmp-" + binascii.hexlify(os.urandom(8)).decode("ascii"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def write_private_file(path, text):
    """Write text to path atomically (temp file + fsync + rename), mode 0600."""
    tmp = _private_temp_file(path, text)
    try:
        os.rename(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def read_key_file(path):
    """The KeyPair in path; ValueError naming the file if its content is not a key."""
    return read_key_file_and_mtime(path)[0]


def read_key_file_and_mtime(path):
    """(KeyPair, st_mtime) of path from one open: a cache keyed by the mtime needs no second stat.

    os-level calls, no file object: a controller's fan-out reads one key file per machine.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        mtime = os.fstat(fd).st_mtime
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        return protocol.KeyPair.from_text(data.decode("ascii")), mtime
    except ValueError as exc:   # UnicodeDecodeError is a ValueError too
        raise ValueError("%s: %s" % (path, exc))


def create_private_file(path, text):
    """Write text to path only if path does not exist yet (atomically: a complete file or none).

    Returns False when another process created it first: two agents starting at once on one fresh
    state dir then both use the one key that won, never two different keys.
    """
    tmp = _private_temp_file(path, text)
    try:
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


# --- The keyring: rotating a machine key without downtime -----------------------------------------
#
# Three files per machine, on the agent (STATE_DIR) and on the controller (.known_machines) alike:
#   current    the key in use: what this side seals its own messages with
#   next       installed, not yet in use (between `install` and `use`)
#   previous   the key `use` replaced, still accepted until `remove`
# Every key present is accepted; a reply is sealed with the key its request used (protocol.Endpoint's
# alternate_keys). install, use and remove each change the files atomically and do nothing when
# already done, so an interrupted rotation is finished by running the same step again.
NEXT_KEY_FILE = "agent.next.key"
PREVIOUS_KEY_FILE = "agent.previous.key"
KEYRING_STEPS = ("install", "use", "remove")


class Keyring(object):
    """The paths of one machine's key files (current, next, previous) and the three rotation steps."""

    def __init__(self, current, next_path, previous):
        self.current, self.next, self.previous = current, next_path, previous

    @classmethod
    def of_agent(cls, state_dir):
        return cls(os.path.join(state_dir, KEY_FILE), os.path.join(state_dir, NEXT_KEY_FILE),
                   os.path.join(state_dir, PREVIOUS_KEY_FILE))

    def load(self):
        """(the KeyPair in use, (the other accepted KeyPairs)). OSError if there is no current key,
        ValueError naming the file whose content is not a key."""
        in_use = read_key_file(self.current)
        others = []
        for path in (self.next, self.previous):
            if os.path.exists(path):
                keys = read_key_file(path)
                if keys.key != in_use.key and all(keys.key != other.key for other in others):
                    others.append(keys)
        return in_use, tuple(others)

    def install(self, text=None):
        """Make `text` (a new random key when None) the next key; True if anything changed.

        Without text an existing next key is kept (a re-run resumes the rotation it belongs to); with
        text, the next key becomes text unless text is already the key in use or the next one.
        """
        if text is None:
            if os.path.exists(self.next):
                return False
            return create_private_file(self.next, protocol.generate_key_text())
        wanted = protocol.parse_key_text(text)
        for path in (self.current, self.next):
            if _key_or_none(path) == wanted:
                return False
        write_private_file(self.next, protocol.hexlify(wanted) + "\n")
        return True

    def use(self):
        """Put the next key in use and keep the one it replaces as previous; True if anything changed.

        Previous is written before the rename, so a crash between the two leaves the old key accepted.
        """
        if not os.path.exists(self.next):
            return False
        read_key_file(self.next)   # never put a damaged file in use
        old = _key_or_none(self.current)
        if old is not None:
            write_private_file(self.previous, protocol.hexlify(old) + "\n")
        os.rename(self.next, self.current)
        return True

    def remove(self):
        """Stop accepting the previous key; True if there was one."""
        try:
            os.unlink(self.previous)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return False
        return True

    def fingerprints(self):
        """{"in_use", "next", "previous"}: each key's fingerprint, or None where there is none."""
        out = {}
        for name, path in (("in_use", self.current), ("next", self.next), ("previous", self.previous)):
            key = _key_or_none(path)
            out[name] = protocol.key_fingerprint(key) if key is not None else None
        return out


def _key_or_none(path):
    """The key bytes in path, or None if the file is missing (ValueError if it is not a key)."""
    try:
        return read_key_file(path).key
    except (IOError, OSError) as exc:
        if exc.errno != errno.ENOENT:
            raise
        return None
