"""AES-256-GCM behind one small interface: seal(key, nonce, plaintext, aad) and open(key, nonce, data, aad).

Two implementations give identical bytes (tests/agent/test_aead.py proves it with hypothesis):

* LibcryptoAesGcm: the host's own OpenSSL libcrypto through ctypes, standard library only. This is
  what the agent uses, on Python 3.4+ and OpenSSL 1.0.1 (Ubuntu 14.04) through OpenSSL 3: it uses
  only EVP calls that exist in all of them (EVP_CIPHER_CTX_new/free, EVP_aes_256_gcm,
  EVP_{En,De}cryptInit_ex/Update/Final_ex, EVP_CIPHER_CTX_ctrl with the GCM controls, whose
  numbers have never changed).
* CryptographyAesGcm: the `cryptography` package's AESGCM, for the controller and the monitor
  (ansible-core depends on `cryptography`, so wherever the controller runs it is there). It lives
  here, not in controller_src, so that the one interface and its equality test sit in one place
  and also run under the agent's oldest Python; the agent itself never constructs it.

The importer chooses: the agent calls libcrypto(), the controller cryptography(). Neither falls
back to the other, and nothing ever falls back to clear text: if AES-GCM cannot be had, the
constructor raises AeadUnavailable saying what is missing and what to install.

Sealed data is ciphertext || 16-byte tag (the layout of RFC 5116 and of `cryptography`). Keys are
32 bytes, nonces 12 bytes; anything else is refused with ValueError. The caller owns the nonce
argument: a (key, nonce) pair must never seal two different plaintexts (docs/mdp2-design.md).

Thread safety: contexts and their output buffers are per thread (threading.local), so any
number of threads may seal and open at once; the agent's own assumption is weaker
(it seals and opens on the loop thread only; operations run on worker threads and hand their
results back). Nothing mutable is shared but the loaded library, whose EVP calls are thread-safe in
OpenSSL 1.1+; for 1.0.x, importing _ssl, which we then do, installs the locking callbacks it needs.
"""

import os
import re
import threading

# ctypes is imported when a libcrypto is first loaded (_Libcrypto), not here: the controller, which
# seals with `cryptography`, then never loads it (a few ms of every `mdp send`, issue 11).
ctypes = None

KEY_SIZE = 32      # AES-256
NONCE_SIZE = 12    # GCM's native IV size: used directly as J0's prefix, no GHASH of the IV
TAG_SIZE = 16      # full-length tag, never truncated (NIST SP 800-38D s5.2.1.2)
REUSED_BUFFER_BYTES = 4096   # per context (two per thread); larger data gets a buffer of its own

# EVP_CIPHER_CTX_ctrl commands for GCM: the same numbers from OpenSSL 1.0.1 to 3.x (evp.h).
EVP_CTRL_GCM_SET_IVLEN = 0x9
EVP_CTRL_GCM_GET_TAG = 0x10
EVP_CTRL_GCM_SET_TAG = 0x11

# Tried after the libcrypto this interpreter already has loaded and ctypes.util.find_library:
# OpenSSL 3, 1.1, 1.0.x (Debian/Ubuntu name it .so.1.0.0, Red Hat .so.10), then the dev symlink.
KNOWN_SONAMES = ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so.1.0.0", "libcrypto.so.1.0.2",
                 "libcrypto.so.10", "libcrypto.so")

INSTALL_HINT = ("install OpenSSL's libcrypto 1.0.1 or newer: on Debian/Ubuntu the package libssl1.0.0 "
                "(Ubuntu 14.04/16.04), libssl1.1 (Ubuntu 18.04/20.04, Debian 10/11) or libssl3 "
                "(Ubuntu 22.04+, Debian 12+)")


class AeadError(Exception):
    """Base of this module's errors: a stable `code` and a prose `message`, like ProtocolError."""

    code = "aead_error"

    def __init__(self, message):
        Exception.__init__(self, message)
        self.message = message


class AeadUnavailable(AeadError):
    """AES-256-GCM cannot be provided here; the message says what is missing and what to install."""

    code = "aead_unavailable"


class InvalidTag(AeadError):
    """The data did not authenticate under this key, nonce and associated data (or was cut short)."""

    code = "bad_tag"


def _check_sizes(key, nonce):
    if len(key) != KEY_SIZE:
        raise ValueError("AES-256-GCM key must be %d bytes, got %d" % (KEY_SIZE, len(key)))
    if len(nonce) != NONCE_SIZE:
        raise ValueError("AES-GCM nonce must be %d bytes, got %d" % (NONCE_SIZE, len(nonce)))


