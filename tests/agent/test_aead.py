"""AES-256-GCM (agent_src/mdp_agent/aead.py): known answers, both implementations equal, refusals.

Runs under Python 3.11 and 3.6 (PYTHONPATH=agent_src): 3.6 syntax, stdlib + pytest + hypothesis,
plus `cryptography` where it is installed (both venvs install it; 40.0.2 is the last for 3.6).
Real libcrypto, real `cryptography`: nothing is mocked.

Other libcrypto builds can be checked too: MDP_EXTRA_LIBCRYPTO=/path/libcrypto.so.1.1:/other/one
runs the known answers and the cross-check against each of them (loaded next to the interpreter's).
"""

import binascii
import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdp_agent import aead

SOME = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def unhex(text):
    return binascii.unhexlify("".join(text.split()))


# AES-256 test cases 13-16 of McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)",
# revised 2005, Appendix B (the ones with a 96-bit IV; 17 and 18 use 64- and 480-bit IVs, which
# MDP never uses). Fields: key, iv, plaintext, aad, ciphertext, tag.
GCM_SPEC_K = "feffe9928665731c6d6a8f9467308308 feffe9928665731c6d6a8f9467308308"
GCM_SPEC_IV = "cafebabefacedbaddecaf888"
GCM_SPEC_P = ("d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72"
              "1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b391aafd255")
GCM_SPEC_C = ("522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa"
              "8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662898015ad")
KNOWN_ANSWERS = [
    ("case 13", "00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    ("case 14", "00" * 32, "00" * 12, "00" * 16, "", "cea7403d4d606b6e074ec5d3baf39d18",
     "d0d1c8a799996bf0265b98b5d48ab919"),
    ("case 15", GCM_SPEC_K, GCM_SPEC_IV, GCM_SPEC_P, "", GCM_SPEC_C, "b094dac5d93471bdec1a502270e3cc6c"),
    ("case 16", GCM_SPEC_K, GCM_SPEC_IV, GCM_SPEC_P[:-8], "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     GCM_SPEC_C[:-8], "76fc6ece0f4e1768cddf8853bb2d551b"),
]


def _implementations():
    found = [pytest.param(aead.libcrypto, id="libcrypto")]
    for path in filter(None, os.environ.get("MDP_EXTRA_LIBCRYPTO", "").split(":")):
        found.append(pytest.param(lambda path=path: aead.LibcryptoAesGcm(aead.load_libcrypto([path])),
                                  id="libcrypto:" + os.path.basename(path)))
    found.append(pytest.param(aead.cryptography, id="cryptography"))
    return found


def _cryptography_or_skip():
    try:
        return aead.cryptography()
    except aead.AeadUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=_implementations())
def impl(request):
    try:
        return request.param()
    except aead.AeadUnavailable as exc:
        if "cryptography" in request.node.name:
            pytest.skip(str(exc))
        raise


@pytest.mark.parametrize("case", KNOWN_ANSWERS, ids=[c[0] for c in KNOWN_ANSWERS])
def test_known_answers_from_the_gcm_specification(impl, case):
    _, key, iv, plaintext, aad, ciphertext, tag = (case[0],) + tuple(unhex(x) for x in case[1:])
    sealed = impl.seal(key, iv, plaintext, aad)
    assert sealed == ciphertext + tag
    assert impl.open(key, iv, sealed, aad) == plaintext


