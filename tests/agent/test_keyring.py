"""The keyring (issue 8 item 3): the key files' install/use/remove steps, the agent's `--keyring` CLI,
and an Endpoint with alternate keys accepting either key and answering with the request's.

Real files in tmp_path and real bytes between two sans-I/O endpoints. Runs under Python 3.6 too.
"""

import json
import os
import stat

import pytest

from mdp_agent import __main__ as agent_main
from mdp_agent import keyfile
from mdp_agent import protocol as p

OLD = p.KeyPair(bytes(bytearray(range(32))))
NEW = p.KeyPair(bytes(bytearray(range(100, 132))))
NOW_MS = 1767225600000
CONTROLLER = ("192.0.2.10", 40000)
AGENT_ADDR = ("192.0.2.20", 12345)


def ring_in(tmp_path, current=OLD):
    state = str(tmp_path / "state")
    keyfile.ensure_private_dir(state)
    ring = keyfile.Keyring.of_agent(state)
    if current is not None:
        keyfile.write_private_file(ring.current, p.hexlify(current.key) + "\n")
    return ring


def key_in(path):
    return keyfile.read_key_file(path).key


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_install_use_remove_move_the_keys_through_the_ring_and_each_step_runs_once(tmp_path):
    ring = ring_in(tmp_path)
    in_use, others = ring.load()
    assert in_use.key == OLD.key and others == ()

    assert ring.install() is True
    new_key = key_in(ring.next)
    assert new_key != OLD.key and mode(ring.next) == 0o600
    assert ring.install() is False and key_in(ring.next) == new_key, "a re-run keeps the installed key"
    in_use, others = ring.load()
    assert in_use.key == OLD.key and [k.key for k in others] == [new_key]

    assert ring.use() is True
    assert key_in(ring.current) == new_key and key_in(ring.previous) == OLD.key
    assert not os.path.exists(ring.next) and mode(ring.current) == mode(ring.previous) == 0o600
    assert ring.use() is False, "nothing installed: nothing to put in use"
    in_use, others = ring.load()
    assert in_use.key == new_key and [k.key for k in others] == [OLD.key]

    assert ring.remove() is True and ring.remove() is False
    in_use, others = ring.load()
    assert in_use.key == new_key and others == ()
    assert ring.fingerprints() == {"in_use": p.key_fingerprint(new_key), "next": None, "previous": None}


def test_install_with_a_given_key_skips_a_key_already_in_the_ring(tmp_path):
    ring = ring_in(tmp_path)
    assert ring.install(p.hexlify(OLD.key)) is False, "the key in use is not installed again"
    assert ring.install(p.hexlify(NEW.key) + "\n") is True
    assert ring.install(p.hexlify(NEW.key)) is False
    with pytest.raises(ValueError):
        ring.install("not a key")
    assert key_in(ring.next) == NEW.key, "a bad key changes nothing"


def test_use_after_a_crash_between_its_two_writes_still_accepts_both_keys(tmp_path):
    """use() writes previous before renaming next over current: stopped in between, every key is kept."""
    ring = ring_in(tmp_path)
    ring.install(p.hexlify(NEW.key))
    keyfile.write_private_file(ring.previous, p.hexlify(OLD.key) + "\n")   # the first write, then the "crash"
    in_use, others = ring.load()
    assert in_use.key == OLD.key and [k.key for k in others] == [NEW.key], "duplicates are accepted once"
    assert ring.use() is True
    in_use, others = ring.load()
    assert in_use.key == NEW.key and [k.key for k in others] == [OLD.key]


def test_a_damaged_next_key_is_never_put_in_use(tmp_path):
    ring = ring_in(tmp_path)
    keyfile.write_private_file(ring.next, "garbage\n")
    with pytest.raises(ValueError) as info:
        ring.use()
    assert ring.next in str(info.value)
    assert key_in(ring.current) == OLD.key and not os.path.exists(ring.previous)