def _as_bytes(value, name):
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError("%s must be bytes, not %s" % (name, type(value).__name__))


# --- Finding the library ------------------------------------------------------------------------

def _import_extensions(names):
    """Import the named OpenSSL extensions that exist; their files, for those that have one.

    _hashlib is enough to map the interpreter's libcrypto; _ssl (which also maps libssl, ~0.8 MiB
    of RSS) is imported only when _hashlib did not do it, or for OpenSSL 1.0's locking callbacks.
    """
    paths = []
    for name in names:
        try:
            module = __import__(name)
        except ImportError:
            continue
        path = getattr(module, "__file__", None)
        if path:
            paths.append(path)
    return paths


def _linked_sonames(extension_paths):
    """The libcrypto sonames these extension files were linked against (their DT_NEEDED).

    Read from the files' dynamic string tables, where the linker wrote them: no ldd, no ELF
    parser, and a wrong match costs nothing but the order in which candidates are tried.
    """
    names = []
    for path in extension_paths:
        try:
            with open(path, "rb") as handle:
                data = handle.read(16 * 1024 * 1024)
        except (IOError, OSError):
            continue
        for match in re.findall(b"libcrypto[A-Za-z0-9_-]*\\.so[A-Za-z0-9_.]*", data):
            name = match.decode("ascii")
            if name not in names:
                names.append(name)
    return names


def _loaded_libcrypto_paths(maps_path="/proc/self/maps", linked=()):
    """Paths of libcrypto objects mapped into this process, those named in `linked` first.

    Using the very library the interpreter links means one OpenSSL per process, the one the
    distribution keeps patched; /proc/self/maps names it without running ldd. If several are
    mapped (someone dlopened another), the one the extensions were linked against comes first.
    """
    paths = []
    try:
        with open(maps_path) as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6:
                    path = fields[5].strip()
                    if path.endswith(" (deleted)"):
                        # Upgraded on disk since it was mapped: dlopen by its name finds the
                        # copy already in memory (the loader matches loaded objects by soname).
                        path = os.path.basename(path[:-len(" (deleted)")])
                    if os.path.basename(path).startswith("libcrypto") and path not in paths:
                        paths.append(path)
    except (IOError, OSError):
        pass
    paths.sort(key=lambda path: os.path.basename(path) not in linked)   # stable: map order otherwise
    return paths


def _interpreters_libcrypto():
    """The libcrypto paths this interpreter maps, after importing _hashlib (and _ssl if needed)."""
    extensions = _import_extensions(["_hashlib"])
    paths = _loaded_libcrypto_paths(linked=_linked_sonames(extensions))
    if not extensions or not paths:     # no _hashlib file (some builds lack it), or it mapped nothing
        extensions = _import_extensions(["_hashlib", "_ssl"])
        paths = _loaded_libcrypto_paths(linked=_linked_sonames(extensions))
    return paths


def candidate_libraries():
    """Where to look for libcrypto, best first: yields (how it was found, name or path to dlopen).

    Lazy, so that ctypes.util (whose find_library runs ldconfig, and whose import alone pulls in
    subprocess and shutil) is only used if the library this interpreter has loaded is unusable.
    """
    seen = set()

    def unseen(pairs):
        for how, name in pairs:
            if name and name not in seen:
                seen.add(name)
                yield how, name

    for pair in unseen(("loaded by this interpreter", path) for path in _interpreters_libcrypto()):
        yield pair
    # A Python built with a static OpenSSL may export its symbols from the extension itself.
    extensions = _import_extensions(["_hashlib", "_ssl"])
    for pair in unseen(("inside " + os.path.basename(path), path) for path in extensions):
        yield pair
    try:
        import ctypes.util
        found = ctypes.util.find_library("crypto")
    except Exception:   # find_library runs ldconfig/gcc; any failure there just means "not found"
        found = None
    for pair in unseen([("ctypes.util.find_library('crypto')", found)]):
        yield pair
    for pair in unseen(("known soname", soname) for soname in KNOWN_SONAMES):
        yield pair


