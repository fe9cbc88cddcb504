#!/usr/bin/env python3
"""Prepare a Syncthing home for MDP cluster mode, before Syncthing first starts.

Generates the identity when absent, then writes LAN-only settings into config.xml: static peers
only (no global or local discovery, no relays, no NAT traversal), no usage or crash reports, no
auto-upgrade, the API on a loopback address with a random key that is also stored (0600) where
the agent reads it. Run it while Syncthing is stopped: a running Syncthing rewrites config.xml
from memory. Prints one JSON line {"changed": bool}; --check only reports.
Python 3.4+, standard library only (it runs on the managed machine).
"""

import argparse
import binascii
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

# Every setting that keeps Syncthing on the LAN and quiet; listen and reconnect come from flags.
LAN_ONLY = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",   # peers are static tcp://IP:22000 addresses
    "relaysEnabled": "false",
    "natEnabled": "false",
    "urAccepted": "-1",                # -1 = usage reporting declined for good
    "crashReportingEnabled": "false",
    "autoUpgradeIntervalH": "0",
    "startBrowser": "false",
}


def generate(syncthing, home):
    env = dict(os.environ, STNODEFAULTFOLDER="1", STNOUPGRADE="1")
    out = subprocess.check_output([syncthing, "-generate=" + home], stderr=subprocess.STDOUT,
                                  env=env, timeout=120)
    return out.decode("utf-8", "replace")


def api_key(path, check):
    """The stored key, creating a random one (0600) when absent."""
    try:
        with open(path) as handle:
            key = handle.read().strip()
        if key:
            return key, False
    except OSError:
        pass
    key = binascii.hexlify(os.urandom(24)).decode("ascii")
    if not check:
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        fd, tmp = tempfile.mkstemp(dir=directory)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
    return key, True


def set_text(parent, tag, value):
    node = parent.find(tag)
    if node is None:
        node = ET.SubElement(parent, tag)
    if (node.text or "") == value:
        return False
    node.text = value
    return True


def apply(root, listen, gui_address, key, reconnect_s):
    changed = False
    options = root.find("options")
    if options is None:
        options = ET.SubElement(root, "options")
    # Syncthing raises anything below 5 s to 5 s on load; writing less would never settle.
    wanted = dict(LAN_ONLY, reconnectionIntervalS=str(max(5, reconnect_s)))
    for tag in sorted(wanted):
        changed |= set_text(options, tag, wanted[tag])
    current = [n.text for n in options.findall("listenAddress")]
    if current != [listen]:
        for node in options.findall("listenAddress"):
            options.remove(node)
        ET.SubElement(options, "listenAddress").text = listen
        changed = True
    gui = root.find("gui")
    if gui is None:
        gui = ET.SubElement(root, "gui")
    if gui.get("enabled") != "true" or gui.get("tls") != "false":
        gui.set("enabled", "true")
        gui.set("tls", "false")
        changed = True
    changed |= set_text(gui, "address", gui_address)
    changed |= set_text(gui, "apikey", key)
    # Older releases make a "default" folder in ~/Sync on generate; cluster folders are the agent's.
    for folder in root.findall("folder"):
        if folder.get("id") == "default":
            root.remove(folder)
            changed = True
    return changed


def write_atomically(path, tree):
    st = os.stat(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    os.close(fd)
    tree.write(tmp, encoding="utf-8", xml_declaration=False)
    os.chmod(tmp, 0o600)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.rename(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--home", required=True, help="Syncthing home (config.xml, cert.pem, key.pem)")
    parser.add_argument("--listen", default="tcp://0.0.0.0:22000", help="the one sync listen address")
    parser.add_argument("--gui-address", default="127.0.0.1:8384", help="API/GUI address (keep it loopback)")
    parser.add_argument("--api-key-file", required=True, help="where the agent reads the API key (0600)")
    parser.add_argument("--reconnect-s", type=int, default=5,
                        help="seconds between dials to a disconnected peer (Syncthing's default is 60)")
    parser.add_argument("--syncthing", default="syncthing", help="the syncthing program")
    parser.add_argument("--check", action="store_true", help="report what would change; change nothing")
    args = parser.parse_args(argv)

    config_path = os.path.join(args.home, "config.xml")
    changed = False
    if not os.path.exists(config_path):
        changed = True
        if args.check:
            print(json.dumps({"changed": True}))
            return 0
        if not os.path.isdir(args.home):
            os.makedirs(args.home, 0o700)
        generate(args.syncthing, args.home)
    key, key_new = api_key(args.api_key_file, args.check)
    changed |= key_new
    tree = ET.parse(config_path)
    if apply(tree.getroot(), args.listen, args.gui_address, key, args.reconnect_s):
        changed = True
        if not args.check:
            write_atomically(config_path, tree)
    print(json.dumps({"changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