def test_the_agent_cli_runs_the_steps_and_prints_fingerprints(tmp_path, capsys):
    ring = ring_in(tmp_path)
    argv = ["--config", "/nonexistent", "--state-dir", os.path.dirname(ring.current), "--keyring"]

    def step(name):
        assert agent_main.main(argv + [name]) == 0
        return json.loads(capsys.readouterr().out)

    old_fp = p.key_fingerprint(OLD.key)
    assert step("show") == {"changed": False, "in_use": old_fp, "next": None, "previous": None}
    installed = step("install")
    assert installed["changed"] and installed["in_use"] == old_fp and installed["next"] not in (None, old_fp)
    used = step("use")
    assert used == {"changed": True, "in_use": installed["next"], "next": None, "previous": old_fp}
    assert step("use")["changed"] is False
    assert step("remove") == {"changed": True, "in_use": installed["next"], "next": None, "previous": None}


def agent_endpoint(others):
    return p.Endpoint(p.TO_AGENT, lambda ip, msg_id: OLD, dedup={p.REQUEST: False}, answer_errors=True,
                      alternate_keys=lambda ip: others)


def ask(agent, keys, reply_obj):
    """A request sealed with keys; the agent endpoint answers it with the key its event names."""
    msg_id, datagrams = p.encode(p.REQUEST, p.make_request(["ping"]), keys, p.TO_AGENT, None, NOW_MS)
    events = agent.feed(datagrams[0], CONTROLLER, NOW_MS, 0.0)
    for event in events:
        if isinstance(event, p.Message):
            agent.send(event.addr, p.REPLY, reply_obj, event.keys, NOW_MS, 0.0, event.msg_id)
    return events, msg_id, [d for _, d in agent.datagrams_to_send()]


@pytest.mark.parametrize("keys", [OLD, NEW], ids=["current", "alternate"])
def test_an_endpoint_accepts_every_key_of_the_ring_and_replies_with_the_request_key(keys):
    agent = agent_endpoint((NEW,))
    events, msg_id, out = ask(agent, keys, p.make_reply([{"name": "ping", "result": "pong"}]))
    assert [type(e) for e in events] == [p.Message] and events[0].keys is keys
    assert len(out) == 1
    assert p.open_datagram(out[0], keys, p.TO_CONTROLLER).msg_id == msg_id
    other = NEW if keys is OLD else OLD
    with pytest.raises(p.ProtocolError) as info:
        p.open_datagram(out[0], other, p.TO_CONTROLLER)
    assert info.value.code == "bad_signature", "the reply is sealed with the request's key only"


def test_a_key_removed_from_the_ring_is_refused():
    events, _, out = ask(agent_endpoint(()), NEW, {"status": True})
    assert [(type(e), e.code) for e in events] == [(p.Refusal, "bad_signature")] and out == []
    events, _, out = ask(agent_endpoint((NEW,)), p.KeyPair(os.urandom(32)), {"status": True})
    assert [(type(e), e.code) for e in events] == [(p.Refusal, "bad_signature")] and out == [], \
        "a key outside the ring is refused after every key of the ring was tried"


def test_an_unsupported_version_under_an_alternate_key_is_answered_with_that_key():
    head = p.HEADER.pack(p.MAGIC, p.PROTOCOL_VERSION + 1, p.REQUEST, 0, 0, 0, 1, os.urandom(8), NOW_MS)
    datagram = p.seal_datagram(NEW.for_direction(p.TO_AGENT), head, b'{"operations":["ping"]}')
    agent = agent_endpoint((NEW,))
    events = agent.feed(datagram, CONTROLLER, NOW_MS, 0.0)
    assert [(type(e), e.code) for e in events] == [(p.Refusal, "unsupported_version")]
    [(addr, answer)] = agent.datagrams_to_send()
    reply = p.decode_body(0, p.open_datagram(answer, NEW, p.TO_CONTROLLER).body)
    assert addr == CONTROLLER and reply["error"]["code"] == "unsupported_version"
