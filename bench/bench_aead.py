"""MDP/2's crypto costs, printed: AES-256-GCM seal/open, per-message subkeys, enrolment key agreement.

    .venv/bin/python bench/bench_aead.py                 # Python 3.10+, libcrypto and cryptography
    .venv-oldpy/bin/python bench/bench_aead.py           # the agent's oldest Python (3.6) too
    MDP_EXTRA_LIBCRYPTO=/path/libcrypto.so.1.1 .venv/bin/python bench/bench_aead.py   # other OpenSSLs

Written for Python 3.6+ (no _common import) so that the agent's oldest Python can run it. Every
figure is CPU time, the best of several repeats (the least disturbed by other load), in
microseconds per call unless it says ms. A datagram is the default 1200 bytes: a 26-byte header as associated data,
1158 bytes of plaintext and the 16-byte tag. Nothing here passes or fails on timing.
"""

import argparse
import ctypes
import hashlib
import hmac
import os
import platform
import sys
import time
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "agent_src"))

from mdp_agent import aead, hkdf, kex, protocol  # noqa: E402

HEADER = 26
DATAGRAM = 1200
PLAINTEXT = DATAGRAM - HEADER - aead.TAG_SIZE     # 1158
SMALL = 120                                       # about a ping's reply


def best_us(function, number, repeat=7):
    # CPU time of this process, not wall time: on a shared machine other load then inflates the
    # figures much less (it still costs caches), and the best repeat is the least disturbed one.
    return min(timeit.repeat(function, number=number, repeat=repeat, timer=time.process_time)) / number * 1e6


def fresh_context_seal(impl):
    """The same seal with a new EVP_CIPHER_CTX per call (the design aead.py did not pick)."""
    lib = impl._lib

    def seal(key, nonce, plaintext, aad):
        ctx = lib.ctx_new()
        try:
            pointer = ctypes.c_void_p(ctx)
            size = len(plaintext)
            out = ctypes.create_string_buffer(size + 16)
            written = ctypes.byref(ctypes.c_int(0))
            lib.encrypt_init(ctx, lib.cipher, None, None, None)
            lib.ctx_ctrl(ctx, aead.EVP_CTRL_GCM_SET_IVLEN, 12, None)
            lib.fast_encrypt_init(pointer, None, None, key, nonce)
            lib.fast_encrypt_update(pointer, None, written, aad, len(aad))
            lib.fast_encrypt_update(pointer, out, written, plaintext, size)
            lib.fast_encrypt_final(pointer, ctypes.byref(out, size), written)
            lib.fast_ctrl(pointer, aead.EVP_CTRL_GCM_GET_TAG, 16, ctypes.byref(out, size))
            return out.raw
        finally:
            lib.ctx_free(ctx)
    return seal


def implementations():
    found = [aead.libcrypto()]
    for path in filter(None, os.environ.get("MDP_EXTRA_LIBCRYPTO", "").split(":")):
        found.append(aead.LibcryptoAesGcm(aead.load_libcrypto([path])))
    try:
        found.append(aead.cryptography())
    except aead.AeadUnavailable as exc:
        print("(cryptography not measured: %s)" % exc)
    return found


def bench_aead(number):
    key, nonce = os.urandom(32), os.urandom(12)
    aad = os.urandom(HEADER)
    print("AES-256-GCM, us per call (best of 7 x %d)" % number)
    print("  %-58s %8s %8s %8s %8s" % ("implementation", "seal", "open", "seal", "open"))
    print("  %-58s %8s %8s %8s %8s" % ("", "1158 B", "1158 B", "%d B" % SMALL, "%d B" % SMALL))
    for impl in implementations():
        row = []
        for size in (PLAINTEXT, SMALL):
            plaintext = os.urandom(size)
            sealed = impl.seal(key, nonce, plaintext, aad)
            row.append(best_us(lambda: impl.seal(key, nonce, plaintext, aad), number))
            row.append(best_us(lambda: impl.open(key, nonce, sealed, aad), number))
        print("  %-58s %8.2f %8.2f %8.2f %8.2f" % ((impl.description[:58],) + tuple(row)))
    impl = aead.libcrypto()
    plaintext = os.urandom(PLAINTEXT)
    fresh = fresh_context_seal(impl)
    assert fresh(key, nonce, plaintext, aad) == impl.seal(key, nonce, plaintext, aad)
    print("  %-58s %8.2f" % ("libcrypto seal, a new EVP_CIPHER_CTX per call (not used)",
                             best_us(lambda: fresh(key, nonce, plaintext, aad), number)))
    message = os.urandom(HEADER + PLAINTEXT)
    print("  %-58s %8.2f" % ("for scale: MDP/1's HMAC-SHA256 over the same 1184 bytes",
                             best_us(lambda: hmac.new(key, message, hashlib.sha256).digest(), number)))


