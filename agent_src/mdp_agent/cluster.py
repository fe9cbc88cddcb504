"""Cluster mode: a request's cluster_info becomes Syncthing configuration on this machine.

The request states the whole desired cluster (machines, modes, and optionally the peers' Syncthing
device IDs); handle() validates all of it first, then converges Syncthing to it over its REST API:
peers as devices at static tcp://IP:22000, one Syncthing folder per synced path shared with every
peer; peers this agent added that are no longer listed are removed, and folders no longer listed
are paused and shared with nobody.
What it learned (peer identities, folders) is kept in STATE_FILE, so a restart keeps the cluster
and a later seed-only request (no cluster_devices) still knows the peers. docs/cluster.md has the
message fields and the design.
"""

import binascii
import errno
import hashlib
import json
import logging
import os
import threading

from . import keyfile, syncthing
from .errors import MDPError

LOG = logging.getLogger("mdp_agent.cluster")

STATE_FILE = "cluster.json"
MODE_SYNC_FOLDERS = "sync_folders"
MODES = (MODE_SYNC_FOLDERS,)
FOLDER_ID_PREFIX = "mdp-"   # folders this agent manages; others on the same Syncthing are left alone
# Syncing these would corrupt or expose the system (or is meaningless, like /proc); paths below
# them are refused too.
FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev", "/etc", "/boot", "/run", "/bin", "/sbin", "/lib",
                   "/lib32", "/lib64", "/libx32", "/usr")
MAX_PATH = 4096             # PATH_MAX on Linux
MIN_RECONNECT_S = 5         # Syncthing raises a lower reconnectionIntervalS to this
MAX_MACHINES = 256          # one Syncthing folder shared with more peers than this is not a LAN cluster

DEFAULTS = {
    "syncthing_api": syncthing.DEFAULT_API,
    "syncthing_api_key_file": "/var/lib/mdp-agent/syncthing-api-key",
    "syncthing_config": "/var/lib/mdp-syncthing/config.xml",   # where the key is read when no key file
    "sync_port": str(syncthing.DEFAULT_SYNC_PORT),
    # Syncthing redials a lost or not-yet-accepting peer only every reconnectionIntervalS (60 by
    # default); peers are configured one after another, so a short interval joins them in seconds.
    "reconnect_s": "5",
    "api_timeout_s": str(syncthing.DEFAULT_TIMEOUT_S),
    # Prefix on disk for every synced path (requests name the same path on every machine). Only
    # for several Syncthing instances sharing one machine, as the tests and the bench run them.
    "folder_root": "/",
}

# Every folder setting cluster mode relies on, sent explicitly: Syncthing 1.12 fills fields a new
# folder leaves out with zeros, and maxConflicts 0 would discard the losing side of a conflict.
FOLDER_SETTINGS = {
    "type": "sendreceive",
    "fsWatcherEnabled": True,
    "fsWatcherDelayS": 1,          # changes move within seconds
    "paused": False,
    "maxConflicts": 10,            # keep conflict copies (Syncthing's default)
    "minDiskFree": {"value": 1, "unit": "%"},
    "autoNormalize": True,
    "markerName": ".stfolder",
}

DEFAULT_STATE_DIR = "/var/lib/mdp-agent"

_current = None
_current_lock = threading.RLock()


class ClusterError(MDPError):
    """A request that cannot be applied; nothing was changed. code is a short machine-readable word."""


def folder_id(path):
    """The Syncthing folder ID for a path: the same on every machine, so shares match up."""
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return FOLDER_ID_PREFIX + binascii.hexlify(digest[:6]).decode("ascii")


def validate_folder(folder):
    """The normalised absolute path, or ClusterError naming why it cannot be synced."""
    if not isinstance(folder, str) or not folder:
        raise ClusterError("bad_folder", "folder must be a non-empty string, not %r" % (folder,))
    if "\x00" in folder or len(folder) > MAX_PATH:
        raise ClusterError("bad_folder", "folder is not a usable path (NUL byte or longer than %d)" % MAX_PATH)
    if not folder.startswith("/"):
        raise ClusterError("bad_folder", "folder %r is relative; give an absolute path" % folder)
    path = os.path.normpath(folder)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    _refuse_system_path(folder, path)
    # A symlink could lead a harmless-looking path into /etc: check where it really points, too.
    try:
        _refuse_system_path(folder, os.path.realpath(path))
    except OSError as exc:
        raise ClusterError("bad_folder", "folder %r cannot be resolved: %s" % (folder, exc.strerror or exc))
    return path


def _refuse_system_path(folder, candidate):
    if candidate == "/":
        raise ClusterError("bad_folder", "folder %r is the root filesystem; sync a directory" % folder)
    for root in FORBIDDEN_ROOTS:
        if candidate == root or candidate.startswith(root + "/"):
            raise ClusterError("bad_folder", "folder %r is under %s, a system directory that must "
                               "not be synced" % (folder, root))


