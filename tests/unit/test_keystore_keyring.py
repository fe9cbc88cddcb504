"""The controller's side of a key rotation: .known_machines/next/ and previous/, `mdp keys install|use|remove|show`.

Real files and the real `mdp` command (in-process main) on tmp_path.
"""

import json
import os
import stat

import pytest

from mdp_agent import protocol
from mdp_controller import cli
from mdp_controller.keystore import KeyStore

IP = "10.0.0.5"


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def fingerprint(text):
    return protocol.key_fingerprint(protocol.parse_key_text(text))


def keys(store, *args, capsys):
    code = cli.main(["keys", "--known-machines", str(store.path), "--json", *args])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else out.err)


def test_the_ring_moves_through_install_use_remove_and_the_receive_path_sees_it(tmp_path, capsys):
    store = KeyStore(tmp_path / "km")
    old, new = protocol.generate_key_text(), protocol.generate_key_text()
    store.put(IP, old)
    assert store.alternates(IP) == ()
    new_file = tmp_path / "agent.next.key"
    new_file.write_text(new)

    code, out = keys(store, "install", IP, "--key-file", str(new_file), capsys=capsys)
    assert code == 0 and out == {"changed": True, "in_use": fingerprint(old), "next": fingerprint(new),
                                 "previous": None}
    assert mode(store.path / "next") == 0o700 and mode(store.file(IP, "next")) == 0o600
    assert [k.key for k in store.alternates(IP)] == [protocol.parse_key_text(new)]
    assert store.get(IP).key == protocol.parse_key_text(old), "requests keep the key in use"
    assert keys(store, "install", IP, "--key-file", str(new_file), capsys=capsys)[1]["changed"] is False
    assert [(r["state"], r["fingerprint"]) for r in store.list()] == [("trusted", fingerprint(old)),
                                                                      ("next", fingerprint(new))]

    code, out = keys(store, "use", IP, capsys=capsys)
    assert code == 0 and out == {"changed": True, "in_use": fingerprint(new), "next": None,
                                 "previous": fingerprint(old)}
    assert store.get(IP).key == protocol.parse_key_text(new)
    assert [k.key for k in store.alternates(IP)] == [protocol.parse_key_text(old)]
    assert store.ips() == [IP]

    code, out = keys(store, "remove", IP, capsys=capsys)
    assert code == 0 and out["changed"] and out["previous"] is None
    assert store.alternates(IP) == () and keys(store, "show", IP, capsys=capsys)[1] == {
        "changed": False, "in_use": fingerprint(new), "next": None, "previous": None}


def test_install_needs_a_key_file_and_refuses_what_is_not_a_key(tmp_path, capsys):
    store = KeyStore(tmp_path / "km")
    store.put(IP, protocol.generate_key_text())
    with pytest.raises(SystemExit) as usage:
        cli.main(["keys", "--known-machines", str(store.path), "install", IP])
    assert usage.value.code == 2 and "--key-file" in capsys.readouterr().err
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    code, err = keys(store, "install", IP, "--key-file", str(bad), capsys=capsys)
    assert code == 1 and IP in err and "hex" in err
    assert not store.file(IP, "next").exists()