def bench_subkeys(number):
    direction_key = os.urandom(32)
    expander = hkdf.HkdfExpander(direction_key)
    info = b"MDP/2 message" + os.urandom(1 + 8 + 8)     # label | kind | msg_id | timestamp_ms
    impl = aead.libcrypto()
    nonce = b"\x00" * 10 + b"\x00\x01"
    plaintext, aad = os.urandom(PLAINTEXT), os.urandom(HEADER)
    print("Per-message subkey = HKDF-Expand(direction key, info, 32), us per call")
    print("  %-58s %8.2f" % ("hmac.new(direction key, info | 1) (the hmac module)",
                             best_us(lambda: hmac.new(direction_key, info + b"\x01", hashlib.sha256).digest(),
                                     number)))
    print("  %-58s %8.2f" % ("hkdf_expand (pads the key each time)",
                             best_us(lambda: hkdf.hkdf_expand(direction_key, info, 32), number)))
    print("  %-58s %8.2f" % ("HkdfExpander.expand (pads hashed once per direction key)",
                             best_us(lambda: expander.expand(info), number)))
    print("  %-58s %8.2f" % ("seal of a 1200-byte datagram under a fixed key",
                             best_us(lambda: impl.seal(direction_key, nonce, plaintext, aad), number)))
    print("  %-58s %8.2f" % ("subkey + seal (what each datagram costs with per-message keys)",
                             best_us(lambda: impl.seal(expander.expand(info), nonce, plaintext, aad), number)))


def bench_kex(number):
    agent, monitor = kex.KeyAgreement(), kex.KeyAgreement()
    public = monitor.public_bytes
    value = int.from_bytes(public, "big")
    print("Enrolment key agreement (ffdhe3072, %d-bit exponents), ms per call" % kex.PRIVATE_BITS)
    keygen = best_us(kex.KeyAgreement, number, 3) / 1000
    secret = best_us(lambda: agent.shared_secret(public), number, 3) / 1000
    print("  %-58s %8.2f" % ("keygen: 320-bit exponent, pow(2, x, p)", keygen))
    print("  %-58s %8.2f" % ("shared secret, with the validation below", secret))
    print("  %-58s %8.2f" % ("one side's whole key agreement (keygen + shared secret)", keygen + secret))
    print("  %-58s %8.2f" % ("subgroup check as a Legendre symbol (used)",
                             best_us(lambda: kex.legendre_is_one(value), number, 3) / 1000))
    print("  %-58s %8.2f" % ("subgroup check as pow(Y, q, p) (not used)",
                             best_us(lambda: pow(value, kex.FFDHE3072_Q, kex.FFDHE3072_P), 1, 3) / 1000))
    full = int.from_bytes(os.urandom(384), "big") % kex.FFDHE3072_Q
    print("  %-58s %8.2f" % ("for scale: keygen with a full 3071-bit exponent (not used)",
                             best_us(lambda: pow(2, full, kex.FFDHE3072_P), 1, 3) / 1000))
    fp = best_us(lambda: kex.fingerprint(b"host 10.0.0.5", agent.public_bytes, public), number, 3)
    print("  %-58s %8.2f" % ("derive machine key + fingerprint, us",
                             fp + best_us(lambda: kex.derive_machine_key(b"z" * 384, b"host 10.0.0.5",
                                                                         agent.public_bytes, public), number, 3)))
    # The wire steps as the monitor and the agent run them (protocol.py): all of the above together.
    msg_id = os.urandom(8)
    welcome = protocol.answer_hello(agent.public_bytes, "10.0.0.5", msg_id, 0).datagram
    print("  %-58s %8.2f" % ("monitor: answer_hello (validate, keygen, secret, key, WELCOME)",
                             best_us(lambda: protocol.answer_hello(agent.public_bytes, "10.0.0.5", msg_id, 0),
                                     number, 3) / 1000))
    print("  %-58s %8.2f" % ("agent: open_welcome (validate, secret, key, confirmation)",
                             best_us(lambda: protocol.open_welcome(welcome, agent, msg_id), number, 3) / 1000))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=5000, help="calls per timing repeat (default 5000)")
    args = parser.parse_args()
    load = os.getloadavg()
    print("Python %s on %s, %d CPUs, load %.2f %.2f %.2f" % (
        platform.python_version(), platform.machine(), os.cpu_count() or 0, load[0], load[1], load[2]))
    bench_aead(args.number)
    bench_subkeys(args.number)
    bench_kex(max(1, args.number // 500))


if __name__ == "__main__":
    main()
