"""The `mdp` command: send operations, run the monitor, show status, list operations, manage keys."""

from __future__ import annotations

import argparse
import json
import sys
import time

from mdp_agent import __version__, protocol
from mdp_agent.errors import error_text
from mdp_agent.names import MAX_NAME, NAME_PATTERN

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
Output: a machine that answered OK, and the closing summary line, go to stdout; a machine that
failed (its block of lines, with the cause) goes to stderr, so `2>/dev/null` keeps only the successes.
--json prints the one JSON document to stdout, failures included.
Exit status: 0 when every machine answered with status true, 1 otherwise, 2 for bad usage
(bad TARGETS, an operation name that cannot exist, malformed JSON: refused before anything is sent).
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


def _check_name(name: str, item: str):
    """Refuse a name no agent can have registered (the registry's own rule), before anything is sent."""
    if len(name) > MAX_NAME or not NAME_PATTERN.match(name):
        raise UsageError(f"bad OPERATION {item!r}: an operation name is `name` or `module.name` (letters, digits, "
                         f"underscores; at most {MAX_NAME} characters); `mdp ops` lists them")


def _operations(items: list[str], args_json: str | None) -> list:
    ops: list = []
    for item in items:
        if item.lstrip().startswith("{"):
            op = _json(item, f"OPERATION {item!r}")
            try:
                name, _ = protocol.parse_operation(op)
            except ValueError as exc:
                raise UsageError(f"bad OPERATION {item!r}: {exc}") from None
            _check_name(name, item)
            ops.append(op)
        else:
            _check_name(item, item)
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