@pytest.mark.parametrize("case", KNOWN_ANSWERS, ids=[c[0] for c in KNOWN_ANSWERS])
def test_known_answers_refuse_every_single_bit_flip(impl, case):
    """Flipping any one bit of ciphertext, tag, aad, key or nonce makes open() refuse."""
    _, key, iv, plaintext, aad, ciphertext, tag = (case[0],) + tuple(unhex(x) for x in case[1:])
    sealed = ciphertext + tag

    def flipped(data, bit):
        changed = bytearray(data)
        changed[bit // 8] ^= 1 << (bit % 8)
        return bytes(changed)

    for bit in range(0, len(sealed) * 8, 7):
        with pytest.raises(aead.InvalidTag):
            impl.open(key, iv, flipped(sealed, bit), aad)
    for bit in range(0, len(aad) * 8, 5):
        with pytest.raises(aead.InvalidTag):
            impl.open(key, iv, sealed, flipped(aad, bit))
    for name, bad_key, bad_iv in (("key", flipped(key, 255), iv), ("nonce", key, flipped(iv, 0))):
        with pytest.raises(aead.InvalidTag):
            impl.open(bad_key, bad_iv, sealed, aad)
    with pytest.raises(aead.InvalidTag):
        impl.open(key, iv, sealed, aad + b"\x00")      # aad is length-bound, not padded
    # Still usable after all those failures: a refused open leaves nothing behind.
    assert impl.open(key, iv, sealed, aad) == plaintext


def test_wrong_sizes_and_types_are_refused(impl):
    key, nonce = b"k" * 32, b"n" * 12
    for bad in (b"", b"k" * 16, b"k" * 24, b"k" * 31, b"k" * 33, b"k" * 64):
        with pytest.raises(ValueError, match="key must be 32 bytes"):
            impl.seal(bad, nonce, b"x")
        with pytest.raises(ValueError, match="key must be 32 bytes"):
            impl.open(bad, nonce, b"x" * 17)
    for bad in (b"", b"n" * 8, b"n" * 11, b"n" * 13, b"n" * 16):
        with pytest.raises(ValueError, match="nonce must be 12 bytes"):
            impl.seal(key, bad, b"x")
        with pytest.raises(ValueError, match="nonce must be 12 bytes"):
            impl.open(key, bad, b"x" * 17)
    with pytest.raises(TypeError):
        impl.seal(key, nonce, "text, not bytes")
    for short in (b"", b"t" * 15):
        with pytest.raises(aead.InvalidTag, match="shorter than the 16-byte tag") as caught:
            impl.open(key, nonce, short)
        assert caught.value.code == "bad_tag"
    # The empty message still has its tag, and bytearray/memoryview inputs work like bytes.
    sealed = impl.seal(key, nonce, b"")
    assert len(sealed) == aead.TAG_SIZE and impl.open(key, nonce, sealed) == b""
    assert impl.seal(bytearray(key), memoryview(nonce), bytearray(b"abc"), memoryview(b"h")) == \
        impl.seal(key, nonce, b"abc", b"h")


keys = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=12, max_size=12)
plaintexts = st.binary(max_size=2500)
aads = st.binary(max_size=64)


@SOME
@given(key=keys, nonce=nonces, plaintext=plaintexts, aad=aads, where=st.integers(min_value=0))
def test_libcrypto_and_cryptography_give_identical_bytes_and_refuse_each_others_tampering(
        key, nonce, plaintext, aad, where):
    mine, theirs = aead.libcrypto(), _cryptography_or_skip()
    sealed = mine.seal(key, nonce, plaintext, aad)
    assert sealed == theirs.seal(key, nonce, plaintext, aad)
    assert len(sealed) == len(plaintext) + aead.TAG_SIZE
    assert mine.open(key, nonce, sealed, aad) == plaintext
    assert theirs.open(key, nonce, sealed, aad) == plaintext
    tampered = bytearray(sealed)
    tampered[where % len(sealed)] ^= 1 + where % 255
    for side in (mine, theirs):
        with pytest.raises(aead.InvalidTag):
            side.open(key, nonce, bytes(tampered), aad)
        with pytest.raises(aead.InvalidTag):
            side.open(key, nonce, sealed, aad + b"!")
        with pytest.raises(aead.InvalidTag):
            side.open(key, nonce, sealed[:-1], aad)


def test_every_extra_libcrypto_agrees_with_the_interpreters():
    """Only with MDP_EXTRA_LIBCRYPTO: another OpenSSL build gives the same bytes as ours."""
    paths = list(filter(None, os.environ.get("MDP_EXTRA_LIBCRYPTO", "").split(":")))
    if not paths:
        pytest.skip("MDP_EXTRA_LIBCRYPTO names no other libcrypto to compare with")
    ours = aead.libcrypto()
    for path in paths:
        other = aead.LibcryptoAesGcm(aead.load_libcrypto([path]))
        assert other.description != ours.description
        for size in (0, 1, 15, 16, 17, 1158, 4000):
            key, nonce, plaintext, aad = os.urandom(32), os.urandom(12), os.urandom(size), os.urandom(26)
            sealed = ours.seal(key, nonce, plaintext, aad)
            assert other.seal(key, nonce, plaintext, aad) == sealed
            assert other.open(key, nonce, sealed, aad) == plaintext


