"""Enrolment key agreement: ephemeral finite-field Diffie-Hellman over RFC 7919's ffdhe3072.

The agent and the monitor each make a KeyAgreement, exchange public values (384 bytes each, in
the clear: that is safe), and derive the same 32-byte machine key from the shared secret and the
transcript. A passive observer of the whole exchange learns nothing about the key. An active
attacker in the middle ends up with different transcripts on the two sides, so the fingerprints
that both sides show differ: the operator compares them (like an SSH host key) before accepting.
docs/mdp2-design.md explains the choices and the limits.

Only Python's own pow() is used: standard library, Python 3.4+.
"""

import base64
import hashlib
import os
import struct

from . import hkdf

# RFC 7919 Appendix A.2, ffdhe3072: p = 2^3072 - 2^3008 + {[2^2942 * e] + 2625351} * 2^64 - 1,
# a safe prime (q = (p-1)/2 is prime), generator 2. tests/agent/test_kex.py recomputes it from
# that formula and checks that p and q are (probable) primes.
FFDHE3072_P = int("".join("""
    FFFFFFFF FFFFFFFF ADF85458 A2BB4A9A AFDC5620 273D3CF1 D8B9C583 CE2D3695
    A9E13641 146433FB CC939DCE 249B3EF9 7D2FE363 630C75D8 F681B202 AEC4617A
    D3DF1ED5 D5FD6561 2433F51F 5F066ED0 85636555 3DED1AF3 B557135E 7F57C935
    984F0C70 E0E68B77 E2A689DA F3EFE872 1DF158A1 36ADE735 30ACCA4F 483A797A
    BC0AB182 B324FB61 D108A94B B2C8E3FB B96ADAB7 60D7F468 1D4F42A3 DE394DF4
    AE56EDE7 6372BB19 0B07A7C8 EE0A6D70 9E02FCE1 CDF7E2EC C03404CD 28342F61
    9172FE9C E98583FF 8E4F1232 EEF28183 C3FE3B1B 4C6FAD73 3BB5FCBC 2EC22005
    C58EF183 7D1683B2 C6F34A26 C1B2EFFA 886B4238 611FCFDC DE355B3B 6519035B
    BC34F4DE F99C0238 61B46FC9 D6E6C907 7AD91D26 91F7F7EE 598CB0FA C186D91C
    AEFE1309 85139270 B4130C93 BC437944 F4FD4452 E2D74DD3 64F2E21E 71F54BFF
    5CAE82AB 9C9DF69E E86D2BC5 22363A0D ABC52197 9B0DEADA 1DBF9A42 D5C4484E
    0ABCD06B FA53DDEF 3C1B20EE 3FD59D7C 25E41D2B 66C62E37 FFFFFFFF FFFFFFFF
    """.split()), 16)
FFDHE3072_Q = (FFDHE3072_P - 1) // 2
GENERATOR = 2
PUBLIC_SIZE = 384               # bytes of p, of every public value and of the shared secret

# Private exponents of 320 random bits (os.urandom), top bit set so the exponent is never short.
# RFC 7919 s5.2 allows short exponents and its Appendix A.2 asks for at least 275 bits with
# ffdhe3072 (twice its ~125-bit strength, plus margin); NIST SP 800-56A rev3 s5.6.1.1.1 asks for
# at least 2 * 128 = 256 bits. 319 bits of entropy clear both, and a 320-bit exponent makes pow()
# about 10x faster than a full 3071-bit one (bench/bench_aead.py).
PRIVATE_BITS = 320

FINGERPRINT_BYTES = 10          # 80 bits, shown as 16 base32 characters in four groups
TRANSCRIPT_LABEL = b"MDP/2 enrol"
MACHINE_KEY_INFO = b"MDP/2 enrol machine key"
FINGERPRINT_LABEL = b"MDP/2 enrol fingerprint"
KEY_SIZE = 32


class BadPublicValue(ValueError):
    """A peer's public value that RFC 7919 s5.1 says to refuse (or that is not 384 bytes)."""


def encode_int(value):
    """Fixed-length big-endian, left-padded with zero bytes to the prime's 384 bytes (RFC 7919 s5.1)."""
    return value.to_bytes(PUBLIC_SIZE, "big")     # OverflowError if it does not fit


