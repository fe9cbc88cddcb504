"""python3 -m mdp_agent: run the MDP agent in the foreground (systemd/upstart supervise it)."""

import argparse
import json
import logging
import os
import signal
import sys

from . import __version__, aead, config, keyfile, lastrun, protocol
from .loop import Loop
from .registry import load_default_registry
from .server import Agent, WorkerPool

log = logging.getLogger("mdp_agent")

DESCRIPTION = """\
Run the MDP agent: answer signed UDP/JSON requests and push reports to the monitoring host.
Settings come from the config file; flags given here override it."""

EPILOG = """\
On first start the agent writes its key to STATE_DIR/agent.key (64 hex characters, mode 0600 in a
0700 directory). That file's text is exactly what the monitoring host keeps as
.known_machines/<ip>.txt: copying it there enrols the machine. With --enrol and no key yet, the key
is agreed with the monitor instead (ffdhe3072 key agreement, no key on the wire) and the agent logs
its enrolment fingerprint, to compare with `mdp keys list` on the monitor before accepting it.
Signals: SIGTERM/SIGINT exit cleanly, SIGHUP re-reads the config file (bind and port need a restart)
and the keyring.
Each start logs how the previous run ended: STATE_DIR/agent.run says "running" when a run did not
exit cleanly, and the systemd unit records systemd's verdict in STATE_DIR/last-exit (mdp_agent/lastrun.py).
Key rotation without downtime (docs/security.md): --keyring install puts a new key beside the one in
use (STATE_DIR/agent.next.key), --keyring use makes it the key in use and keeps the old one as
agent.previous.key, --keyring remove drops the old one; after each, SIGHUP the agent. Until remove,
requests sealed with any key of the ring are accepted and answered with the key they used.
"""


def build_parser():
    p = argparse.ArgumentParser(prog="python3 -m mdp_agent", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=config.DEFAULT_CONFIG_PATH,
                   help="INI file with an [agent] section (default %(default)s; missing is fine)")
    p.add_argument("--bind", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="UDP port to listen on (default 12345)")
    p.add_argument("--state-dir", help="directory for the key and subscriptions (default /var/lib/mdp-agent)")
    p.add_argument("--monitor", help="HOST:PORT of the monitoring host that receives reports (default: none)")
    p.add_argument("--interval", type=float, help="seconds between reports (default 60)")
    p.add_argument("--enrol", action="store_true", default=None,
                   help="without a key, agree one with the monitor by HELLO (trust on first use, "
                        "checked by the fingerprint the agent logs)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    p.add_argument("--init-only", action="store_true",
                   help="create the key if it is missing, print its path, and exit without listening")
    p.add_argument("--keyring", choices=keyfile.KEYRING_STEPS + ("show",),
                   help="a key rotation step on STATE_DIR's keyring; prints the ring's fingerprints as JSON and exits")
    p.add_argument("--version", action="version", version="mdp-agent " + __version__)
    return p


def load_registry(settings):
    """The operations this agent runs, site modules included, and the paths file operations may read."""
    from mdp_operations import _host
    _host.configure_paths(settings["file_paths"], settings["cert_paths"])
    return load_default_registry(settings["allow"], settings["enable_mutating"], settings["operations_dir"])