def _ip(value, what):
    import ipaddress  # here, not at the top: every agent imports this module at start, few use cluster mode
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else "?"))
    except ValueError:
        raise ClusterError("bad_machine", "%s: %r is not an IP address" % (what, value))


def local_addresses():
    """This machine's IPv4 and IPv6 addresses, from /proc (no ioctl, works on kernel 3.13)."""
    found = set()
    try:
        with open("/proc/net/fib_trie") as handle:
            previous = None
            for line in handle:
                text = line.strip()
                if text.startswith("|--"):
                    previous = text[3:].strip()
                elif "/32 host LOCAL" in text and previous:
                    found.add(previous)
    except OSError:
        pass
    try:
        import ipaddress
        with open("/proc/net/if_inet6") as handle:
            for line in handle:
                raw = line.split()[0]
                found.add(str(ipaddress.ip_address(binascii.unhexlify(raw))))
    except (OSError, ValueError, IndexError):
        pass
    return found


class Request:
    """A validated cluster_info."""

    def __init__(self, info, local_ip, known_self=None):
        if not isinstance(info, dict):
            raise ClusterError("bad_cluster_info", "cluster_info must be a JSON object")
        self.leave = info.get("cluster_leave", False)
        if not isinstance(self.leave, bool):
            raise ClusterError("bad_cluster_info", "cluster_leave must be true or false")
        self.machines = self._machines(info.get("cluster_machines"))
        self.self_ip = self._self_ip(local_ip, known_self)
        self.folders = self._modes(info.get("cluster_mode"))
        self.devices = self._devices(info.get("cluster_devices"))

    def _machines(self, machines):
        if machines is None:
            return None
        if not isinstance(machines, list) or not machines:
            raise ClusterError("bad_machine", "cluster_machines must be a non-empty list of IP addresses")
        if len(machines) > MAX_MACHINES:
            raise ClusterError("bad_machine", "cluster_machines lists %d machines; at most %d"
                               % (len(machines), MAX_MACHINES))
        result = []
        for value in machines:
            ip = _ip(value, "cluster_machines")
            if ip not in result:
                result.append(ip)
        return result

    def _self_ip(self, local_ip, known_self):
        if self.machines is None:
            return known_self or local_ip
        if local_ip in self.machines:
            return local_ip
        # Reached through another address (a wildcard bind, NAT): any listed address of ours counts.
        addresses = local_addresses()
        ours = [ip for ip in self.machines if ip in addresses]
        if len(ours) == 1:
            return ours[0]
        if not ours:
            raise ClusterError("not_in_cluster", "cluster_machines %s does not include this machine (%s)"
                               % (", ".join(self.machines), ", ".join(sorted(addresses | {local_ip} - {None}))))
        raise ClusterError("bad_machine", "cluster_machines lists this machine twice (%s)" % ", ".join(ours))

    def _modes(self, modes):
        if modes is None:
            return None
        if not isinstance(modes, list):
            raise ClusterError("bad_mode", "cluster_mode must be a list of {\"name\": ..., ...} objects")
        folders = []
        for mode in modes:
            name = mode.get("name") if isinstance(mode, dict) else None
            if name not in MODES:
                raise ClusterError("unknown_mode", "unknown cluster mode %r; this agent knows: %s"
                                   % (name if name is not None else mode, ", ".join(MODES)))
            path = validate_folder(mode.get("folder"))
            if path not in folders:
                folders.append(path)
        if folders and self.machines is None:
            raise ClusterError("bad_machine", "cluster_mode needs cluster_machines beside it")
        return folders

    def _devices(self, devices):
        if devices is None:
            return {}
        if not isinstance(devices, dict):
            raise ClusterError("bad_device_id", "cluster_devices must map IP addresses to Syncthing device IDs")
        result = {}
        for key, value in devices.items():
            ip = _ip(key, "cluster_devices")
            if self.machines is not None and ip not in self.machines:
                raise ClusterError("bad_device_id", "cluster_devices names %s, which is not in cluster_machines" % ip)
            try:
                result[ip] = syncthing.normalize_device_id(value)
            except ValueError as exc:
                raise ClusterError("bad_device_id", "cluster_devices[%s]: %s" % (ip, exc))
        ids = list(result.values())
        if len(set(ids)) != len(ids):
            raise ClusterError("bad_device_id", "cluster_devices gives two machines the same device ID")
        return result


