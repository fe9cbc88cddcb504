"""Enrolment key agreement (agent_src/mdp_agent/kex.py): the group, validation, agreement, MITM.

Runs under Python 3.11 and 3.6 (PYTHONPATH=agent_src). The group is checked from its definition
(RFC 7919's formula, recomputed here with e from its series, and Miller-Rabin on p and q), not
only against a second copy of the same hex. Where `cryptography` is installed, its (OpenSSL's)
DH with the same p is a second implementation of the exchange.
"""

import random
import re
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdp_agent import kex

P, Q = kex.FFDHE3072_P, kex.FFDHE3072_Q


def e_times_two_to(bits):
    """floor(e * 2^bits), from e = sum 1/k! in integer fixed point with 64 guard bits."""
    one = 1 << (bits + 64)
    total, term, k = 0, one, 0
    while term:
        total += term
        k += 1
        term //= k
    return total >> 64


def probably_prime(n, rounds=12):
    """Miller-Rabin with fixed small bases and seeded random ones (error < 4^-rounds)."""
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    bases = [2, 3, 5, 7] + [random.Random(7919 + i).randrange(2, n - 2) for i in range(rounds - 4)]
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_prime_has_rfc7919s_documented_form():
    """RFC 7919 Appendix A.2: p = 2^3072 - 2^3008 + {[2^2942 * e] + 2625351} * 2^64 - 1."""
    assert P == 2 ** 3072 - 2 ** 3008 + (e_times_two_to(2942) + 2625351) * 2 ** 64 - 1
    assert P.bit_length() == 3072
    assert P >> (3072 - 64) == 2 ** 64 - 1 and P & (2 ** 64 - 1) == 2 ** 64 - 1   # 64 ones each end
    assert kex.GENERATOR == 2 and kex.PUBLIC_SIZE * 8 == 3072


@pytest.mark.slow
def test_p_and_q_are_probable_primes_and_2_generates_the_order_q_subgroup():
    assert Q * 2 + 1 == P
    assert probably_prime(Q) and probably_prime(P)
    assert P % 8 == 7                       # so 2 is a square mod p ...
    assert pow(2, Q, P) == 1                # ... and generates the subgroup of prime order q
    assert not probably_prime(561) and not probably_prime(Q * 3) and probably_prime(2 ** 127 - 1)


def test_legendre_symbol_equals_eulers_criterion():
    rng = random.Random(5)
    values = [2, 3, P - 2, P - 3, Q, Q + 1] + [rng.randrange(2, P - 1) for _ in range(8)]
    for value in values:
        assert kex.legendre_is_one(value) == (pow(value, Q, P) == 1), value
    assert kex.legendre_is_one(4) and not kex.legendre_is_one(P - 1) and not kex.legendre_is_one(0)


def test_public_values_are_validated_as_rfc7919_says():
    refuse = [0, 1, P - 1, P, P + 1, 2 ** 3072 - 1]
    for value in refuse:
        with pytest.raises(kex.BadPublicValue, match="1 < Y < p-1"):
            kex.decode_public(value.to_bytes(384, "big"))
    # Order 2q: -2 is not a square mod p (p = 7 mod 8), so the subgroup check refuses it.
    with pytest.raises(kex.BadPublicValue, match="order-q subgroup"):
        kex.decode_public((P - 2).to_bytes(384, "big"))
    assert kex.decode_public((P - 2).to_bytes(384, "big"), check_subgroup=False) == P - 2
    for bad in (b"", b"\x02", b"\x00" * 383 + b"\x02" + b"\x00", "text"):
        with pytest.raises(kex.BadPublicValue, match="384 bytes"):
            kex.decode_public(bad)
    assert kex.decode_public((2).to_bytes(384, "big")) == 2
    mine = kex.KeyAgreement()
    assert kex.decode_public(mine.public_bytes) == pow(2, mine._private, P)
    with pytest.raises(kex.BadPublicValue):
        mine.shared_secret((P - 1).to_bytes(384, "big"))


def test_private_exponents_are_fresh_long_and_in_range():
    privates = [kex.KeyAgreement()._private for _ in range(6)]
    assert len(set(privates)) == 6
    assert all(x.bit_length() == kex.PRIVATE_BITS for x in privates)
    assert kex.PRIVATE_BITS >= 275                          # RFC 7919 A.2's minimum for ffdhe3072
    for bad in (0, 1, Q, P):
        with pytest.raises(ValueError):
            kex.KeyAgreement(private=bad)


