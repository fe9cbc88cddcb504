"""Cluster mode end to end on real Syncthing: every node is a real Syncthing process with its own
identity, sync port and API on its own loopback address, configured only through ClusterManager
(the code the agent runs). Nothing is mocked. Waits are conditions with deadlines."""

import json

import pytest
from harness import activate, read_or_none, seed_request, wait_for

from mdp_agent.cluster import ClusterError, folder_id

pytestmark = pytest.mark.slow

FOLDER = "/uploaded_files"
CONNECT_S = 90   # Syncthing's connection loop may sleep up to ~30 s right after it starts
SYNC_S = 60


def all_connected(nodes):
    return all(a.connected_to(b) for a in nodes for b in nodes if a is not b)


def everywhere(nodes, name, content):
    return all(read_or_none(n.path(FOLDER, name)) == content for n in nodes)


def nowhere(nodes, name):
    return all(not n.path(FOLDER, name).exists() for n in nodes)


@pytest.fixture
def trio(node_factory):
    nodes = [node_factory(i) for i in (1, 2, 3)]
    activate(nodes, FOLDER)
    wait_for(lambda: all_connected(nodes), CONNECT_S, "the three nodes to connect")
    return nodes


def test_seed_message_answers_in_the_seed_shape_and_reports_missing_identities(node_factory):
    a, b = node_factory(1), node_factory(2)
    answer = a.manager.handle(seed_request([a, b], FOLDER), a.ip)
    assert answer["changed"] is True
    assert answer["cluster_machines"] == a.ip
    assert [m["name"] for m in answer["machine_mode"]] == ["sync_folders"]
    assert 1 <= answer["machine_mode"][0]["performance"] <= 9
    assert answer["device_id"] == a.device_id
    assert answer["missing_identities"] == [b.ip]
    assert a.path(FOLDER).is_dir()
    # The identities handed out later complete it; a restarted agent then remembers them.
    answers = activate([a, b], FOLDER)
    assert answers[a.ip]["missing_identities"] == []
    again = a.new_manager().handle(seed_request([a, b], FOLDER), a.ip)
    assert again["missing_identities"] == []
    assert json.loads((a.state_dir / "cluster.json").read_text())["devices"] == {b.ip: b.device_id}
    assert oct((a.state_dir / "cluster.json").stat().st_mode & 0o777) == "0o600"


def test_create_change_delete_propagate(trio):
    a, b, c = trio
    a.path(FOLDER, "report.txt").write_bytes(b"first")
    wait_for(lambda: everywhere(trio, "report.txt", b"first"), SYNC_S, "a new file on every node")
    c.path(FOLDER, "report.txt").write_bytes(b"second version")
    wait_for(lambda: everywhere(trio, "report.txt", b"second version"), SYNC_S, "a change on every node")
    (b.path(FOLDER, "sub")).mkdir()
    b.path(FOLDER, "sub/deep.bin").write_bytes(bytes(range(256)) * 100)
    wait_for(lambda: everywhere(trio, "sub/deep.bin", bytes(range(256)) * 100), SYNC_S, "a nested file")
    b.path(FOLDER, "report.txt").unlink()
    wait_for(lambda: nowhere(trio, "report.txt"), SYNC_S, "the deletion on every node")


def test_concurrent_edits_keep_both_versions(trio):
    a, b, c = trio
    assert c.connected_to(a)
    a.path(FOLDER, "shared.txt").write_bytes(b"base")
    wait_for(lambda: everywhere(trio, "shared.txt", b"base"), SYNC_S, "the base version")
    # Cut a off from the others, edit on both sides, then reconnect: a true concurrent edit.
    for other in (b, c):
        a.api.request("POST", "/rest/system/pause", query={"device": other.device_id})
    wait_for(lambda: not a.connected_to(b) and not a.connected_to(c), SYNC_S, "a to disconnect")
    a.path(FOLDER, "shared.txt").write_bytes(b"edit on a")
    b.path(FOLDER, "shared.txt").write_bytes(b"edit on b")
    fid = folder_id(FOLDER)
    a.api.scan(fid)
    b.api.scan(fid)
    for other in (b, c):
        a.api.request("POST", "/rest/system/resume", query={"device": other.device_id})

    def versions(node):
        return sorted(p.read_bytes() for p in node.path(FOLDER).iterdir() if p.name.startswith("shared"))

    expected = sorted([b"edit on a", b"edit on b"])
    wait_for(lambda: all(versions(n) == expected for n in trio), SYNC_S,
             "both edits (one as a conflict copy) on every node")
    assert any(".sync-conflict-" in p.name for p in a.path(FOLDER).iterdir())


