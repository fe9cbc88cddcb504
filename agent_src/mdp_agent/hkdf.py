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
    """HKDF-Expand under one PRK, keyed once: each expand() copies the keyed HMAC state instead of
    hashing the key's inner and outer pads again, which makes a per-message key about twice as
    cheap (bench/bench_aead.py). Immutable after construction, so safe to share between threads.
    """

    def __init__(self, prk):
        if len(prk) < HASH_SIZE:
            # RFC 5869 s2.3: "PRK: a pseudorandom key of at least HashLen octets".
            raise ValueError("HKDF-Expand needs a PRK of at least %d bytes, got %d" % (HASH_SIZE, len(prk)))
        self._keyed = hmac.new(prk, None, HASH)

    def expand(self, info, length=HASH_SIZE):
        if not 0 < length <= MAX_OUTPUT:
            raise ValueError("HKDF-SHA256 output length must be 1..%d bytes, got %d" % (MAX_OUTPUT, length))
        blocks = []
        previous = b""
        for counter in range(1, (length + HASH_SIZE - 1) // HASH_SIZE + 1):
            block = self._keyed.copy()
            block.update(previous + info + bytes(bytearray([counter])))
            previous = block.digest()
            blocks.append(previous)
        return b"".join(blocks)[:length]