class ClusterManager:
    """Applies cluster_info requests to the local Syncthing; one per agent, thread-safe."""

    def __init__(self, state_dir, config=None):
        global _current
        self.state_dir = state_dir
        self.config = dict(DEFAULTS)
        self.config.update({k: str(v) for k, v in (config or {}).items()})
        self._lock = threading.Lock()
        with _current_lock:
            _current = self

    # Public entry points ------------------------------------------------------------------

    def handle(self, cluster_info, local_ip):
        """Apply a request's cluster_info; returns the reply's cluster_info. ClusterError for bad requests."""
        if not cluster_info:
            return {}
        with self._lock:
            state = self._load()
            request = Request(cluster_info, local_ip, state.get("self_ip"))
            api = self._api()
            my_id = self._call(api.my_id)
            for ip, device in request.devices.items():
                if ip == request.self_ip and device != my_id:
                    raise ClusterError("bad_device_id", "cluster_devices gives this machine (%s) the ID %s, "
                                       "but its Syncthing is %s" % (ip, device, my_id))
                if ip != request.self_ip and device == my_id:
                    raise ClusterError("bad_device_id", "cluster_devices gives %s this machine's own ID" % ip)
            if request.leave:
                changed = self._call(lambda: self._converge(api, my_id, {}, [], state))
                state = {"self_ip": request.self_ip}
                self._save(state)
                answer = self._answer(my_id, state, [], changed)
                answer["left"] = True
                return answer
            if request.folders is None:          # a question, not a change
                return self._answer(my_id, state, self._missing(state), False)
            known = {ip: dev for ip, dev in state.get("devices", {}).items() if ip in request.machines}
            known.update(request.devices)
            known.pop(request.self_ip, None)
            for path in request.folders:
                self._make_folder(self._disk(path))
            peers = known if request.folders else {}    # devices exist only to share folders
            changed = self._call(lambda: self._converge(api, my_id, peers, request.folders, state))
            state.update(self_ip=request.self_ip, machines=request.machines, devices=known,
                         folders=request.folders)
            self._save(state)
            return self._answer(my_id, state, self._missing(state), changed)

    def identity(self):
        api = self._api()
        return {"device_id": self._call(api.my_id), "syncthing_version": self._call(api.version)}

    def status(self):
        with self._lock:
            state = self._load()
        api = self._api()
        my_id = self._call(api.my_id)
        connections = self._call(api.connections)
        peers = []
        for ip, device in sorted(state.get("devices", {}).items()):
            peers.append({"ip": ip, "device_id": device,
                          "connected": bool(connections.get(device, {}).get("connected"))})
        folders = []
        for path in state.get("folders", []):
            fid = folder_id(path)
            db = self._call(lambda fid=fid: api.folder_status(fid))
            completions = [self._call(lambda fid=fid, p=p: api.completion(fid, p["device_id"])).get("completion", 0)
                           for p in peers]
            folders.append({"folder": path, "id": fid, "state": db.get("state", ""),
                            "errors": db.get("errors", 0) + db.get("pullErrors", 0),
                            "need_files": db.get("needFiles", 0), "global_files": db.get("globalFiles", 0),
                            "completion": min(completions) if completions else 100})
        return {"device_id": my_id, "cluster_machines": state.get("machines", []), "folders": folders,
                "peers": peers, "missing_identities": self._missing(state)}

    # Convergence --------------------------------------------------------------------------

    def _converge(self, api, my_id, peers, folders, state):
        """Make Syncthing hold exactly these peers and managed folders (idempotent); True if it changed."""
        config = api.config()
        api = _Recorder(api)
        devices = {d["deviceID"]: d for d in config.get("devices", [])}
        existing = {f["id"]: f for f in config.get("folders", [])}
        reconnect = max(MIN_RECONNECT_S, int(self.config["reconnect_s"]))
        if folders and config.get("options", {}).get("reconnectionIntervalS", 60) > reconnect:
            api.patch_options({"reconnectionIntervalS": reconnect})

        port = int(self.config["sync_port"])
        managed = set(state.get("managed_devices", []))
        for ip, device in sorted(peers.items()):
            host = ip if ":" not in ip else "[%s]" % ip
            addresses = ["tcp://%s:%d" % (host, port)]
            current = devices.get(device)
            if current is None:
                api.add_device({"deviceID": device, "name": "mdp %s" % ip, "addresses": addresses,
                                "compression": "metadata", "introducer": False,
                                "autoAcceptFolders": False, "paused": False})
                managed.add(device)
            elif current.get("addresses") != addresses or current.get("paused"):
                api.patch_device(device, {"addresses": addresses, "paused": False})

        members = [my_id] + sorted(peers.values())
        wanted = {}
        for path in folders:
            fid = folder_id(path)
            wanted[fid] = path
            folder = existing.get(fid)
            wanted_fields = dict(FOLDER_SETTINGS, path=self._disk(path))
            if folder is None:
                api.add_folder(dict(wanted_fields, id=fid, label="mdp %s" % path, rescanIntervalS=3600,
                                    devices=[{"deviceID": d} for d in members]))
                continue
            fields = {}
            have = {d["deviceID"]: d for d in folder.get("devices", [])}
            if set(have) != set(members):
                fields["devices"] = [have.get(d, {"deviceID": d}) for d in members]
            for key, value in sorted(wanted_fields.items()):
                if folder.get(key) != value:
                    fields[key] = value
            if fields:
                api.patch_folder(fid, fields)

        still_used = set(members)
        for fid, folder in sorted(existing.items()):
            if not fid.startswith(FOLDER_ID_PREFIX):
                still_used.update(d["deviceID"] for d in folder.get("devices", []))
            elif fid not in wanted:
                # Retired, not deleted: Syncthing deletes a removed folder's marker but keeps its
                # index, and then refuses the folder when it is added again ("folder marker missing").
                if not folder.get("paused") or [d["deviceID"] for d in folder.get("devices", [])] != [my_id]:
                    api.patch_folder(fid, {"paused": True, "devices": [{"deviceID": my_id}]})
        # Peers this agent added that no folder needs any more go; devices set up by others stay.
        for device in sorted(managed - still_used):
            if device in devices:
                api.remove_device(device)
            managed.discard(device)
        state["managed_devices"] = sorted(managed)
        return api.writes > 0

    @staticmethod
    def _make_folder(path):
        if os.path.isdir(path):
            return
        if os.path.exists(path):
            raise ClusterError("bad_folder", "folder %s exists and is not a directory" % path)
        try:
            os.makedirs(path, 0o755)
        except OSError as exc:
            # A sandboxed agent (ProtectSystem=strict) cannot write there, but Syncthing can and
            # creates a missing folder itself; anything else is a real problem with the path.
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ClusterError("bad_folder", "cannot create folder %s: %s" % (path, exc.strerror or exc))

    # Helpers ------------------------------------------------------------------------------

    def _answer(self, my_id, state, missing, changed):
        from mdp_operations import cluster as performance_ops  # late, as ipaddress above
        self_ip = state.get("self_ip")
        modes = []
        for path in state.get("folders", []):
            modes.append({"name": MODE_SYNC_FOLDERS, "folder": path, "folder_id": folder_id(path),
                          "performance": performance_ops.performance(self._disk(path), self_ip)["performance"]})
        return {"cluster_machines": self_ip, "machine_mode": modes, "device_id": my_id,
                "missing_identities": missing, "changed": changed}

    @staticmethod
    def _missing(state):
        known = state.get("devices", {})
        return [ip for ip in state.get("machines", []) if ip != state.get("self_ip") and ip not in known]

    def _disk(self, path):
        return os.path.join(self.config["folder_root"], path.lstrip("/"))

    def _api(self):
        try:
            key = syncthing.read_api_key(self.config["syncthing_api_key_file"], self.config["syncthing_config"])
        except syncthing.SyncthingError as exc:
            raise ClusterError("syncthing_unavailable", str(exc))
        return syncthing.Syncthing(self.config["syncthing_api"], key, float(self.config["api_timeout_s"]))

    @staticmethod
    def _call(func):
        try:
            return func()
        except syncthing.SyncthingError as exc:
            raise ClusterError("syncthing_unavailable" if exc.unreachable else "syncthing_error", str(exc))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ClusterError("syncthing_unavailable", "unexpected reply from Syncthing (%s: %s)"
                               % (type(exc).__name__, exc))

    def _state_path(self):
        return os.path.join(self.state_dir, STATE_FILE)

    def _load(self):
        try:
            with open(self._state_path()) as handle:
                state = json.loads(handle.read())
            return state if isinstance(state, dict) else {}
        except OSError:
            return {}
        except ValueError:
            LOG.warning("%s is not JSON; starting with an empty cluster state", self._state_path())
            return {}

    def _save(self, state):
        if not os.path.isdir(self.state_dir):
            os.makedirs(self.state_dir, 0o700)
        keyfile.write_private_file(self._state_path(), json.dumps(state, sort_keys=True, indent=1))


class _Recorder(object):
    """A Syncthing client that counts the config writes made through it."""

    def __init__(self, api):
        self._api = api
        self.writes = 0

    def __getattr__(self, name):
        method = getattr(self._api, name)
        if name.split("_")[0] not in ("add", "patch", "remove"):
            return method

        def write(*args):
            self.writes += 1
            return method(*args)
        return write


def current():
    """The agent's ClusterManager (operations use it); a default one when none was made."""
    global _current
    with _current_lock:
        if _current is None:
            _current = ClusterManager(DEFAULT_STATE_DIR)
        return _current