def test_host_added_later_catches_up_and_removed_host_stops_receiving(trio, node_factory):
    a = trio[0]
    a.path(FOLDER, "before.txt").write_bytes(b"made before d joined")
    wait_for(lambda: everywhere(trio, "before.txt", b"made before d joined"), SYNC_S, "the file on a, b, c")
    d = node_factory(4)
    four = trio + [d]
    activate(four, FOLDER)
    wait_for(lambda: read_or_none(d.path(FOLDER, "before.txt")) == b"made before d joined",
             CONNECT_S + SYNC_S, "the late host to catch up")

    # d leaves the list: the others drop it from the folder and their device lists.
    answers = activate(trio, FOLDER)
    assert all(ans["missing_identities"] == [] for ans in answers.values())
    for node in trio:
        config = node.api.config()
        assert d.device_id not in [dev["deviceID"] for dev in config["devices"]]
        folder = next(f for f in config["folders"] if f["id"] == folder_id(FOLDER))
        assert d.device_id not in [dev["deviceID"] for dev in folder["devices"]]
    wait_for(lambda: not any(node.connected_to(d) for node in trio), SYNC_S, "d to be disconnected")
    a.path(FOLDER, "after.txt").write_bytes(b"made after d left")
    wait_for(lambda: everywhere(trio, "after.txt", b"made after d left"), SYNC_S, "the new file on a, b, c")
    assert not d.path(FOLDER, "after.txt").exists()
    assert not d.connected_to(a)


def test_syncthing_and_agent_restart_keep_the_cluster(trio):
    a, b, c = trio
    b.restart()
    b.manager = b.new_manager()
    wait_for(lambda: all_connected(trio), CONNECT_S, "b to reconnect after its Syncthing restarted")
    c.path(FOLDER, "after-restart.txt").write_bytes(b"still syncing")
    wait_for(lambda: everywhere(trio, "after-restart.txt", b"still syncing"), SYNC_S, "the file after a restart")
    status = b.manager.status()
    assert status["cluster_machines"] == [a.ip, b.ip, c.ip]
    assert sorted(p["ip"] for p in status["peers"]) == [a.ip, c.ip]
    assert status["folders"][0]["folder"] == FOLDER


def test_reapplying_the_same_request_changes_nothing(trio):
    a = trio[0]
    before = a.api.config()
    answers = activate(trio, FOLDER)
    assert not any(answer["changed"] for answer in answers.values())
    after = a.api.config()
    assert before["folders"] == after["folders"] and before["devices"] == after["devices"]


@pytest.mark.parametrize("info, code", [
    ({"cluster_machines": ["127.0.40.1"], "cluster_mode": [{"name": "sync_folders", "folder": "relative"}]},
     "bad_folder"),
    ({"cluster_machines": ["127.0.40.1"], "cluster_mode": [{"name": "sync_folders", "folder": "/etc"}]},
     "bad_folder"),
    ({"cluster_machines": ["127.0.40.1"], "cluster_mode": [{"name": "mirror", "folder": "/data"}]},
     "unknown_mode"),
    ({"cluster_machines": ["127.0.40.9"], "cluster_mode": [{"name": "sync_folders", "folder": "/data"}]},
     "not_in_cluster"),
    ({"cluster_machines": ["127.0.40.1", "127.0.40.2"], "cluster_mode": [{"name": "sync_folders", "folder": "/d"}],
      "cluster_devices": {"127.0.40.2": "NOT-A-DEVICE-ID"}}, "bad_device_id"),
])
def test_bad_requests_change_nothing(node_factory, info, code):
    a = node_factory(1)
    before = a.api.config()
    with pytest.raises(ClusterError) as caught:
        a.manager.handle(info, a.ip)
    assert caught.value.code == code
    assert a.api.config() == before
    assert not (a.state_dir / "cluster.json").exists()


def test_syncthing_not_running_is_a_clear_error(node_factory):
    a = node_factory(1)
    a.stop()
    with pytest.raises(ClusterError) as caught:
        a.manager.handle(seed_request([a], FOLDER), a.ip)
    assert caught.value.code == "syncthing_unavailable"
    assert "not running" in caught.value.message


def test_leave_removes_the_folder_and_peers_but_keeps_the_files(trio):
    a, _, c = trio
    a.path(FOLDER, "kept.txt").write_bytes(b"kept")
    wait_for(lambda: everywhere(trio, "kept.txt", b"kept"), SYNC_S, "the file everywhere")
    answer = c.manager.handle({"cluster_leave": True}, c.ip)
    assert answer["left"] is True and answer["machine_mode"] == []
    config = c.api.config()
    folder = next(f for f in config["folders"] if f["id"] == folder_id(FOLDER))
    assert folder["paused"] is True and [d["deviceID"] for d in folder["devices"]] == [c.device_id]
    assert [d["deviceID"] for d in config["devices"]] == [c.device_id]
    assert read_or_none(c.path(FOLDER, "kept.txt")) == b"kept"
    # Joining again later works: the folder comes back with its marker and syncs.
    activate(trio, FOLDER)
    a.path(FOLDER, "back.txt").write_bytes(b"back")
    wait_for(lambda: everywhere(trio, "back.txt", b"back"), CONNECT_S + SYNC_S, "the file after re-joining")
    assert c.folder_state(FOLDER)["state"] != "error"