def test_threads_seal_and_open_at_once_without_mixing_state(impl):
    """Each thread has its own contexts: results from 4 threads at once equal single-threaded ones."""
    jobs = [(os.urandom(32), os.urandom(12), os.urandom(n % 1500), os.urandom(n % 30)) for n in range(400)]
    expected = [impl.seal(*job) for job in jobs]
    failures = []

    def work(offset):
        try:
            for i in range(len(jobs)):
                j = (i + offset) % len(jobs)
                key, nonce, plaintext, aad = jobs[j]
                if impl.seal(key, nonce, plaintext, aad) != expected[j]:
                    failures.append(("seal", j))
                if impl.open(key, nonce, expected[j], aad) != plaintext:
                    failures.append(("open", j))
                try:
                    impl.open(key, nonce, expected[j], aad + b"x")
                    failures.append(("accepted a bad tag", j))
                except aead.InvalidTag:
                    pass
        except Exception as exc:   # reported below: an exception in a thread would be lost
            failures.append(("raised", repr(exc)))

    threads = [threading.Thread(target=work, args=(k * 97,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_the_library_found_is_the_one_this_interpreter_links():
    loaded = aead._interpreters_libcrypto()
    if not loaded:
        pytest.skip("this interpreter maps no shared libcrypto (static OpenSSL build?)")
    linked = aead._linked_sonames(aead._import_extensions(["_hashlib", "_ssl"]))
    assert os.path.basename(loaded[0]) in linked, "the extensions' own libcrypto must come first"
    impl = aead.libcrypto()
    assert impl.description.endswith("(%s)" % loaded[0])
    assert "OpenSSL" in impl.description
    assert next(aead.candidate_libraries()) == ("loaded by this interpreter", loaded[0])


def test_mapped_libraries_are_read_from_proc_maps_and_a_deleted_one_by_its_name(tmp_path):
    """A libcrypto upgraded on disk while mapped shows as '(deleted)': dlopen its name instead."""
    maps = tmp_path / "maps"
    maps.write_text(
        "7f01-7f02 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libssl.so.1.0.0\n"
        "7f03-7f04 r-xp 00000000 08:01 2 /lib/x86_64-linux-gnu/libcrypto.so.1.0.0 (deleted)\n"
        "7f05-7f06 r--p 00001000 08:01 2 /lib/x86_64-linux-gnu/libcrypto.so.1.0.0 (deleted)\n"
        "7f07-7f08 rw-p 00000000 00:00 0 \n"
        "7f09-7f0a r-xp 00000000 08:01 3 /opt/other/libcrypto-abc.so.1.1\n")
    found = aead._loaded_libcrypto_paths(str(maps))
    assert sorted(found) == ["/opt/other/libcrypto-abc.so.1.1", "libcrypto.so.1.0.0"]
    # The one the interpreter's extensions were linked against comes first, whatever the map order.
    assert aead._loaded_libcrypto_paths(str(maps), linked=["libcrypto-abc.so.1.1"])[0] == \
        "/opt/other/libcrypto-abc.so.1.1"
    assert aead._loaded_libcrypto_paths(str(maps), linked=["libcrypto.so.1.0.0"])[0] == "libcrypto.so.1.0.0"


def test_no_usable_library_is_a_clear_error_naming_what_to_install(tmp_path):
    not_crypto = tmp_path / "libcrypto.so.42"
    not_crypto.write_bytes(b"\x7fELF this is not a shared object")
    with pytest.raises(aead.AeadUnavailable) as caught:
        aead.load_libcrypto(["libcrypto.so.0.0.0-does-not-exist", str(not_crypto), "libc.so.6"])
    message = str(caught.value)
    assert caught.value.code == "aead_unavailable" and caught.value.message == message
    assert "libcrypto.so.0.0.0-does-not-exist" in message and str(not_crypto) in message
    assert "libc.so.6" in message and "lacks EVP_CIPHER_CTX_new" in message
    assert "never sends clear text" in message
    assert "libssl1.0.0" in message and "libssl3" in message


def test_cryptography_missing_is_a_clear_error(monkeypatch):
    """Simulates an uninstalled `cryptography` by hiding it from import (it is installed here)."""
    import builtins
    real_import = builtins.__import__

    def hiding(name, *args, **kwargs):
        if name == "cryptography" or name.startswith("cryptography."):
            raise ImportError("No module named %r" % name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", hiding)
    with pytest.raises(aead.AeadUnavailable, match="pip install cryptography"):
        aead.CryptographyAesGcm()
