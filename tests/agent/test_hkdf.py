"""HKDF-SHA256 (agent_src/mdp_agent/hkdf.py) against RFC 5869 Appendix A, test cases 1-3.

Runs under Python 3.11 and 3.6 (PYTHONPATH=agent_src); `cryptography`'s HKDF, where installed,
is a second opinion on random inputs.
"""

import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdp_agent import hkdf


def unhex(text):
    return binascii.unhexlify("".join(text.split()))


# RFC 5869 Appendix A: A.1 basic, A.2 longer inputs/outputs, A.3 zero-length salt and info.
RFC5869 = [
    ("A.1", "0b" * 22, "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9", 42,
     "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    ("A.2", "".join("%02x" % i for i in range(0x00, 0x50)), "".join("%02x" % i for i in range(0x60, 0xb0)),
     "".join("%02x" % i for i in range(0xb0, 0x100)), 82,
     "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
     "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
     "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
     "cc30c58179ec3e87c14c01d5c1f3434f1d87"),
    ("A.3", "0b" * 22, "", "", 42,
     "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]


@pytest.mark.parametrize("case", RFC5869, ids=[c[0] for c in RFC5869])
def test_rfc5869_test_cases(case):
    _, ikm, salt, info, length, prk, okm = case
    ikm, salt, info, prk, okm = unhex(ikm), unhex(salt), unhex(info), unhex(prk), unhex(okm)
    assert hkdf.hkdf_extract(salt, ikm) == prk
    assert hkdf.hkdf_expand(prk, info, length) == okm
    assert hkdf.hkdf(ikm, salt, info, length) == okm
    assert hkdf.HkdfExpander(prk).expand(info, length) == okm
    # Expand is a prefix stream: a shorter output is the start of a longer one.
    assert hkdf.hkdf_expand(prk, info, 7) == okm[:7]


def test_lengths_and_prk_size_are_checked():
    prk = b"\x01" * 32
    assert len(hkdf.hkdf_expand(prk, b"i", hkdf.MAX_OUTPUT)) == 255 * 32
    for bad in (0, -1, hkdf.MAX_OUTPUT + 1):
        with pytest.raises(ValueError, match="output length"):
            hkdf.hkdf_expand(prk, b"i", bad)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        hkdf.HkdfExpander(b"\x01" * 31)


def test_one_expander_serves_many_infos_without_state_leaking_between_them():
    expander = hkdf.HkdfExpander(b"\x07" * 32)
    first = [expander.expand(bytes(bytearray([i])) * 8) for i in range(50)]
    again = [hkdf.hkdf_expand(b"\x07" * 32, bytes(bytearray([i])) * 8, 32) for i in range(50)]
    assert first == again and len(set(first)) == 50


@settings(max_examples=200, deadline=None)
@given(prk=st.binary(min_size=32, max_size=200), info=st.binary(max_size=80),
       length=st.integers(min_value=1, max_value=300))
def test_the_expander_is_hmac_as_the_standard_library_computes_it(prk, info, length):
    """The expander writes HMAC out over hashlib (long PRKs hashed first): check it against hmac."""
    import hashlib
    import hmac
    okm, previous, counter = b"", b"", 1
    while len(okm) < length:
        previous = hmac.new(prk, previous + info + bytes(bytearray([counter])), hashlib.sha256).digest()
        okm, counter = okm + previous, counter + 1
    assert hkdf.HkdfExpander(prk).expand(info, length) == okm[:length]


@settings(max_examples=100, deadline=None)
@given(ikm=st.binary(max_size=100), salt=st.binary(max_size=80), info=st.binary(max_size=80),
       length=st.integers(min_value=1, max_value=300))
def test_agrees_with_cryptography_hkdf(ikm, salt, info, length):
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError:
        pytest.skip("cryptography is not installed for this Python")
    theirs = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
    assert hkdf.hkdf(ikm, salt, info, length) == theirs


def test_the_design_notes_worked_example():
    """docs/mdp2-design.md (a): the proposed MDP/2 key schedule, message key and sealed datagram."""
    import struct

    from mdp_agent import aead
    prk = hkdf.hkdf_extract(b"MDP/2 key schedule", bytes(bytearray(range(32))))
    to_agent = hkdf.hkdf_expand(prk, b"MDP/2 to-agent", 32)
    assert binascii.hexlify(prk) == b"4dbd8b5184445d69c19186d9cc3158591832459e1d976b626c75ed750e42db0d"
    assert binascii.hexlify(to_agent) == b"a047ece8e8d3223e2af8fd8634673bc28b2ea566f1067d200e0c4b06d0698bcc"
    assert binascii.hexlify(hkdf.hkdf_expand(prk, b"MDP/2 to-controller", 32)) == \
        b"b4b1317f80e85ce7761c0ea6870eef15ce99247e2154309675dd078d92413f35"
    msg_id, timestamp_ms = unhex("0102030405060708"), 1767225600000
    header = struct.pack("!2sBBBBHH8sQ", b"MD", 2, 1, 0, 0, 0, 1, msg_id, timestamp_ms)
    message_key = hkdf.HkdfExpander(to_agent).expand(b"MDP/2 message" + b"\x01" + msg_id
                                                     + struct.pack("!Q", timestamp_ms))
    assert binascii.hexlify(message_key) == b"f924c31582d6b743d71e85ec195f0341b3d97498a55f9e53d03b9da7bb43697a"
    expected = unhex("d784782d7e5a4b300e607fbdfc3e2ea4e9b68217529939 d275ca6b58cee50373be552bb629fffc")
    sides = [aead.libcrypto()]
    try:
        sides.append(aead.cryptography())
    except aead.AeadUnavailable:
        pass
    for side in sides:
        assert side.seal(message_key, b"\x00" * 12, b'{"operations":["ping"]}', header) == expected
