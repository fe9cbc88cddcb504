"""Cluster request validation, device IDs and error paths, without Syncthing.

Syncthing-backed behaviour (sync, removal, restarts) is in tests/cluster with real instances.
Here a "not running" Syncthing is a real closed port, so the error path is the real one.
"""

import json
import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdp_agent import cluster, syncthing
from mdp_agent.cluster import ClusterError, ClusterManager, Request, validate_folder

# A real device ID (made by `syncthing -generate`); its four check characters are valid.
GOOD_ID = "GIKXLDZ-CMSUMVR-C6NSDGK-OXG3EOG-YLN6GRY-CN6UAK3-ESMMB6H-J32OZAL"


def closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def manager(tmp_path, **config):
    key = tmp_path / "api-key"
    key.write_text("k")
    settings = {"syncthing_api": "http://127.0.0.1:%d" % closed_port(), "syncthing_api_key_file": str(key),
                "syncthing_config": str(tmp_path / "missing.xml"), "folder_root": str(tmp_path / "root")}
    settings.update(config)
    return ClusterManager(str(tmp_path / "state"), settings)


def seed(folder="/uploaded_files", machines=("192.168.33.10", "192.168.33.15")):
    return {"cluster_machines": list(machines), "cluster_mode": [{"name": "sync_folders", "folder": folder}]}


# Device IDs ---------------------------------------------------------------------------------

def test_device_id_forms_normalise_to_the_dashed_form():
    assert syncthing.normalize_device_id(GOOD_ID) == GOOD_ID
    assert syncthing.normalize_device_id(GOOD_ID.lower().replace("-", "")) == GOOD_ID
    assert syncthing.normalize_device_id(" " + GOOD_ID + " ") == GOOD_ID


@pytest.mark.parametrize("bad, words", [
    (GOOD_ID[:-1] + "M", "check character 4"),
    (GOOD_ID[:3] + ("A" if GOOD_ID[3] != "A" else "B") + GOOD_ID[4:], "check character 1"),
    (GOOD_ID[:-8], "56 base32"),
    (GOOD_ID.replace("G", "1"), "56 base32"),
    ("", "56 base32"),
])
def test_malformed_device_ids_are_refused_with_the_reason(bad, words):
    with pytest.raises(ValueError) as caught:
        syncthing.normalize_device_id(bad)
    assert words in str(caught.value)


def test_non_string_device_id_is_refused():
    with pytest.raises(ValueError):
        syncthing.normalize_device_id(12345)


# Folders ------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["relative", "./x", "", "/", "//", "/proc", "/proc/1/root", "/sys",
                                    "/dev/shm", "/etc", "/etc/", "//etc", "/data/../etc/ssh", "/boot/grub",
                                    "/run", "/run/lock", "/usr/lib", "/bin", "a\x00b", None, 7, "/" + "x" * 5000])
def test_unsafe_or_malformed_folders_are_refused(folder):
    with pytest.raises(ClusterError) as caught:
        validate_folder(folder)
    assert caught.value.code == "bad_folder"
    assert caught.value.message


@pytest.mark.parametrize("folder, expected", [
    ("/uploaded_files", "/uploaded_files"),
    ("/srv/data/", "/srv/data"),
    ("/srv/./data//x", "/srv/data/x"),
    ("/etcetera", "/etcetera"),
    ("/var/lib/shared", "/var/lib/shared"),
])
def test_ordinary_folders_are_normalised(folder, expected):
    assert validate_folder(folder) == expected


def test_a_symlink_into_etc_is_refused(tmp_path):
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    with pytest.raises(ClusterError) as caught:
        validate_folder(str(link))
    assert "/etc" in caught.value.message


def test_folder_ids_are_stable_and_distinct():
    assert cluster.folder_id("/uploaded_files") == cluster.folder_id("/uploaded_files")
    assert cluster.folder_id("/uploaded_files") != cluster.folder_id("/uploaded_files2")
    assert cluster.folder_id("/a").startswith(cluster.FOLDER_ID_PREFIX)


# Requests -----------------------------------------------------------------------------------

def test_the_seed_request_parses():
    request = Request(seed(), "192.168.33.10")
    assert request.self_ip == "192.168.33.10"
    assert request.machines == ["192.168.33.10", "192.168.33.15"]
    assert request.folders == ["/uploaded_files"]
    assert request.devices == {}


@pytest.mark.parametrize("info, code, words", [
    ("not an object", "bad_cluster_info", "JSON object"),
    (dict(seed(), cluster_mode=[{"name": "mirror", "folder": "/x"}]), "unknown_mode", "mirror"),
    (dict(seed(), cluster_mode=["sync_folders"]), "unknown_mode", "sync_folders"),
    (dict(seed(), cluster_mode={"name": "sync_folders"}), "bad_mode", "list"),
    (seed(machines=("192.168.33.15", "192.168.33.20")), "not_in_cluster", "does not include this machine"),
    (seed(machines=()), "bad_machine", "non-empty"),
    (seed(machines=("192.168.33.10", "host.example")), "bad_machine", "not an IP address"),
    (dict(seed(), cluster_machines="192.168.33.10"), "bad_machine", "list"),
    (dict(seed(), cluster_devices={"192.168.33.99": GOOD_ID}), "bad_device_id", "not in cluster_machines"),
    (dict(seed(), cluster_devices={"192.168.33.15": "ABC"}), "bad_device_id", "192.168.33.15"),
    (dict(seed(), cluster_devices=["192.168.33.15"]), "bad_device_id", "map"),
    (dict(seed(machines=("192.168.33.10", "192.168.33.15", "192.168.33.16")),
          cluster_devices={"192.168.33.15": GOOD_ID, "192.168.33.16": GOOD_ID}), "bad_device_id", "same device ID"),
    (dict(seed(), cluster_leave="yes"), "bad_cluster_info", "cluster_leave"),
])
def test_bad_requests_name_the_cause(info, code, words):
    with pytest.raises(ClusterError) as caught:
        Request(info, "192.168.33.10")
    assert caught.value.code == code
    assert words in caught.value.message


