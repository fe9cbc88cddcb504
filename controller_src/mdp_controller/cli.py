"""The `mdp` command: send operations, run the monitor, show status, list operations, manage keys."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import sys
import time

from mdp_agent import protocol

from . import client
from .keystore import KeyStore, KeyStoreError, normalise_ip

EPILOG_SEND = """\
examples:
  mdp send 10.0.0.5 ping
  mdp send 10.0.0.5,10.0.0.6 system.uptime load.avg --json
  mdp send all '{"name": "process.top", "args": {"n": 5, "by": "memory"}}'
  mdp send 10.0.0.5 report.subscribe --args '{"operations": ["load.avg"], "every": 10}'

TARGETS is a comma-separated list of IP addresses, or `all` for every machine in the key store.
An OPERATION is a name (see `mdp ops`) or a JSON object {"name": ..., "args": {...}}.
Exit status: 0 when every machine answered with status true, 1 otherwise, 2 for bad usage.
"""


class UsageError(Exception):
    """Bad arguments: printed as `mdp: ...` with exit status 2, like argparse's own errors."""


def _positive(kind):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
        return value
    return convert


def _port(text):
    value = _positive(int)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return value


def _datagram_size(text):
    value = _positive(int)(text)
    if not protocol.MIN_DATAGRAM <= value <= protocol.MAX_DATAGRAM:
        raise argparse.ArgumentTypeError(f"must be {protocol.MIN_DATAGRAM}-{protocol.MAX_DATAGRAM}")
    return value


def _targets(text: str, keystore: KeyStore) -> list[str]:
    if text == "all":
        ips = keystore.ips()
        if not ips:
            raise UsageError(f"no machines in {keystore.path}")
        return ips
    try:
        return [normalise_ip(part) for part in text.split(",") if part.strip()]
    except KeyStoreError as exc:
        raise UsageError(f"bad TARGETS: {exc}") from None