def legendre_is_one(value, prime=FFDHE3072_P):
    """Whether value is a nonzero square mod prime, by the Jacobi symbol's reciprocity algorithm.

    For p = 2q + 1 this is exactly Y^q mod p == 1 (Euler's criterion), the subgroup check RFC 7919
    s5.1 mentions, at ~0.8 ms instead of the ~90 ms of a 3071-bit pow() (bench/bench_aead.py).
    """
    a, n, sign = value % prime, prime, 1
    while a:
        zeros = (a & -a).bit_length() - 1     # strip all factors of 2 at once
        a >>= zeros
        if zeros & 1 and n & 7 in (3, 5):     # (2/n) = -1 for n = 3, 5 mod 8
            sign = -sign
        if a & 3 == 3 and n & 3 == 3:         # quadratic reciprocity
            sign = -sign
        a, n = n % a, a
    return n == 1 and sign == 1


def decode_public(data, check_subgroup=True):
    """The peer's public value Y as an int, validated; BadPublicValue if it must be refused.

    RFC 7919 s5.1: 1 < Y < p-1, which rejects the only small subgroup of a safe-prime group
    ({1, p-1}), and 0 and everything at or above p. With check_subgroup (the default) also
    Y^q mod p == 1, i.e. Y lies in the order-q subgroup that 2 generates, computed as a Legendre
    symbol: without it a non-residue Y would cost us only the low bit of a one-time exponent,
    but at ~1 ms there is no reason to leave the door open.
    """
    if not isinstance(data, bytes) or len(data) != PUBLIC_SIZE:
        raise BadPublicValue("a ffdhe3072 public value is %d bytes, got %s" % (
            PUBLIC_SIZE, len(data) if isinstance(data, bytes) else type(data).__name__))
    value = int.from_bytes(data, "big")
    if not 1 < value < FFDHE3072_P - 1:
        raise BadPublicValue("public value out of range: RFC 7919 requires 1 < Y < p-1")
    if check_subgroup and not legendre_is_one(value):
        raise BadPublicValue("public value is not in the order-q subgroup (Y^q mod p != 1)")
    return value


class KeyAgreement(object):
    """One side's ephemeral ffdhe3072 key pair: public_bytes to send, shared_secret(peer) to use once."""

    def __init__(self, private=None):
        if private is None:
            private = int.from_bytes(os.urandom(PRIVATE_BITS // 8), "big") | (1 << (PRIVATE_BITS - 1))
        elif not 1 < private < FFDHE3072_Q:
            raise ValueError("private exponent must be in 2..q-1")
        self._private = private          # `private` is given only by tests and known-answer checks
        self.public_bytes = encode_int(pow(GENERATOR, private, FFDHE3072_P))

    def shared_secret(self, peer_public, check_subgroup=True):
        """Z = Y_peer^x mod p as 384 bytes, leading zeros kept; BadPublicValue for a bad Y_peer."""
        secret = pow(decode_public(peer_public, check_subgroup), self._private, FFDHE3072_P)
        if secret in (1, FFDHE3072_P - 1):   # impossible for a valid Y and x < q; checked anyway
            raise BadPublicValue("degenerate shared secret")
        return encode_int(secret)


def _field(data):
    return struct.pack("!H", len(data)) + data


def transcript(agent_identity, agent_public, monitor_public):
    """The bytes both sides must agree on: label, the agent's identity, both public values.

    Every field is length-prefixed, so no two different (identity, values) give the same bytes.
    """
    if len(agent_identity) > 0xFFFF:
        raise ValueError("agent identity is longer than 65535 bytes")
    return TRANSCRIPT_LABEL + _field(agent_identity) + _field(agent_public) + _field(monitor_public)


def derive_machine_key(shared_secret, agent_identity, agent_public, monitor_public):
    """The 32-byte machine key: HKDF-SHA256 with the transcript's hash as salt.

    Binding the transcript means one key belongs to exactly one transcript, the one whose
    fingerprint the operator compared, not just to one shared secret.
    """
    salt = hashlib.sha256(transcript(agent_identity, agent_public, monitor_public)).digest()
    return hkdf.hkdf(shared_secret, salt, MACHINE_KEY_INFO, KEY_SIZE)


def fingerprint(agent_identity, agent_public, monitor_public):
    """A short text both sides show, e.g. 'K5QW-3ZQD-ZJ7M-GQ2A': SHA-256 of the transcript, 80 bits.

    It covers both public values: a man in the middle must replace each side's value with his own
    to learn both keys, so the agent and the monitor then hash different transcripts. Matching
    80-bit fingerprints would need a second preimage found while the enrolment waits (~2^80
    hashes), not a birthday search, since the honest side's value is fixed before he chooses.
    """
    digest = hashlib.sha256(FINGERPRINT_LABEL + transcript(agent_identity, agent_public, monitor_public)).digest()
    text = base64.b32encode(digest[:FINGERPRINT_BYTES]).decode("ascii")
    return "-".join(text[i:i + 4] for i in range(0, len(text), 4))
