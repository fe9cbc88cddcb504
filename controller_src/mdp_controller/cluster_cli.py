"""`mdp cluster activate|status|leave`: the cluster verbs of the CLI (logic in cluster.py)."""

from __future__ import annotations

import argparse
import json
import sys

from .cli import UsageError, _targets
from .keystore import KeyStore

EPILOG = """\
examples:
  mdp cluster activate 10.0.0.5,10.0.0.6,10.0.0.7 --folder /uploaded_files
  mdp cluster status 10.0.0.5,10.0.0.6,10.0.0.7 --json
  mdp cluster leave 10.0.0.7

activate asks each machine for its Syncthing identity, then sends every machine the seed's
cluster_info ({"cluster_machines": [...], "cluster_mode": [{"name": "sync_folders", "folder": ...}]})
plus the identities; each answers with its performance score 1-9 (docs/cluster.md).
OK lines go to stdout, FAILED lines and missing identities to stderr.
Exit status: 0 when every machine succeeded, 1 otherwise.
"""


def add_parser(sub, common):
    p = sub.add_parser("cluster", help="make machines keep a folder in sync (Syncthing), show or leave it",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    p.add_argument("action", choices=["activate", "status", "leave"])
    p.add_argument("targets", metavar="TARGETS", help="comma-separated IPs, or `all`")
    p.add_argument("--folder", help="absolute path to keep in sync (activate)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_cluster)


def cmd_cluster(args) -> int:
    # Here, not at the top: build_parser imports this module for every `mdp` command, `send` included.
    import asyncio

    from . import cluster
    keystore = KeyStore(args.known_machines)
    targets = _targets(args.targets, keystore)
    kwargs = {"keystore": keystore, "port": args.port, "timeout": args.timeout}
    if args.action == "activate":
        if not args.folder:
            raise UsageError("cluster activate: --folder is required")
        outcome = asyncio.run(cluster.activate(None, targets, args.folder, **kwargs))
        ok = outcome["ok"]
        rows = outcome["machines"]
    elif args.action == "status":
        outcome = rows = asyncio.run(cluster.status(None, targets, **kwargs))
        ok = all("error" not in r for r in rows.values())
    else:
        outcome = rows = asyncio.run(cluster.leave(None, targets, **kwargs))
        ok = all(r.get("ok") for r in rows.values())
    if args.json:
        json.dump(outcome, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0 if ok else 1
    width = max(len(ip) for ip in rows)
    for ip, row in rows.items():
        if row.get("error") or row.get("ok") is False:
            print(f"{ip:<{width}}  FAILED  {row.get('error')}", file=sys.stderr)
            continue
        info = row.get("cluster_info", row)
        modes = info.get("machine_mode") or []
        score = ", ".join(f"{m.get('name')} performance {m.get('performance')}" for m in modes)
        print(f"{ip:<{width}}  OK  {score or json.dumps(info, separators=(',', ':'))[:100]}")
    if args.action == "activate" and outcome.get("missing"):
        print(f"still missing identities: {', '.join(outcome['missing'])}", file=sys.stderr)
    return 0 if ok else 1