def test_duplicate_machines_and_folders_collapse():
    info = {"cluster_machines": ["192.168.33.10", "192.168.33.10", "192.168.33.15"],
            "cluster_mode": [{"name": "sync_folders", "folder": "/a"}, {"name": "sync_folders", "folder": "/a/"}]}
    request = Request(info, "192.168.33.10")
    assert request.machines == ["192.168.33.10", "192.168.33.15"]
    assert request.folders == ["/a"]


def test_this_machine_is_found_by_its_own_addresses_when_reached_elsewhere():
    # 127.0.0.1 is always one of this machine's addresses; the request arrived on another.
    request = Request(seed(machines=("127.0.0.1", "192.0.2.7")), "0.0.0.0")
    assert request.self_ip == "127.0.0.1"


# The manager's error paths ----------------------------------------------------------------

def test_empty_cluster_info_is_an_empty_answer(tmp_path):
    assert manager(tmp_path).handle({}, "192.168.33.10") == {}
    assert manager(tmp_path).handle(None, "192.168.33.10") == {}


def test_syncthing_not_running_is_reported_and_nothing_is_saved(tmp_path):
    mgr = manager(tmp_path)
    with pytest.raises(ClusterError) as caught:
        mgr.handle(seed(), "192.168.33.10")
    assert caught.value.code == "syncthing_unavailable"
    assert "not running" in caught.value.message
    assert not (tmp_path / "state" / "cluster.json").exists()


def test_missing_api_key_names_the_files_it_looked_in(tmp_path):
    mgr = manager(tmp_path, syncthing_api_key_file=str(tmp_path / "nope"))
    with pytest.raises(ClusterError) as caught:
        mgr.handle(seed(), "192.168.33.10")
    assert caught.value.code == "syncthing_unavailable"
    assert "nope" in caught.value.message and "missing.xml" in caught.value.message


def test_api_key_is_read_from_config_xml_when_there_is_no_key_file(tmp_path):
    xml = tmp_path / "config.xml"
    xml.write_text("<configuration><gui><apikey>secret123</apikey></gui></configuration>")
    assert syncthing.read_api_key(str(tmp_path / "none"), str(xml)) == "secret123"


def test_validation_comes_before_any_contact_with_syncthing(tmp_path):
    mgr = manager(tmp_path)
    with pytest.raises(ClusterError) as caught:
        mgr.handle(seed(folder="/proc"), "192.168.33.10")
    assert caught.value.code == "bad_folder"     # not syncthing_unavailable: Syncthing was not asked
    assert not (tmp_path / "root").exists()


def test_a_corrupt_state_file_is_survived(tmp_path):
    mgr = manager(tmp_path)
    os.makedirs(str(tmp_path / "state"))
    (tmp_path / "state" / "cluster.json").write_text("{not json")
    assert mgr._load() == {}
    mgr._save({"self_ip": "192.168.33.10"})
    assert json.loads((tmp_path / "state" / "cluster.json").read_text()) == {"self_ip": "192.168.33.10"}
    assert oct(os.stat(str(tmp_path / "state" / "cluster.json")).st_mode & 0o777) == "0o600"


def test_operations_reach_the_agents_manager(tmp_path):
    from mdp_operations import cluster as ops
    mgr = manager(tmp_path)
    assert cluster.current() is mgr
    with pytest.raises(ClusterError) as caught:
        ops.identity()
    assert caught.value.code == "syncthing_unavailable"
    assert ops.identity.__doc__ and ops.status.__doc__ and ops.performance.__doc__


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=15), children, max_size=4),
    max_leaves=20)
cluster_like = st.fixed_dictionaries({}, optional={
    "cluster_machines": json_values | st.lists(st.sampled_from(["192.168.33.10", "192.168.33.15", "::1", "x"])),
    "cluster_mode": json_values | st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["sync_folders", "other"]) | json_values,
         "folder": st.sampled_from(["/data", "/etc", "rel", "/"]) | json_values})),
    "cluster_devices": json_values | st.dictionaries(st.sampled_from(["192.168.33.15", "bad"]),
                                                     st.sampled_from([GOOD_ID, "x"]) | json_values),
    "cluster_leave": json_values,
})


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, cluster_like))
def test_any_json_is_parsed_or_refused_with_a_cluster_error(info):
    try:
        Request(info, "192.168.33.10")
    except ClusterError as exc:
        assert exc.code and exc.message