class _Libcrypto(object):
    """One loaded libcrypto with argtypes/restype set once (pointers must not be truncated to int)."""

    REQUIRED = ("EVP_CIPHER_CTX_new", "EVP_CIPHER_CTX_free", "EVP_CIPHER_CTX_ctrl", "EVP_aes_256_gcm",
                "EVP_EncryptInit_ex", "EVP_EncryptUpdate", "EVP_EncryptFinal_ex",
                "EVP_DecryptInit_ex", "EVP_DecryptUpdate", "EVP_DecryptFinal_ex")

    def __init__(self, name):
        global ctypes
        import ctypes
        self.path = name
        lib = ctypes.CDLL(name)
        missing = [symbol for symbol in self.REQUIRED if not hasattr(lib, symbol)]
        if missing:
            raise AeadUnavailable("%s lacks %s (OpenSSL older than 1.0.1?)" % (name, ", ".join(missing)))
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int

        def bind(symbol, restype, argtypes):
            function = getattr(lib, symbol)
            function.restype = restype
            function.argtypes = argtypes
            return function

        def bind_fast(symbol):
            # A second, separate function object (lib[name] is never cached) without argtypes:
            # per-argument conversion through argtypes was a third or more of a whole seal here
            # (bench/bench_aead.py). Safe because every call site passes only what ctypes maps
            # to the prototype by itself: a c_void_p for the context, bytes or None for
            # const unsigned char *, byref() for pointers, and Python ints for int parameters.
            function = lib[symbol]
            function.restype = i
            return function

        self.ctx_new = bind("EVP_CIPHER_CTX_new", vp, [])
        self.ctx_free = bind("EVP_CIPHER_CTX_free", None, [vp])
        self.ctx_ctrl = bind("EVP_CIPHER_CTX_ctrl", i, [vp, i, i, vp])
        self.encrypt_init = bind("EVP_EncryptInit_ex", i, [vp, vp, vp, cp, cp])
        self.decrypt_init = bind("EVP_DecryptInit_ex", i, [vp, vp, vp, cp, cp])
        # The per-call path (seal/open), unconverted.
        self.fast_ctrl = bind_fast("EVP_CIPHER_CTX_ctrl")
        self.fast_encrypt_init = bind_fast("EVP_EncryptInit_ex")
        self.fast_encrypt_update = bind_fast("EVP_EncryptUpdate")
        self.fast_encrypt_final = bind_fast("EVP_EncryptFinal_ex")
        self.fast_decrypt_init = bind_fast("EVP_DecryptInit_ex")
        self.fast_decrypt_update = bind_fast("EVP_DecryptUpdate")
        self.fast_decrypt_final = bind_fast("EVP_DecryptFinal_ex")
        self.clear_errors = bind("ERR_clear_error", None, []) if hasattr(lib, "ERR_clear_error") else None
        # The static EVP_CIPHER exists in every version. OpenSSL 3 fetches the provider's
        # implementation behind it whenever a context is initialised with it, which here happens
        # once per thread (see LibcryptoAesGcm), so EVP_CIPHER_fetch would buy nothing.
        cipher = bind("EVP_aes_256_gcm", vp, [])()
        if not cipher:
            raise AeadUnavailable("%s has no AES-256-GCM implementation available" % name)
        self.cipher = cipher
        self.version = self._version(lib)
        if not hasattr(lib, "OpenSSL_version_num"):
            # OpenSSL 1.0.x (1.1 added OpenSSL_version_num) is only thread-safe with locking
            # callbacks, which Python's _ssl installs when imported (Python 3.4-3.6 with 1.0).
            _import_extensions(["_ssl"])

    @staticmethod
    def _version(lib):
        for symbol in ("OpenSSL_version", "SSLeay_version"):   # 1.1+ / 1.0.x
            if hasattr(lib, symbol):
                function = getattr(lib, symbol)
                function.restype = ctypes.c_char_p
                function.argtypes = [ctypes.c_int]
                text = function(0)
                if text:
                    return text.decode("ascii", "replace")
        return "unknown OpenSSL version"


_LOADED = {}


def load_libcrypto(names=None):
    """The first usable libcrypto of candidate_libraries() (or of names); AeadUnavailable if none."""
    if names is None:
        candidates = candidate_libraries()
    else:
        candidates = [("given", name) for name in names]
    tried = []
    for how, name in candidates:
        if name in _LOADED:
            return _LOADED[name]
        try:
            lib = _Libcrypto(name)
        except OSError as exc:
            tried.append("%s (%s): %s" % (name, how, _short(exc)))
            continue
        except AeadUnavailable as exc:
            tried.append("%s (%s): %s" % (name, how, exc))
            continue
        _LOADED[name] = lib
        return lib
    raise AeadUnavailable(
        "AES-256-GCM is unavailable: no usable OpenSSL libcrypto could be loaded, and MDP never "
        "sends clear text instead. Tried: %s. To fix, %s." % ("; ".join(tried) or "nothing", INSTALL_HINT))


def _short(exc):
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


# --- The two implementations ----------------------------------------------------------------------

