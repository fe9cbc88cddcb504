"""The controller's key store: .known_machines/<ip>.txt files, 0600 in 0700 directories, atomic, never silently replaced."""

import os
import stat

import pytest

from mdp_agent import protocol
from mdp_controller.keystore import KeyStore, KeyStoreError


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_put_and_get_round_trip_with_private_modes(tmp_path):
    store = KeyStore(tmp_path / "km")
    text = protocol.generate_key_text()
    path = store.put("10.0.0.5", text)
    assert path.read_text() == text
    assert mode(path) == 0o600 and mode(tmp_path / "km") == 0o700
    assert store.get("10.0.0.5").key == protocol.parse_key_text(text)


def test_missing_key_names_the_machine_and_directory(tmp_path):
    with pytest.raises(KeyStoreError, match=r"no key for 10\.0\.0\.9 in .*km"):
        KeyStore(tmp_path / "km").get("10.0.0.9")


def test_a_different_key_is_never_silently_replaced(tmp_path):
    store = KeyStore(tmp_path)
    store.put("10.0.0.5", protocol.generate_key_text())
    with pytest.raises(KeyStoreError, match="different key"):
        store.put("10.0.0.5", protocol.generate_key_text())
    replacement = protocol.generate_key_text()
    store.put("10.0.0.5", replacement, replace=True)
    assert store.get("10.0.0.5").key == protocol.parse_key_text(replacement)


def test_pending_accept_reject_revoke(tmp_path):
    store = KeyStore(tmp_path)
    store.put("10.0.0.7", protocol.generate_key_text(), state="pending")
    with pytest.raises(KeyStoreError, match="pending"):
        store.get("10.0.0.7")
    store.accept("10.0.0.7")
    assert store.ips() == ["10.0.0.7"]
    store.revoke("10.0.0.7")
    assert [(r["ip"], r["state"]) for r in store.list()] == [("10.0.0.7", "rejected")]
    store.put("10.0.0.8", protocol.generate_key_text(), state="pending")
    store.reject("10.0.0.8")
    assert not (tmp_path / "pending" / "10.0.0.8.txt").exists()
    with pytest.raises(KeyStoreError, match="no pending key"):
        store.accept("10.0.0.8")


@pytest.mark.parametrize("bad", ["../etc/passwd", "10.0.0.256", "host.example", ""])
def test_only_ip_addresses_name_key_files(tmp_path, bad):
    with pytest.raises(KeyStoreError, match="not an IP address"):
        KeyStore(tmp_path).put(bad, protocol.generate_key_text())


def test_garbage_is_not_stored_as_a_key(tmp_path):
    with pytest.raises(ValueError):
        KeyStore(tmp_path).put("10.0.0.5", "not a key")
    assert not (tmp_path / "10.0.0.5.txt").exists()


def test_key_file_edited_on_disk_is_reloaded(tmp_path):
    store = KeyStore(tmp_path)
    store.put("10.0.0.5", protocol.generate_key_text())
    store.get("10.0.0.5")
    new = protocol.generate_key_text()
    path = tmp_path / "10.0.0.5.txt"
    path.write_text(new)
    os.utime(path, (1, 1))   # a different mtime, whatever the clock resolution
    assert store.get("10.0.0.5").key == protocol.parse_key_text(new)


def test_lookup_sees_a_removed_or_spoiled_key_file_at_once(tmp_path):
    """The receive path's lookup: a cached key is re-checked by stat, an unreadable file is no key."""
    store = KeyStore(tmp_path)
    store.put("10.0.0.5", protocol.generate_key_text())
    path = tmp_path / "10.0.0.5.txt"
    assert store.lookup("10.0.0.5") is store.lookup("10.0.0.5")   # cached while the file is unchanged
    path.unlink()
    assert store.lookup("10.0.0.5") is None
    path.write_bytes("\u00e9".encode() * 32)   # not ASCII, not a key
    assert store.lookup("10.0.0.5") is None
    with pytest.raises(KeyStoreError, match="unreadable"):
        store.get("10.0.0.5")
    assert store.lookup("not-an-ip") is None


def test_a_pending_enrolment_is_accepted_only_with_its_own_fingerprint(tmp_path):
    store = KeyStore(tmp_path)
    first, second = protocol.generate_key_text(), protocol.generate_key_text()
    store.put_pending("10.0.0.9", first, "AAAA-BBBB-CCCC-DDDD")
    assert mode(tmp_path / "pending" / "10.0.0.9.fingerprint") == 0o600
    assert [(r["state"], r["fingerprint"]) for r in store.list()] == [("pending", "AAAA-BBBB-CCCC-DDDD")]
    # One pending enrolment per address: a later one replaces key and fingerprint together.
    store.put_pending("10.0.0.9", second, "EEEE-FFFF-GGGG-HHHH")
    with pytest.raises(KeyStoreError, match="has fingerprint EEEE-FFFF-GGGG-HHHH, not AAAA") as info:
        store.accept("10.0.0.9", "AAAA-BBBB-CCCC-DDDD")
    assert info.value.code == "fingerprint_mismatch" and store.get_text("10.0.0.9") is None
    store.accept("10.0.0.9", "eeeeffffgggghhhh")   # typed by a person: any case, dashes optional
    assert store.get_text("10.0.0.9") == second.strip()
    assert not (tmp_path / "pending" / "10.0.0.9.fingerprint").exists() and store.count("pending") == 0


def test_a_pending_key_without_its_fingerprint_file_is_never_accepted_by_fingerprint(tmp_path):
    store = KeyStore(tmp_path)
    key = protocol.generate_key_text()
    store.put("10.0.0.10", key, state="pending")   # filed by hand: no enrolment, no fingerprint
    fingerprint = protocol.key_fingerprint(protocol.parse_key_text(key))
    with pytest.raises(KeyStoreError, match="has fingerprint None"):
        store.accept("10.0.0.10", fingerprint)
    store.put_pending("10.0.0.11", key, "AAAA-BBBB-CCCC-DDDD")
    store.reject("10.0.0.11")
    assert not (tmp_path / "pending" / "10.0.0.11.fingerprint").exists()


def test_normalise_ip_takes_canonical_ipv4_as_it_is_and_refuses_the_rest_as_ipaddress_does():
    import ipaddress
    import random

    from mdp_controller.keystore import KeyStoreError, normalise_ip
    rng = random.Random(7)
    samples = [".".join(str(rng.randint(0, 300)) for _ in range(4)) for _ in range(20_000)]
    samples += ["010.0.0.1", "1.2.3.04", "1.2.3", "1.2.3.4.5", "1.2.3.4/", "../x", "\u0661.\u0662.\u0663.\u0664"]
    for text in samples:
        try:
            expected = str(ipaddress.ip_address(text))
        except ValueError:
            expected = None
        try:
            got = normalise_ip(text)
        except KeyStoreError:
            got = None
        assert got == expected, text
    assert normalise_ip("::ffff:10.0.0.5") == "10.0.0.5" and normalise_ip(" 10.0.0.1 ") == "10.0.0.1"
