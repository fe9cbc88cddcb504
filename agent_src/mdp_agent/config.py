"""Agent configuration: /etc/mdp/agent.conf (INI, section [agent]) overridden by command-line flags."""

import configparser
import errno
import os
import socket

from . import protocol

DEFAULT_CONFIG_PATH = "/etc/mdp/agent.conf"

# name -> (default, type). Every key is documented in docs/agent.md and the role's template.
SETTINGS = {
    "bind": ("0.0.0.0", str),
    "port": (12345, int),
    "state_dir": ("/var/lib/mdp-agent", str),
    "monitor": ("", str),                     # HOST:PORT of the monitoring host; empty = no reports
    "interval": (60.0, float),                # seconds between reports
    "report_operations": ("system.uptime, load.avg, memory.info, filesystem.usage", list),
    "allow": ("*", list),                     # fnmatch patterns of operations this agent runs
    "enable_mutating": (False, bool),         # operations that change the machine stay off unless true
    "enrol": (False, bool),                   # no key yet: agree one with the monitor by HELLO (ffdhe3072)
    "max_datagram": (protocol.DEFAULT_MAX_DATAGRAM, int),
    "workers": (4, int),                      # threads running operations off the event loop
    "operation_timeout": (10.0, float),       # seconds before an operation's result becomes "timeout"
    "replay_window": (protocol.DEFAULT_REPLAY_WINDOW_S, float),
    "log_level": ("info", str),
    # Site operation modules (NAME.py -> NAME.function), loaded at start and on SIGHUP.
    "operations_dir": ("/etc/mdp/operations.d", str),
    # Where files.stat may look (nothing unless set) and files.certificates looks for certificates.
    "file_paths": ("", list),
    "cert_paths": ("/etc/letsencrypt/live, /etc/ssl/certs/ssl-cert-snakeoil.pem", list),
}
CLUSTER_SECTION = "cluster"   # passed as a plain dict to the cluster manager


class ConfigError(Exception):
    pass


def _convert(name, raw, kind):
    if kind is list:
        return [item.strip() for item in str(raw).split(",") if item.strip()]
    if kind is bool:
        value = str(raw).strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError("%s must be true or false, not %r" % (name, raw))
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError("%s must be a%s %s, not %r" % (name, "n" if kind is int else "", kind.__name__, raw))


def load(path=DEFAULT_CONFIG_PATH, overrides=None, required=False):
    """Read the config file (missing is fine unless required) and apply overrides; returns (settings, cluster)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as handle:
            parser.read_file(handle)
    except IOError as exc:
        if required or exc.errno != errno.ENOENT:
            raise ConfigError("cannot read %s: %s" % (path, exc.strerror))
    except configparser.Error as exc:
        raise ConfigError("%s is not a valid INI file: %s" % (path, exc))
    section = parser["agent"] if parser.has_section("agent") else {}
    unknown = set(section) - set(SETTINGS)
    if unknown:
        raise ConfigError("%s: unknown setting(s) in [agent]: %s" % (path, ", ".join(sorted(unknown))))
    settings = {}
    for name, (default, kind) in SETTINGS.items():
        raw = section.get(name, default) if section else default
        settings[name] = _convert(name, raw, kind)
    for name, value in (overrides or {}).items():
        if value is not None:
            settings[name] = _convert(name, value, SETTINGS[name][1])
    validate(settings)
    cluster = dict(parser[CLUSTER_SECTION]) if parser.has_section(CLUSTER_SECTION) else {}
    return settings, cluster


def validate(s):
    if not 0 < s["port"] < 65536:
        raise ConfigError("port must be 1-65535, not %d" % s["port"])
    if not s["interval"] > 0:
        raise ConfigError("interval must be more than 0 seconds")
    if not protocol.MIN_DATAGRAM <= s["max_datagram"] <= protocol.MAX_DATAGRAM:
        raise ConfigError("max_datagram must be %d-%d" % (protocol.MIN_DATAGRAM, protocol.MAX_DATAGRAM))
    if not 1 <= s["workers"] <= 64:
        raise ConfigError("workers must be 1-64")
    if not s["operation_timeout"] > 0:
        raise ConfigError("operation_timeout must be more than 0 seconds")
    if s["monitor"]:
        parse_hostport(s["monitor"])
    if s["log_level"].upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level must be debug, info, warning or error")
    if not os.path.isabs(s["state_dir"]):
        raise ConfigError("state_dir must be an absolute path, not %r" % s["state_dir"])
    if s["operations_dir"] and not os.path.isabs(s["operations_dir"]):
        raise ConfigError("operations_dir must be an absolute path (or empty for none), not %r" % s["operations_dir"])
    for name in ("file_paths", "cert_paths"):
        for item in s[name]:
            if not os.path.isabs(item):
                raise ConfigError("%s must list absolute paths, not %r" % (name, item))


def parse_hostport(text, default_port=12345):
    """'HOST:PORT', 'HOST' or '[v6]:PORT' -> (host, port); ConfigError if malformed."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
        if ":" in host:   # several colons and no brackets: only a bare IPv6 address makes sense
            try:
                socket.inet_pton(socket.AF_INET6, host)
            except (OSError, ValueError):
                raise ConfigError("monitor %r is not HOST:PORT (write IPv6 as [addr]:port)" % text)
    try:
        port = int(port) if port else default_port
    except ValueError:
        raise ConfigError("monitor %r: port is not a number" % text)
    if not host or not 0 < port < 65536:
        raise ConfigError("monitor %r is not HOST:PORT" % text)
    return host, port