class _Context(object):
    """One EVP_CIPHER_CTX, set up for AES-256-GCM in one direction, freed when this object goes."""

    def __init__(self, lib, encrypt):
        self._free = lib.ctx_free
        self.ctx = lib.ctx_new()
        if not self.ctx:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        init = lib.encrypt_init if encrypt else lib.decrypt_init
        if not (init(self.ctx, lib.cipher, None, None, None)
                and lib.ctx_ctrl(self.ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_SIZE, None)):
            self.close()
            raise AeadError("cannot set up an AES-256-GCM context in %s" % lib.path)
        self.pointer = ctypes.c_void_p(self.ctx)    # what the unconverted per-call functions take
        # Output of every call up to this size (a datagram at the default 1200 bytes and more):
        # reused, since a create_string_buffer per call was ~a fifth of a small seal.
        self.buffer = ctypes.create_string_buffer(REUSED_BUFFER_BYTES)
        self.written = ctypes.c_int(0)              # EVP's out-length, per context hence per thread
        self.written_ref = ctypes.byref(self.written)

    def close(self):
        ctx, self.ctx = self.ctx, None
        if ctx:
            self._free(ctx)

    def __del__(self):
        try:
            self.close()
        except Exception:   # at interpreter exit ctypes may already be torn down; the OS frees it
            pass


class LibcryptoAesGcm(object):
    """AES-256-GCM through the host's libcrypto (ctypes). Safe to call from several threads.

    Each thread keeps one encrypting and one decrypting context, set up once with the cipher and
    the IV length; a call only sets key and nonce (EVP_*Init_ex with cipher NULL, the reuse
    OpenSSL documents from 1.0.1 on) and so skips allocating a context and, on OpenSSL 3,
    fetching the cipher from the provider: a fresh context per call made a seal 1.5-1.7x as
    slow here (bench/bench_aead.py). A context is freed when its thread ends, and at once after
    any unexpected failure, so no context in an unknown state is reused (a tag mismatch is
    expected: the next key and IV reset everything).
    """

    name = "libcrypto"

    def __init__(self, library=None):
        self._lib = library if library is not None else load_libcrypto()
        self._local = threading.local()
        self.description = "%s via ctypes (%s)" % (self._lib.version, self._lib.path)

    def _context(self, attribute, encrypt):
        context = getattr(self._local, attribute, None)
        if context is None:
            context = _Context(self._lib, encrypt)
            setattr(self._local, attribute, context)
        return context

    def _discard(self, attribute):
        context = getattr(self._local, attribute, None)
        if context is not None:
            setattr(self._local, attribute, None)
            context.close()
        if self._lib.clear_errors is not None:
            self._lib.clear_errors()   # OpenSSL's per-thread error queue would otherwise only grow

    def seal(self, key, nonce, plaintext, aad=b""):
        """ciphertext || 16-byte tag of plaintext, authenticating aad too."""
        if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
            _check_sizes(key, nonce)
        if not (type(key) is type(nonce) is type(plaintext) is type(aad) is bytes):   # the usual case, fast
            key, nonce = _as_bytes(key, "key"), _as_bytes(nonce, "nonce")
            plaintext, aad = _as_bytes(plaintext, "plaintext"), _as_bytes(aad, "aad")
        lib = self._lib
        context = getattr(self._local, "sealer", None) or self._context("sealer", True)
        ctx, written = context.pointer, context.written_ref
        size = len(plaintext)
        # Ciphertext, then the tag right after it.
        out = context.buffer if size + TAG_SIZE <= REUSED_BUFFER_BYTES else ctypes.create_string_buffer(size + TAG_SIZE)
        tail = ctypes.byref(out, size)
        if not lib.fast_encrypt_init(ctx, None, None, key, nonce):
            self._fail("sealer", "EVP_EncryptInit_ex")
        if aad and not lib.fast_encrypt_update(ctx, None, written, aad, len(aad)):
            self._fail("sealer", "EVP_EncryptUpdate (aad)")
        if size and not lib.fast_encrypt_update(ctx, out, written, plaintext, size):
            self._fail("sealer", "EVP_EncryptUpdate")
        if not lib.fast_encrypt_final(ctx, tail, written):      # GCM writes nothing here
            self._fail("sealer", "EVP_EncryptFinal_ex")
        if not lib.fast_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, tail):
            self._fail("sealer", "EVP_CTRL_GCM_GET_TAG")
        return out[:size + TAG_SIZE]

    def open(self, key, nonce, data, aad=b""):
        """The plaintext of ciphertext || tag; InvalidTag if it does not authenticate."""
        if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
            _check_sizes(key, nonce)
        if not (type(key) is type(nonce) is type(data) is type(aad) is bytes):
            key, nonce = _as_bytes(key, "key"), _as_bytes(nonce, "nonce")
            data, aad = _as_bytes(data, "data"), _as_bytes(aad, "aad")
        if len(data) < TAG_SIZE:
            raise InvalidTag("sealed data is %d bytes, shorter than the %d-byte tag" % (len(data), TAG_SIZE))
        lib = self._lib
        context = getattr(self._local, "opener", None) or self._context("opener", False)
        ctx, written = context.pointer, context.written_ref
        size = len(data) - TAG_SIZE
        # Room for Final too, which writes nothing.
        out = context.buffer if len(data) <= REUSED_BUFFER_BYTES else ctypes.create_string_buffer(len(data))
        if not lib.fast_decrypt_init(ctx, None, None, key, nonce):
            self._fail("opener", "EVP_DecryptInit_ex")
        if aad and not lib.fast_decrypt_update(ctx, None, written, aad, len(aad)):
            self._fail("opener", "EVP_DecryptUpdate (aad)")
        # data itself, not a copy of its first `size` bytes: EVP reads exactly `size` of them.
        if size and not lib.fast_decrypt_update(ctx, out, written, data, size):
            self._fail("opener", "EVP_DecryptUpdate")
        # The tag goes in before Final (OpenSSL copies it); Final compares in constant time.
        if not lib.fast_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, data[size:]):
            self._fail("opener", "EVP_CTRL_GCM_SET_TAG")
        if lib.fast_decrypt_final(ctx, ctypes.byref(out, size), written) <= 0:
            # The context stays: the next call sets key and IV, which resets all GCM state, and
            # a stranger's forged datagram should cost no more than a verification.
            if lib.clear_errors is not None:
                lib.clear_errors()
            raise InvalidTag("AES-GCM tag mismatch: wrong key, nonce or associated data, or altered data")
        return out[:size]    # one copy (out.raw[:size] made two)

    def _fail(self, attribute, where):
        self._discard(attribute)
        raise AeadError("%s failed in %s" % (where, self.description))


