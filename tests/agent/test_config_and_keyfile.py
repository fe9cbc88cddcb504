"""Agent configuration (INI + flags) and its key file. Runs on the oldest Python too."""

import os
import stat

import pytest

from mdp_agent import config, keyfile, protocol


def write(tmp_path, text):
    path = tmp_path / "agent.conf"
    path.write_text(text)
    return str(path)


def test_defaults_when_the_file_is_missing(tmp_path):
    settings, cluster = config.load(str(tmp_path / "missing.conf"))
    assert settings["port"] == 12345 and settings["max_datagram"] == 1200 and settings["allow"] == ["*"]
    assert settings["enable_mutating"] is False and cluster == {}


def test_file_values_and_overrides(tmp_path):
    path = write(tmp_path, "[agent]\nport = 4000\nallow = ping, load.*\nenrol = yes\n[cluster]\nsyncthing_api = x\n")
    settings, cluster = config.load(path, {"port": 5000, "monitor": "10.0.0.1:12345"})
    assert settings["port"] == 5000 and settings["allow"] == ["ping", "load.*"] and settings["enrol"] is True
    assert settings["monitor"] == "10.0.0.1:12345" and cluster == {"syncthing_api": "x"}


@pytest.mark.parametrize("text, message", [
    ("[agent]\nport = 70000\n", "port must be"),
    ("[agent]\nport = abc\n", "port must be an int"),
    ("[agent]\nenrol = maybe\n", "true or false"),
    ("[agent]\nbogus = 1\n", "unknown setting"),
    ("[agent]\nmax_datagram = 100\n", "max_datagram"),
    ("[agent]\nstate_dir = relative\n", "absolute"),
    ("[agent]\nmonitor = a:b:c:d\n", "HOST:PORT"),
    ("not ini at all", "not a valid INI"),
])
def test_bad_config_gets_a_clear_error(tmp_path, text, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(write(tmp_path, text))


def test_parse_hostport():
    assert config.parse_hostport("10.0.0.1:99") == ("10.0.0.1", 99)
    assert config.parse_hostport("monitor.lan") == ("monitor.lan", 12345)
    assert config.parse_hostport("[fd00::1]:7") == ("fd00::1", 7)


def test_key_is_created_once_private_and_stable(tmp_path):
    state = str(tmp_path / "state")
    keys, path, created = keyfile.load_or_create_key(state)
    assert created and stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = open(path).read()
    assert len(text) == 65 and text.endswith("\n") and protocol.parse_key_text(text) == keys.key
    again, _, created_again = keyfile.load_or_create_key(state)
    assert not created_again and again.key == keys.key


def test_loose_key_permissions_are_tightened_and_garbage_refused(tmp_path):
    state = str(tmp_path / "state")
    _, path, _ = keyfile.load_or_create_key(state)
    os.chmod(path, 0o644)
    keyfile.load_or_create_key(state)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "w") as handle:
        handle.write("garbage\n")
    with pytest.raises(ValueError, match="agent.key"):
        keyfile.load_or_create_key(state)