def _json(text: str, what: str):
    """Parse JSON from the command line; NaN and Infinity are refused (they are not JSON)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")
    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        raise UsageError(f"{what} is not JSON: {exc}") from None


def _operations(items: list[str], args_json: str | None) -> list:
    ops: list = []
    for item in items:
        if item.lstrip().startswith("{"):
            op = _json(item, f"OPERATION {item!r}")
            try:
                protocol.parse_operation(op)
            except ValueError as exc:
                raise UsageError(f"bad OPERATION {item!r}: {exc}") from None
            ops.append(op)
        else:
            ops.append(item)
    if args_json is not None:
        if len(ops) != 1 or not isinstance(ops[0], str):
            raise UsageError("--args needs exactly one OPERATION given by name")
        args = _json(args_json, "--args")
        if not isinstance(args, dict):
            raise UsageError("--args must be a JSON object")
        ops = [{"name": ops[0], "args": args}]
    return ops


def _progress_printer(total: int):
    """A one-line counter on stderr when a terminal watches and many machines are asked."""
    if total < 20 or not sys.stderr.isatty():
        return None
    start = time.monotonic()

    def show(done: int, total: int):
        end = "\n" if done == total else ""
        sys.stderr.write(f"\ranswered {done}/{total} ({time.monotonic() - start:.1f} s){end}")
        sys.stderr.flush()

    return show


def _compact(value, width: int = 100) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def print_replies(replies: dict[str, dict], out=sys.stdout):
    """The human table: one block per machine, one line per operation."""
    ok = sum(1 for r in replies.values() if r.get("status"))
    width = max((len(ip) for ip in replies), default=0)
    for ip, reply in replies.items():
        if "error" in reply and not reply.get("operations"):
            print(f"{ip:<{width}}  FAILED  {reply['error']}", file=out)
            continue
        print(f"{ip:<{width}}  {'OK' if reply.get('status') else 'FAILED'}", file=out)
        names = [str(item.get("name")) for item in reply.get("operations", [])]
        pad = max((len(n) for n in names), default=0)
        for name, item in zip(names, reply.get("operations", [])):
            if "error" in item:
                err = item["error"]
                print(f"  {name:<{pad}}  ERROR {err.get('code')}: {err.get('message')}", file=out)
            else:
                print(f"  {name:<{pad}}  {_compact(item.get('result'))}", file=out)
        if reply.get("cluster_info"):
            print(f"  {'cluster_info':<{pad}}  {_compact(reply['cluster_info'])}", file=out)
    print(f"{len(replies)} machine(s): {ok} ok, {len(replies) - ok} failed", file=out)


def cmd_send(args) -> int:
    keystore = KeyStore(args.known_machines)
    targets = _targets(args.targets, keystore)
    operations = _operations(args.operations, args.args)
    cluster_info = None
    if args.cluster_info:
        cluster_info = _json(args.cluster_info, "--cluster-info")
        if not isinstance(cluster_info, dict):
            raise UsageError("--cluster-info must be a JSON object")
    if not operations and not cluster_info:
        raise UsageError("give at least one OPERATION (or --cluster-info)")
    replies = asyncio.run(client.send_many(
        targets, operations, cluster_info, keystore=keystore, port=args.port, timeout=args.timeout,
        concurrency=args.concurrency, max_datagram=args.max_datagram, progress=_progress_printer(len(targets))))
    if args.json:
        json.dump(replies, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_replies(replies)
    return 0 if all(r.get("status") for r in replies.values()) else 1


def cmd_monitor(args) -> int:
    from mdp_agent.config import ConfigError, parse_hostport

    from . import collector
    try:
        listen = parse_hostport(args.listen)
    except ConfigError as exc:
        raise UsageError(f"--listen: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(collector.serve(listen, KeyStore(args.known_machines), args.db, args.accept_new))
    except KeyboardInterrupt:
        pass
    except sqlite3.Error as exc:
        raise SystemExit(f"mdp monitor: cannot use the database {args.db}: {exc}") from None
    except OSError as exc:
        raise SystemExit(f"mdp monitor: cannot listen on {args.listen}: {exc.strerror or exc}") from None
    return 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    age = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age / size:.0f}{unit} ago"
    return f"{age:.0f}s ago"


def _headline(latest: dict) -> str:
    """A few key numbers from the latest values, for the table."""
    parts = []
    load = latest.get("load.avg", {}).get("result")
    if isinstance(load, dict) and "load1" in load:
        parts.append(f"load {load['load1']:.2f}")
    mem = latest.get("memory.info", {}).get("result")
    if isinstance(mem, dict) and "percent" in mem:
        parts.append(f"mem {mem['percent']:.0f}%")
    up = latest.get("system.uptime", {}).get("result")
    if isinstance(up, dict) and "seconds" in up:
        parts.append(f"up {up['seconds'] / 86400:.1f}d")
    errors = [name for name, value in latest.items() if "error" in value]
    if errors:
        parts.append("errors: " + ",".join(errors))
    return "  ".join(parts)


def cmd_status(args) -> int:
    from .storage import machine_status
    keystore = KeyStore(args.known_machines)
    known = keystore.ips() if keystore.path.is_dir() else []
    try:
        rows = machine_status(args.db, known)
    except FileNotFoundError as exc:
        raise SystemExit(f"mdp status: {exc}") from None
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print(f"no machines have reported to {args.db} yet")
        return 0
    width = max(len(r["ip"]) for r in rows)
    print(f"{'MACHINE':<{width}}  {'LAST REPORT':<12}  {'REPORTS':>7}  STATUS  LATEST")
    for r in rows:
        status = {None: "-", True: "ok", False: "FAILED"}[r["status"]]
        print(f"{r['ip']:<{width}}  {_age(r['last_seen']):<12}  {r['reports']:>7}  {status:<6}  "
              f"{_headline(r['latest'])}")
    return 0


def cmd_ops(args) -> int:
    if args.from_ip:
        replies = client.send_sync([args.from_ip], ["get_available_methods"], known_machines=args.known_machines,
                                   port=args.port, timeout=args.timeout)
        reply = replies[args.from_ip]
        if not reply.get("status"):
            print(f"mdp ops: {reply.get('error') or reply['operations'][0].get('error')}", file=sys.stderr)
            return 1
        described = reply["operations"][0]["result"]
    else:
        from mdp_agent.registry import load_default_registry
        # Every operation an agent can have, mutating ones included (marked), as a default agent knows them.
        described = load_default_registry(enable_mutating=True).describe()
    if args.json:
        json.dump(described, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    width = max(len(op["name"]) for op in described)
    for op in described:
        flag = " [mutating]" if op.get("mutating") else " [changes agent state]" if op.get("changes_state") else ""
        print(f"{op['name']:<{width}}  {op.get('summary', '')}{flag}")
    return 0


def cmd_keys(args) -> int:
    keystore = KeyStore(args.known_machines)
    try:
        if args.action == "list":
            rows = keystore.list()
            if args.json:
                json.dump(rows, sys.stdout, indent=2)
                sys.stdout.write("\n")
            elif not rows:
                print(f"no keys in {keystore.path}")
            for row in rows if not args.json else []:
                print(f"{row['ip']:<16} {row['state']:<9} {row['path']}")
            return 0
        if not args.ip:
            raise UsageError(f"keys {args.action}: give the machine's IP")
        path = getattr(keystore, args.action)(args.ip)
        print(f"{args.action}: {args.ip} -> {path}")
        return 0
    except KeyStoreError as exc:
        print(f"mdp keys {args.action}: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdp", description="MDP, the Machine Diagnostics Protocol: ask machines for diagnostics over "
        "signed UDP, collect their reports, manage their keys.",
        epilog="Keys live in ./.known_machines (or $MDP_KNOWN_MACHINES); `mdp COMMAND --help` for each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, timeout=True):
        p.add_argument("--known-machines", metavar="DIR", help="key store (default ./.known_machines "
                       "or $MDP_KNOWN_MACHINES)")
        if timeout:
            p.add_argument("--port", type=_port, default=client.DEFAULT_PORT, help="agent UDP port (default 12345)")
            p.add_argument("--timeout", type=_positive(float), default=client.DEFAULT_TIMEOUT_S,
                           help="overall deadline per machine in seconds (default %(default)g)")

    p = sub.add_parser("send", help="run operations on machines and print their replies", epilog=EPILOG_SEND,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object mapping each IP to its reply")
    p.add_argument("--args", metavar="JSON", help="arguments for a single OPERATION given by name")
    p.add_argument("--cluster-info", metavar="JSON", help="cluster_info object to send with the request")
    p.add_argument("--concurrency", type=_positive(int), default=client.DEFAULT_CONCURRENCY,
                   help="requests in flight at once (default %(default)d)")
    p.add_argument("--max-datagram", type=_datagram_size, default=protocol.DEFAULT_MAX_DATAGRAM,
                   help="largest datagram to send (default %(default)d; raise only on a known LAN)")
    p.add_argument("targets", metavar="TARGETS", help="comma-separated IPs, or `all`")
    p.add_argument("operations", metavar="OPERATION", nargs="*", help="name or JSON {name, args}")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("monitor", help="receive and store agents' reports (the collector)")
    common(p, timeout=False)
    p.add_argument("--listen", default="0.0.0.0:12345", metavar="ADDR:PORT", help="default %(default)s")
    p.add_argument("--db", default="mdp.db", metavar="FILE", help="SQLite database (default %(default)s)")
    p.add_argument("--accept-new", action="store_true",
                   help="trust keys offered by unknown machines in a HELLO at once (open enrolment)")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("status", help="each machine: when it last reported and its latest values")
    common(p, timeout=False)
    p.add_argument("--db", default="mdp.db", metavar="FILE", help="SQLite database (default %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("ops", help="list operations and their hints")
    common(p)
    p.add_argument("--from", dest="from_ip", metavar="IP", help="ask this machine instead of the local copy")
    p.add_argument("--json", action="store_true", help="machine-readable output with full docstrings")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("keys", help="list, accept, reject or revoke machine keys")
    common(p, timeout=False)
    p.add_argument("action", choices=["list", "accept", "reject", "revoke"])
    p.add_argument("ip", nargs="?", help="the machine (for accept, reject, revoke)")
    p.add_argument("--json", action="store_true", help="machine-readable output (list)")
    p.set_defaults(func=cmd_keys)

    try:
        from . import cluster_cli
        cluster_cli.add_parser(sub, common)
    except ImportError:
        pass
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        parser.exit(2, f"mdp: {exc}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