def main(argv=None):
    args = build_parser().parse_args(argv)
    overrides = {"bind": args.bind, "port": args.port, "state_dir": args.state_dir, "monitor": args.monitor,
                 "interval": args.interval, "enrol": args.enrol, "log_level": args.log_level}
    try:
        settings, cluster_settings = config.load(args.config, overrides)
    except config.ConfigError as exc:
        sys.stderr.write("mdp-agent: %s\n" % exc)
        return 2
    logging.basicConfig(stream=sys.stderr, level=settings["log_level"].upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        # Every datagram is sealed with AES-256-GCM from the host's libcrypto: without it, no start
        # (there is no clear-text fall-back).
        protocol.use_aead(aead.libcrypto())
    except aead.AeadUnavailable as exc:
        sys.stderr.write("mdp-agent: cannot start: %s\n" % exc)
        return 1
    log.info("AES-256-GCM: %s", protocol.default_aead().description)
    key_path = os.path.join(settings["state_dir"], keyfile.KEY_FILE)
    keys = None
    if settings["enrol"] and not args.init_only and not os.path.exists(key_path):
        # The key is agreed with the monitor once the agent runs (server.Agent, HELLO/WELCOME).
        if not settings["monitor"]:
            sys.stderr.write("mdp-agent: enrol needs a monitor (HOST:PORT) to agree a key with\n")
            return 2
        try:
            keyfile.ensure_private_dir(settings["state_dir"])
        except OSError as exc:
            sys.stderr.write("mdp-agent: cannot create the state directory: %s\n" % exc)
            return 1
        log.info("no key in %s: enrolling, the key is agreed with the monitor %s", key_path, settings["monitor"])
    else:
        try:
            keys, key_path, created = keyfile.load_or_create_key(settings["state_dir"])
        except (OSError, ValueError) as exc:
            sys.stderr.write("mdp-agent: cannot load or create the key: %s\n" % exc)
            return 1
        if created:
            log.info("generated a new key in %s", key_path)
        # What `mdp keys list` shows for this machine: compare the two before `mdp keys accept`.
        log.info("key fingerprint %s (%s)", protocol.key_fingerprint(keys.key), key_path)
    keyring = keyfile.Keyring.of_agent(settings["state_dir"])
    if args.keyring:
        if keys is None:
            sys.stderr.write("mdp-agent: --keyring: no key yet (the enrolment with the monitor is pending)\n")
            return 2
        return keyring_step(keyring, args.keyring)
    other_keys = ()
    if keys is not None:
        try:
            keys, other_keys = keyring.load()
        except (OSError, ValueError) as exc:
            sys.stderr.write("mdp-agent: cannot load the keyring: %s\n" % exc)
            return 1
    if args.init_only:
        print(key_path)
        return 0
    # Why this start: the previous run's end, as the clean-exit marker and the service manager recorded it.
    lastrun.log_previous_run(settings["state_dir"])
    lastrun.mark_running(settings["state_dir"])

    loop = Loop()
    pool = WorkerPool(loop, settings["workers"])
    registry = load_registry(settings)
    cluster = None
    try:
        from .cluster import ClusterManager
        cluster = ClusterManager(settings["state_dir"], cluster_settings)
    except ImportError:
        pass
    agent = Agent(loop, settings, keys, registry, pool, cluster)
    if keys is not None:
        agent.use_keyring(keys, other_keys)
    try:
        agent.start()
    except OSError as exc:
        sys.stderr.write("mdp-agent: cannot listen on %s:%d: %s\n" % (settings["bind"], settings["port"],
                                                                   exc.strerror or exc))
        return 1

    def reload_config():
        try:
            fresh, _ = config.load(args.config, overrides)
        except config.ConfigError as exc:
            log.error("SIGHUP: keeping the old config: %s", exc)
            return
        for name in ("bind", "port", "state_dir"):
            if fresh[name] != settings[name]:
                log.warning("SIGHUP: %s changed; it takes effect after a restart", name)
                fresh[name] = settings[name]
        settings.update(fresh)
        logging.getLogger().setLevel(settings["log_level"].upper())
        agent.registry = load_registry(settings)
        agent.register_internal_operations()
        agent.configure_reporting()
        try:
            agent.use_keyring(*keyring.load())
        except (OSError, ValueError) as exc:
            log.error("SIGHUP: keeping the old keyring: %s", exc)
        log.info("SIGHUP: configuration reloaded from %s; key in use %s, %d other key(s) accepted", args.config,
                 protocol.key_fingerprint(agent.keys.key), len(agent.other_keys))

    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    signal.signal(signal.SIGINT, lambda *_: loop.stop())
    signal.signal(signal.SIGHUP, lambda *_: loop.call_soon_threadsafe(reload_config))
    log.info("mdp-agent %s listening on %s:%d (udp), state in %s%s", __version__, agent.address[0],
             agent.address[1], settings["state_dir"],
             ", reporting to %s every %gs" % (settings["monitor"], settings["interval"]) if settings["monitor"] else "")
    try:
        loop.run_forever()
    finally:
        agent.stop()
        pool.shutdown()
        loop.close()
    lastrun.mark_stopped(settings["state_dir"])   # only a clean stop gets here (an exception skips it)
    log.info("mdp-agent stopped")
    return 0


def keyring_step(keyring, step):
    """`--keyring STEP`: change the key files (the running agent takes them on SIGHUP) and print
    {"changed", "in_use", "next", "previous"} (fingerprints) for the playbook."""
    try:
        changed = getattr(keyring, step)() if step != "show" else False
        out = keyring.fingerprints()
    except (OSError, ValueError) as exc:
        sys.stderr.write("mdp-agent: --keyring %s: %s\n" % (step, exc))
        return 1
    out["changed"] = bool(changed)
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
