"""The fan-out's pause of the cyclic garbage collector: shared by nested and concurrent batches, and
always undone, whatever the batch ends with."""

from __future__ import annotations

import asyncio
import gc

import pytest

from mdp_agent import protocol
from mdp_controller import client
from mdp_controller.keystore import KeyStore


@pytest.fixture(autouse=True)
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_nested_pauses_resume_the_collector_after_the_last():
    with client._CyclicGCPause():
        assert not gc.isenabled()
        with client._CyclicGCPause():
            assert not gc.isenabled()
        assert not gc.isenabled()   # the outer batch is still in flight
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    with client._CyclicGCPause():
        pass
    assert not gc.isenabled()


def test_batches_that_fail_or_find_no_key_leave_the_collector_on(tmp_path):
    replies = client.send_sync(["192.0.2.1"], ["ping"], known_machines=str(tmp_path), timeout=0.5)
    assert replies["192.0.2.1"]["error"]["code"] == "no_key"
    KeyStore(tmp_path).put("192.0.2.3", protocol.generate_key_text())
    with pytest.raises(OverflowError):   # raised by sendto inside the batch
        client.send_sync(["192.0.2.3"], ["ping"], known_machines=str(tmp_path), timeout=0.5, port=70000)
    assert gc.isenabled()

    async def two_at_once():
        return await asyncio.gather(
            client.send_many(["192.0.2.1"], ["ping"], known_machines=str(tmp_path), timeout=0.5),
            client.send_many(["192.0.2.2"], ["ping"], known_machines=str(tmp_path), timeout=0.5))

    assert [r[ip]["error"]["code"] for r, ip in zip(asyncio.run(two_at_once()), ("192.0.2.1", "192.0.2.2"))] == \
        ["no_key", "no_key"]
    assert gc.isenabled()