class CryptographyAesGcm(object):
    """AES-256-GCM through the `cryptography` package (controller and monitor)."""

    name = "cryptography"

    def __init__(self):
        try:
            from cryptography import __version__ as version
            from cryptography.exceptions import InvalidTag as CryptographyInvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:
            raise AeadUnavailable("AES-256-GCM is unavailable: the Python package `cryptography` cannot be "
                                  "imported (%s); install it with `pip install cryptography`" % exc)
        self._aesgcm = AESGCM
        self._invalid_tag = CryptographyInvalidTag
        self.description = "cryptography %s AESGCM" % version

    # One AESGCM object per call: MDP/2 derives a fresh key per message, so there is no key to keep one for.
    def seal(self, key, nonce, plaintext, aad=b""):
        """ciphertext || 16-byte tag of plaintext, authenticating aad too."""
        if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
            _check_sizes(key, nonce)
        if not (type(key) is type(plaintext) is type(aad) is bytes):   # the usual case, fast (as LibcryptoAesGcm)
            key, plaintext, aad = _as_bytes(key, "key"), _as_bytes(plaintext, "plaintext"), _as_bytes(aad, "aad")
        return self._aesgcm(key).encrypt(nonce, plaintext, aad)

    def open(self, key, nonce, data, aad=b""):
        """The plaintext of ciphertext || tag; InvalidTag if it does not authenticate."""
        if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
            _check_sizes(key, nonce)
        if not (type(key) is type(data) is type(aad) is bytes):
            key, data, aad = _as_bytes(key, "key"), _as_bytes(data, "data"), _as_bytes(aad, "aad")
        if len(data) < TAG_SIZE:
            raise InvalidTag("sealed data is %d bytes, shorter than the %d-byte tag" % (len(data), TAG_SIZE))
        try:
            return self._aesgcm(key).decrypt(nonce, data, aad)
        except self._invalid_tag:
            raise InvalidTag("AES-GCM tag mismatch: wrong key, nonce or associated data, or altered data")


_DEFAULTS = {}


def libcrypto():
    """The agent's AES-256-GCM (host libcrypto), loaded once; AeadUnavailable if it cannot be."""
    if "libcrypto" not in _DEFAULTS:
        _DEFAULTS["libcrypto"] = LibcryptoAesGcm()
    return _DEFAULTS["libcrypto"]


def cryptography():
    """The controller's AES-256-GCM (`cryptography` package); AeadUnavailable if not installed."""
    if "cryptography" not in _DEFAULTS:
        _DEFAULTS["cryptography"] = CryptographyAesGcm()
    return _DEFAULTS["cryptography"]
