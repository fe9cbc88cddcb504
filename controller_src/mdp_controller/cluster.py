"""Cluster mode from the controller: activate, status, leave.

Activation is two rounds over the ordinary request path (docs/cluster.md):
1. ask every machine `cluster.identity` (its Syncthing device ID);
2. send every machine the seed's cluster_info plus `cluster_devices` {ip: device id}, so each
   one can add the others as Syncthing peers. The answers carry the seed's fields
   (`cluster_machines`, `machine_mode` with `performance`) and `missing_identities`.
A machine that did not answer round 1 is still listed; the others report it as missing until a
later activation brings its identity.

    results = await activate(send_many, ["10.0.0.5", "10.0.0.6"], "/uploaded_files", known_machines=...)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from mdp_agent.errors import error_text

from . import client

SendMany = Callable[..., Awaitable[dict[str, dict]]]
MODE_SYNC_FOLDERS = "sync_folders"


def seed_cluster_info(targets: Iterable[str], folder: str, mode: str = MODE_SYNC_FOLDERS) -> dict:
    """The seed message's cluster_info, exactly as the seed writes it."""
    return {"cluster_machines": list(targets), "cluster_mode": [{"name": mode, "folder": folder}]}


def _result(reply: dict, operation: str):
    """(result, None) of the named operation in a reply, or (None, error text)."""
    if not reply.get("status") and reply.get("error"):
        return None, error_text(reply["error"])
    for item in reply.get("operations", []):
        if item.get("name") == operation:
            if "error" in item:
                return None, error_text(item["error"])
            return item.get("result"), None
    return None, f"no {operation} in the reply"


def _cluster_outcome(reply: dict) -> dict:
    """One machine's answer to a cluster_info request: {"ok", "cluster_info"} or {"ok": False, "error"}."""
    info = reply.get("cluster_info") or {}
    if isinstance(info.get("error"), dict):
        return {"ok": False, "error": f"{info['error'].get('code')}: {info['error'].get('message')}"}
    if not reply.get("status"):
        return {"ok": False, "error": str(reply.get("error", "status false"))}
    return {"ok": True, "cluster_info": info}


async def identities(send_many: SendMany, targets: list[str], **send_kwargs) -> dict[str, dict]:
    """{ip: {"device_id": ...} or {"error": ...}} from `cluster.identity` on every target."""
    replies = await send_many(targets, ["cluster.identity"], None, **send_kwargs)
    found = {}
    for ip in targets:
        result, error = _result(replies.get(ip, {}), "cluster.identity")
        found[ip] = {"device_id": result["device_id"]} if result and "device_id" in result else \
            {"error": error or "no device_id in the answer"}
    return found


async def activate(send_many: SendMany | None, targets: Iterable[str], folder: str, *,
                   mode: str = MODE_SYNC_FOLDERS, **send_kwargs) -> dict:
    """Make targets one cluster syncing folder. Returns {"ok", "machines": {ip: outcome}, "missing": [...],
    "devices": {ip: device id}}.

    Each outcome is {"ok": True, "cluster_info": answer} or {"ok": False, "error"}.
    ok is true only when every machine applied it and none lacks a peer's identity.
    """
    return await activate_message(send_many, seed_cluster_info(list(dict.fromkeys(targets)), folder, mode),
                                  **send_kwargs)


async def activate_message(send_many: SendMany | None, cluster_info: dict, **send_kwargs) -> dict:
    """activate() for a cluster_info as the seed writes it (cluster_machines, cluster_mode), sent
    to every machine of cluster_machines: the one implementation of activation (the CLI, the
    mdp_send action plugin and playbooks/cluster.yml all come here). Returns what activate() does."""
    send_many = send_many or client.send_many
    targets = [str(ip) for ip in dict.fromkeys(cluster_info.get("cluster_machines") or [])]
    ids = await identities(send_many, targets, **send_kwargs)
    devices = {ip: v["device_id"] for ip, v in ids.items() if "device_id" in v}
    replies = await send_many(targets, [], dict(cluster_info, cluster_devices=devices), **send_kwargs)
    machines = {}
    for ip in targets:
        outcome = _cluster_outcome(replies.get(ip, {}))
        if "error" in ids[ip] and outcome["ok"]:
            outcome = {"ok": False, "error": f"no identity: {ids[ip]['error']}",
                       "cluster_info": outcome["cluster_info"]}
        machines[ip] = outcome
    missing = sorted({ip for o in machines.values() for ip in o.get("cluster_info", {}).get("missing_identities", [])})
    return {"ok": all(o["ok"] for o in machines.values()) and not missing, "machines": machines,
            "missing": missing, "devices": devices}


async def status(send_many: SendMany | None, targets: Iterable[str], **send_kwargs) -> dict[str, dict]:
    """{ip: cluster.status result or {"error": ...}}."""
    send_many = send_many or client.send_many
    targets = list(dict.fromkeys(targets))
    replies = await send_many(targets, ["cluster.status"], None, **send_kwargs)
    out = {}
    for ip in targets:
        result, error = _result(replies.get(ip, {}), "cluster.status")
        out[ip] = result if error is None else {"error": error}
    return out


async def leave(send_many: SendMany | None, targets: Iterable[str], **send_kwargs) -> dict[str, dict]:
    """Take targets out of every cluster: their synced folders stop syncing (files stay)."""
    send_many = send_many or client.send_many
    targets = list(dict.fromkeys(targets))
    replies = await send_many(targets, [], {"cluster_leave": True}, **send_kwargs)
    return {ip: _cluster_outcome(replies.get(ip, {})) for ip in targets}


def activate_sync(targets: Iterable[str], folder: str, **kwargs) -> dict:
    return asyncio.run(activate(None, targets, folder, **kwargs))


def status_sync(targets: Iterable[str], **kwargs) -> dict:
    return asyncio.run(status(None, targets, **kwargs))


def leave_sync(targets: Iterable[str], **kwargs) -> dict:
    return asyncio.run(leave(None, targets, **kwargs))
