"""The agent refuses to start without AES-GCM: there is no clear-text fall-back.

A host whose libcrypto cannot be loaded does not exist here, so aead.libcrypto is replaced by one
that raises what LibcryptoAesGcm raises on such a host (AeadUnavailable naming what is missing).
"""

from mdp_agent import __main__ as agent_main
from mdp_agent import aead, protocol


def test_the_agent_refuses_to_start_without_libcrypto(monkeypatch, tmp_path, capsys):
    def unavailable():
        raise aead.AeadUnavailable("no usable libcrypto (tried libcrypto.so.3, libcrypto.so.1.1); "
                                   "install the package that provides it (libssl3)")
    monkeypatch.setattr(aead, "libcrypto", unavailable)
    monkeypatch.setattr(protocol, "_AEAD", [])
    state_dir = tmp_path / "state"
    code = agent_main.main(["--config", "/nonexistent", "--state-dir", str(state_dir),
                            "--bind", "127.0.0.1", "--port", "12345"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("mdp-agent: cannot start: no usable libcrypto") and "libssl3" in err
    assert protocol._AEAD == [] and not (state_dir / "agent.key").exists()   # stopped before anything else


def test_enrol_needs_a_monitor_and_creates_no_key_of_its_own(tmp_path, capsys):
    """With enrol and no key, the key is to be agreed with the monitor: without one, no start."""
    state_dir = tmp_path / "state"
    code = agent_main.main(["--config", "/nonexistent", "--state-dir", str(state_dir), "--enrol",
                            "--bind", "127.0.0.1", "--port", "12345"])
    assert code == 2 and "enrol needs a monitor" in capsys.readouterr().err
    assert not (state_dir / "agent.key").exists()
    # --init-only still makes a key (the deploy role's step): the machine is then enrolled over SSH.
    assert agent_main.main(["--config", "/nonexistent", "--state-dir", str(state_dir), "--enrol",
                            "--init-only"]) == 0
    assert (state_dir / "agent.key").exists()