def test_both_sides_agree_on_secret_key_and_fingerprint():
    agent, monitor = kex.KeyAgreement(), kex.KeyAgreement()
    identity = b"web-01 10.0.0.5"
    z_agent = agent.shared_secret(monitor.public_bytes)
    z_monitor = monitor.shared_secret(agent.public_bytes)
    assert z_agent == z_monitor and len(z_agent) == 384
    key = kex.derive_machine_key(z_agent, identity, agent.public_bytes, monitor.public_bytes)
    assert key == kex.derive_machine_key(z_monitor, identity, agent.public_bytes, monitor.public_bytes)
    assert len(key) == 32
    shown = kex.fingerprint(identity, agent.public_bytes, monitor.public_bytes)
    assert re.match(r"^[A-Z2-7]{4}-[A-Z2-7]{4}-[A-Z2-7]{4}-[A-Z2-7]{4}$", shown)
    # The fingerprint and the key change with every part of the transcript.
    other = kex.KeyAgreement().public_bytes
    variants = [(b"web-02 10.0.0.5", agent.public_bytes, monitor.public_bytes),
                (identity, other, monitor.public_bytes), (identity, agent.public_bytes, other),
                (identity, monitor.public_bytes, agent.public_bytes)]
    assert len({shown} | {kex.fingerprint(*v) for v in variants}) == 5
    assert len({key} | {kex.derive_machine_key(z_agent, *v) for v in variants}) == 5


def test_shared_secret_keeps_its_leading_zero_bytes():
    """RFC 7919 s5.1: Z is left-padded to the length of p. 2^8 has 382 zero bytes in front."""
    side = kex.KeyAgreement(private=8)
    secret = side.shared_secret((2).to_bytes(384, "big"))
    assert secret == b"\x00" * 382 + b"\x01\x00"
    assert kex.encode_int(5) == b"\x00" * 383 + b"\x05"
    with pytest.raises(OverflowError):
        kex.encode_int(2 ** 3072)


def test_a_man_in_the_middle_gets_different_fingerprints_on_the_two_sides():
    """Mallory answers the agent as the monitor and the monitor as the agent, keeping both keys."""
    identity = b"db-01 10.0.0.9"
    agent, monitor = kex.KeyAgreement(), kex.KeyAgreement()
    to_agent, to_monitor = kex.KeyAgreement(), kex.KeyAgreement()    # Mallory's two halves
    agent_key = kex.derive_machine_key(agent.shared_secret(to_agent.public_bytes), identity,
                                       agent.public_bytes, to_agent.public_bytes)
    monitor_key = kex.derive_machine_key(monitor.shared_secret(to_monitor.public_bytes), identity,
                                         to_monitor.public_bytes, monitor.public_bytes)
    # Mallory can compute both keys...
    assert agent_key == kex.derive_machine_key(to_agent.shared_secret(agent.public_bytes), identity,
                                               agent.public_bytes, to_agent.public_bytes)
    assert monitor_key == kex.derive_machine_key(to_monitor.shared_secret(monitor.public_bytes), identity,
                                                 to_monitor.public_bytes, monitor.public_bytes)
    # ...but the operator sees two different fingerprints.
    assert kex.fingerprint(identity, agent.public_bytes, to_agent.public_bytes) != \
        kex.fingerprint(identity, to_monitor.public_bytes, monitor.public_bytes)
    # Passing one side's value through unchanged does not help: that side's key is then unknown
    # to Mallory, and the fingerprints still differ because the other value differs.
    assert kex.fingerprint(identity, agent.public_bytes, to_agent.public_bytes) != \
        kex.fingerprint(identity, agent.public_bytes, monitor.public_bytes)


@settings(max_examples=5, deadline=None)
@given(st.integers(min_value=2, max_value=Q - 1), st.integers(min_value=2, max_value=Q - 1))
def test_agreement_is_symmetric_for_any_exponents(x, y):
    a, b = kex.KeyAgreement(private=x), kex.KeyAgreement(private=y)
    assert a.shared_secret(b.public_bytes) == b.shared_secret(a.public_bytes)


def test_agrees_with_openssls_dh_through_cryptography():
    try:
        from cryptography.hazmat.primitives.asymmetric import dh
    except ImportError:
        pytest.skip("cryptography is not installed for this Python")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # cryptography deprecates FFDH; it is only our witness here
        numbers = dh.DHParameterNumbers(P, 2)
        theirs = numbers.parameters().generate_private_key()
        their_public = theirs.public_key().public_numbers().y.to_bytes(384, "big")
        mine = kex.KeyAgreement()
        my_public = dh.DHPublicNumbers(int.from_bytes(mine.public_bytes, "big"), numbers).public_key()
        their_secret = theirs.exchange(my_public)
    assert mine.shared_secret(their_public) == their_secret.rjust(384, b"\x00")


def test_the_prime_is_openssls_builtin_ffdhe3072(tmp_path):
    """A third source for p besides the RFC's hex and its formula: OpenSSL's named group."""
    import shutil
    import subprocess
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        pytest.skip("cryptography is not installed for this Python")
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command on this machine")
    pem = tmp_path / "ffdhe3072.pem"
    made = subprocess.call([openssl, "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe3072",
                            "-out", str(pem)], stderr=subprocess.DEVNULL)
    if made != 0:
        pytest.skip("this openssl (before 3.0?) has no named group ffdhe3072 for genpkey")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        numbers = serialization.load_pem_parameters(pem.read_bytes()).parameter_numbers()
    assert (numbers.p, numbers.g) == (P, 2)
