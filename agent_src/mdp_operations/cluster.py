"""Cluster mode: how well this machine can serve a synced folder, and its Syncthing state."""

from . import _performance


def performance(folder="/", ip=None):
    """How well this machine can serve a synced folder: a score from 1 (worst) to 9 (best).

    Arguments: folder (the synced folder; scored on its filesystem, default "/"), ip (the
    address peers reach this machine at, to find and measure its link; optional).
    Returns {"performance": 1-9, "parts": {"cpu", "memory", "disk", "network": 0..1} or
    {"floor": reason}, "inputs": {cpu_count, load1, mem_available, disk_free, disk_total,
    read_only, link_mbps, link_use}}.
    """
    measured = _performance.inputs(folder, ip)
    value, parts = _performance.score(measured)
    return {"performance": value, "parts": parts, "inputs": measured}


def identity():
    """This machine's Syncthing device ID, the identity peers need to sync with it.

    No arguments. Returns {"device_id": "XXXXXXX-...", "syncthing_version": "v1.x"}.
    """
    from mdp_agent import cluster
    return cluster.current().identity()


def status():
    """Cluster state: the synced folders, their sync state and completion, and which peers are connected.

    No arguments. Returns {"device_id", "cluster_machines": [ips], "folders": [{"folder",
    "id", "state", "completion" (0-100, the least complete peer), "errors"}], "peers": [{"ip",
    "device_id", "connected"}], "missing_identities": [ips]}.
    """
    from mdp_agent import cluster
    return cluster.current().status()
