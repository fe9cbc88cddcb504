"""HKDF-SHA256 (RFC 5869) with the standard library's hmac and hashlib.

MDP/2 derives every key it uses with it: the direction keys from the machine key, the per-message
keys from a direction key (docs/mdp2-design.md), the machine key from an enrolment's shared secret.

Must run on Python 3.4, standard library only (the agent imports it).
"""

import hashlib
import hmac

HASH = hashlib.sha256
HASH_SIZE = 32
MAX_OUTPUT = 255 * HASH_SIZE     # RFC 5869 s2.3: L <= 255 * HashLen
# HMAC's inner and outer pads as translation tables, as the standard library's hmac module does.
_XOR_36 = bytes(bytearray(x ^ 0x36 for x in range(256)))
_XOR_5C = bytes(bytearray(x ^ 0x5C for x in range(256)))


def hkdf_extract(salt, ikm):
    """PRK = HMAC-Hash(salt, IKM); an empty salt means HashLen zero bytes (RFC 5869 s2.2)."""
    if not salt:
        salt = b"\x00" * HASH_SIZE
    return hmac.new(salt, ikm, HASH).digest()


def hkdf_expand(prk, info, length):
    """OKM of `length` bytes: T(1) | T(2) | ..., T(i) = HMAC(PRK, T(i-1) | info | i) (RFC 5869 s2.3)."""
    return HkdfExpander(prk).expand(info, length)


def hkdf(ikm, salt, info, length):
    """Extract then expand: the whole of RFC 5869."""
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


class HkdfExpander(object):
    """HKDF-Expand under one PRK, keyed once: HMAC (RFC 2104) written out over hashlib, with the
    hash states after the key's inner and outer pads computed at construction and copied per
    call. That makes a per-message key about 3x cheaper than hmac.new (~1 us instead of ~3 us,
    bench/bench_aead.py). Never updated after construction, so safe to share between threads.
    """

    BLOCK = 64      # SHA-256's block size, the HMAC pad length

    def __init__(self, prk):
        if len(prk) < HASH_SIZE:
            # RFC 5869 s2.3: "PRK: a pseudorandom key of at least HashLen octets".
            raise ValueError("HKDF-Expand needs a PRK of at least %d bytes, got %d" % (HASH_SIZE, len(prk)))
        if len(prk) > self.BLOCK:
            prk = HASH(prk).digest()            # RFC 2104 s2: longer keys are hashed first
        padded = bytes(prk).ljust(self.BLOCK, b"\x00")
        self._inner = HASH(padded.translate(_XOR_36))
        self._outer = HASH(padded.translate(_XOR_5C))

    def _hmac(self, message):
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def expand(self, info, length=HASH_SIZE):
        if not 0 < length <= MAX_OUTPUT:
            raise ValueError("HKDF-SHA256 output length must be 1..%d bytes, got %d" % (MAX_OUTPUT, length))
        if length <= HASH_SIZE:                 # the per-message case: one block
            return self._hmac(info + b"\x01")[:length]
        blocks = []
        previous = b""
        for counter in range(1, (length + HASH_SIZE - 1) // HASH_SIZE + 1):
            previous = self._hmac(previous + info + bytes(bytearray([counter])))
            blocks.append(previous)
        return b"".join(blocks)[:length]