def print_replies(replies: dict[str, dict], out=None, err=None):
    """The human table: one block per machine, one line per operation. A failed machine's block goes
    to err, the others and the summary to out."""
    out = out or sys.stdout
    err = err or sys.stderr
    ok = sum(1 for r in replies.values() if r.get("status"))
    width = max((len(ip) for ip in replies), default=0)
    for ip, reply in replies.items():
        to = out if reply.get("status") else err
        if "error" in reply and not reply.get("operations"):
            print(f"{ip:<{width}}  FAILED  {error_text(reply['error'])}", file=to)
            continue
        print(f"{ip:<{width}}  {'OK' if reply.get('status') else 'FAILED'}", file=to)
        names = [str(item.get("name")) for item in reply.get("operations", [])]
        pad = max((len(n) for n in names), default=0)
        for name, item in zip(names, reply.get("operations", [])):
            if "error" in item:
                err_item = item["error"]
                print(f"  {name:<{pad}}  ERROR {err_item.get('code')}: {err_item.get('message')}", file=to)
            else:
                print(f"  {name:<{pad}}  {_compact(item.get('result'))}", file=to)
        if reply.get("cluster_info"):
            print(f"  {'cluster_info':<{pad}}  {_compact(reply['cluster_info'])}", file=to)
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
    replies = client.send_sync(
        targets, operations, cluster_info, keystore=keystore, port=args.port, timeout=args.timeout,
        concurrency=args.concurrency, max_datagram=args.max_datagram, progress=_progress_printer(len(targets)))
    if args.json:
        json.dump(replies, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_replies(replies)
    return 0 if all(r.get("status") for r in replies.values()) else 1


def _http_address(text: str) -> tuple[str, int]:
    """--http PORT (on 127.0.0.1) or ADDR:PORT."""
    from mdp_agent.config import ConfigError, parse_hostport
    if text.isdigit():
        return "127.0.0.1", _port(text)
    try:
        return parse_hostport(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "12h", "7d" or "2w"."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 15m, 12h, 7d)") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def cmd_monitor(args) -> int:
    # Imported here, not at the top: `mdp send` is the latency-critical command and needs none of these.
    import asyncio
    import logging
    import os
    import sqlite3

    from mdp_agent.config import ConfigError, parse_hostport

    from . import collector, web
    from .metrics import monitor_snapshot
    from .retention import Pruner
    from .storage import connect, set_monitor_info
    try:
        listen = parse_hostport(args.listen)
    except ConfigError as exc:
        raise UsageError(f"--listen: {exc}") from None
    try:
        token = web.read_token(args.http_token_file) if args.http_token_file else None
        if args.http:
            web.check_exposure(args.http, token)
    except web.HttpConfigError as exc:
        raise UsageError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    running: dict = {}

    def on_start(monitor):
        """Beside the collector, on its loop: retention; in a child process: the HTTP side."""
        pruner = running["pruner"] = Pruner(monitor.store, args.retention)
        running["task"] = asyncio.get_running_loop().create_task(pruner.run())
        if args.http:
            running["binding"] = "%s:%d (http)" % args.http
            process, url = web.start_process(args.http, args.db, token, lambda: monitor_snapshot(monitor, pruner))
            running["http"] = process
            set_monitor_info(monitor.store.conn, {"url": url, "pid": os.getpid()})

    try:
        asyncio.run(collector.serve(listen, KeyStore(args.known_machines), args.db, args.accept_new,
                                    on_start=on_start))
    except KeyboardInterrupt:
        pass
    except sqlite3.Error as exc:
        raise SystemExit(f"mdp monitor: cannot use the database {args.db}: {exc}") from None
    except OSError as exc:
        where = running["binding"] if "binding" in running and "http" not in running else args.listen
        raise SystemExit(f"mdp monitor: cannot listen on {where}: {exc.strerror or exc}") from None
    finally:
        if "http" in running:
            running["http"].terminate()
            conn = connect(args.db)
            set_monitor_info(conn, {"url": None, "pid": None})
            conn.close()
    return 0


def human_duration(seconds: float) -> str:
    """A duration as people say it: "12s", "42m", "5h 3m", "3d 4h"."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def _age(seconds: float | None, now: float | None = None) -> str:
    if seconds is None:
        return "never"
    return human_duration((time.time() if now is None else now) - seconds) + " ago"


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
        parts.append(f"up {human_duration(up['seconds'])}")
    errors = [name for name, value in latest.items() if "error" in value]
    if errors:
        parts.append("errors: " + ",".join(errors))
    return "  ".join(parts)


def cmd_status(args) -> int:
    keystore = KeyStore(args.known_machines)
    known = keystore.ips() if keystore.path.is_dir() else []
    show = _status_history if args.since else _status_table
    if not args.watch:
        return show(args, known, sys.stdout)
    import io
    try:
        while True:   # redraw in place: home the cursor, clear, print the whole view at once
            buffer = io.StringIO()
            show(args, known, buffer)
            clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
            sys.stdout.write(clear + f"every {args.watch:g}s, {time.strftime('%H:%M:%S')} (Ctrl-C to stop)\n"
                             + buffer.getvalue())
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _status_table(args, known: list[str], out) -> int:
    from .storage import machine_status, monitor_info
    from .web import process_alive
    try:
        rows = [r for r in machine_status(args.db, known) if not args.machines or r["ip"] in args.machines]
        info = monitor_info(args.db)
    except FileNotFoundError as exc:
        raise SystemExit(f"mdp status: {exc}") from None
    page = info.get("url") if process_alive(info.get("pid")) else None
    if args.json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    if not rows:
        print(f"no machines have reported to {args.db} yet", file=out)
    else:
        width = max(len(r["ip"]) for r in rows)
        print(f"{'MACHINE':<{width}}  {'STATE':<5}  {'LAST REPORT':<12}  {'REPORTS':>7}  STATUS  LATEST", file=out)
        for r in rows:
            status = {None: "-", True: "ok", False: "FAILED"}[r["status"]]
            state = "up" if r["up"] else ("-" if r["last_seen"] is None else "stale")
            print(f"{r['ip']:<{width}}  {state:<5}  {_age(r['last_seen']):<12}  {r['reports']:>7}  {status:<6}  "
                  f"{_headline(r['latest'])}", file=out)
    if page:
        print(f"page: {page}  (metrics: {page}metrics)", file=out)
    return 0


def _status_history(args, known: list[str], out) -> int:
    """`--since`: each stored report of the chosen machines (all by default) in the period, oldest first."""
    from .storage import FleetReader
    try:
        reader = FleetReader(args.db)
    except FileNotFoundError as exc:
        raise SystemExit(f"mdp status: {exc}") from None
    try:
        ips = args.machines or [m["ip"] for m in reader.machines(known, with_latest=False) if m["reports"]]
        since = time.time() - args.since
        history = {ip: reader.history(ip, since, limit=args.limit) for ip in ips}
    finally:
        reader.close()
    if args.json:
        json.dump(history, out, indent=2)
        out.write("\n")
        return 0
    for ip, rows in history.items():
        print(f"{ip}: {len(rows)} report(s) in the last {human_duration(args.since)}", file=out)
        for row in rows:
            latest = {item.get("name"): item for item in row["report"].get("operations") or [] if isinstance(item, dict)}
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["received_at"]))
            print(f"  {stamp}  {'ok' if row['status'] else 'FAILED':<6}  {_headline(latest)}", file=out)
    return 0


def cmd_ops(args) -> int:
    if args.from_ip:
        replies = client.send_sync([args.from_ip], ["get_available_methods"], known_machines=args.known_machines,
                                   port=args.port, timeout=args.timeout)
        reply = replies[args.from_ip]
        if not reply.get("status"):
            print(f"mdp ops: {error_text(reply.get('error') or reply['operations'][0].get('error'))}", file=sys.stderr)
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


KEYRING_STEPS = ("install", "use", "remove", "show")


def _keyring_step(keystore: KeyStore, args) -> int:
    """`mdp keys install IP --key-file F | use IP | remove IP`: one key rotation step on the controller
    (`show IP`: none, only the ring's fingerprints)."""
    if (args.action == "install") != bool(args.key_file):
        raise UsageError("--key-file goes with `keys install` (and it needs one: the agent's new key)")
    ring = keystore.keyring(args.ip)
    try:
        if args.action == "install":
            text = sys.stdin.read(4096) if args.key_file == "-" else open(args.key_file).read(4096)
            changed = ring.install(text)
        else:
            changed = getattr(ring, args.action)() if args.action != "show" else False
        out = ring.fingerprints()
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"{args.ip}: {exc}", "bad_key") from None
    out["changed"] = changed
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        print(f"{args.action}: {args.ip} in use {out['in_use']}, next {out['next']}, previous {out['previous']}"
              f"{'' if changed else ' (nothing to do)'}")
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
                print(f"{row['ip']:<16} {row['state']:<9} {row['fingerprint'] or '?':<19}  {row['path']}")
            return 0
        if not args.ip:
            raise UsageError(f"keys {args.action}: give the machine's IP")
        if args.fingerprint and args.action != "accept":
            raise UsageError("--fingerprint goes with `keys accept`")
        if args.action in KEYRING_STEPS:
            return _keyring_step(keystore, args)
        if args.action == "accept":
            path = keystore.accept(args.ip, args.fingerprint)
        else:
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
        epilog="Keys live in ./.known_machines (or $MDP_KNOWN_MACHINES); `mdp COMMAND --help` for each command. "
        "Results go to stdout, failures to stderr.")
    parser.add_argument("--version", action="version",
                        version=f"mdp {__version__} (protocol {protocol.PROTOCOL_VERSION})")
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
                   help="trust keys agreed with unknown machines by HELLO at once (open enrolment: trust "
                   "on first use, no fingerprint is compared)")
    p.add_argument("--http", nargs="?", type=_http_address, const=("127.0.0.1", 9123), metavar="[ADDR:]PORT",
                   help="serve /metrics, the fleet page and /api on this address (off by default; "
                   "bare --http: 127.0.0.1:9123; a bare PORT is on 127.0.0.1)")
    p.add_argument("--http-token-file", metavar="FILE", help="a 0600 file holding the token HTTP clients must "
                   "send (Bearer, or as the Basic auth password); required on a non-loopback --http address")
    p.add_argument("--retention", type=_duration, default="7d", metavar="DURATION",
                   help="keep raw reports this long, e.g. 12h, 7d, 30d (default 7d); older ones are pruned")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("status", help="each machine: when it last reported and its latest values")
    common(p, timeout=False)
    p.add_argument("--db", default="mdp.db", metavar="FILE", help="SQLite database (default %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", nargs="?", type=_positive(float), const=2.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
    p.add_argument("--since", type=_duration, metavar="DURATION",
                   help="history instead: every stored report of the last DURATION (e.g. 15m, 6h, 2d)")
    p.add_argument("--limit", type=_positive(int), default=1000, metavar="N",
                   help="with --since: at most N reports per machine, spread evenly (default %(default)d)")
    p.add_argument("machines", metavar="IP", nargs="*", help="only these machines")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("ops", help="list operations and their hints")
    common(p)
    p.add_argument("--from", dest="from_ip", metavar="IP", help="ask this machine instead of the local copy")
    p.add_argument("--json", action="store_true", help="machine-readable output with full docstrings")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("keys", help="list, accept, reject or revoke machine keys; rotate them (install, use, "
                       "remove: docs/security.md)")
    common(p, timeout=False)
    p.add_argument("action", choices=["list", "accept", "reject", "revoke", *KEYRING_STEPS])
    p.add_argument("ip", nargs="?", help="the machine (for every action but list)")
    p.add_argument("--fingerprint", metavar="FP", help="accept only if the enrolment has this fingerprint "
                   "(the agent logs it: `enrolment fingerprint XXXX-XXXX-XXXX-XXXX`); without it, accept "
                   "is trust on first use")
    p.add_argument("--key-file", metavar="FILE", help="install: the agent's new key (its agent.next.key; - reads "
                   "stdin), to accept beside the one in use until `use` and `remove`")
    p.add_argument("--json", action="store_true", help="machine-readable output (list, install, use, remove, show)")
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
