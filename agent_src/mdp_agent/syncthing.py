"""A small client for Syncthing's REST API (the config endpoints exist since Syncthing 1.12).

Only what cluster mode needs: read identity and config, add/patch/remove devices and folders,
read connection and folder state. Python 3.4 standard library only (urllib).
"""

import base64
import json
import re

DEFAULT_API = "http://127.0.0.1:8384"
DEFAULT_SYNC_PORT = 22000
# Config writes make Syncthing restart folders and can take a few seconds on a busy machine;
# handle() runs on a worker thread, so waiting this long never blocks the agent's loop.
DEFAULT_TIMEOUT_S = 10.0
# Bound on a reply we read: the whole config of a cluster machine is a few tens of kB.
MAX_REPLY_BYTES = 4 * 1024 * 1024

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_ID_CHARS = re.compile(r"^[A-Z2-7]{56}$")


class SyncthingError(Exception):
    """Syncthing cannot be reached (unreachable) or refused a request; the message names the cause."""

    def __init__(self, message, unreachable=False):
        Exception.__init__(self, message)
        self.unreachable = unreachable


def _luhn32(chars):
    """Syncthing's check character for a 13-character group (lib/protocol/luhn.go)."""
    factor, total = 1, 0
    for ch in chars:
        addend = factor * _B32.index(ch)
        factor = 1 if factor == 2 else 2
        total += addend // 32 + addend % 32
    return _B32[(32 - total % 32) % 32]


def normalize_device_id(value):
    """The canonical XXXXXXX-...-XXXXXXX form of a device ID, or ValueError naming the fault.

    Accepts the dashed or undashed 56-character form in any case; the four check characters
    must agree, so a mistyped ID is refused here instead of never connecting.
    """
    if not isinstance(value, str):
        raise ValueError("a device ID must be a string, not %s" % type(value).__name__)  # noqa: TRY004
    raw = value.strip().upper().replace("-", "").replace(" ", "")
    if not _ID_CHARS.match(raw):
        raise ValueError("%r is not a Syncthing device ID (56 base32 characters, dashes optional)" % value)
    for group in range(4):
        chunk = raw[group * 14:(group + 1) * 14]
        if _luhn32(chunk[:13]) != chunk[13]:
            raise ValueError("%r is not a valid Syncthing device ID (check character %d is wrong)"
                             % (value, group + 1))
    return "-".join(raw[i:i + 7] for i in range(0, 56, 7))


def read_api_key(key_file=None, config_xml=None):
    """The API key from key_file (one line), else from Syncthing's config.xml; SyncthingError if neither."""
    tried = []
    if key_file:
        try:
            with open(key_file) as handle:
                key = handle.read().strip()
            if key:
                return key
            tried.append("%s is empty" % key_file)
        except OSError as exc:
            tried.append("%s: %s" % (key_file, exc.strerror or exc))
    if config_xml:
        try:
            with open(config_xml) as handle:
                match = re.search(r"<apikey>([^<]+)</apikey>", handle.read())
            if match:
                return match.group(1).strip()
            tried.append("%s has no <apikey>" % config_xml)
        except OSError as exc:
            tried.append("%s: %s" % (config_xml, exc.strerror or exc))
    raise SyncthingError("no Syncthing API key (%s); is the mdp_cluster role applied?" % "; ".join(tried),
                         unreachable=True)


class Syncthing:
    """One Syncthing instance's REST API at api_url, authenticated with api_key."""

    def __init__(self, api_url=DEFAULT_API, api_key="", timeout=DEFAULT_TIMEOUT_S):
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def request(self, method, path, body=None, query=None):
        """JSON reply of one call (None when empty); SyncthingError on any failure."""
        # Imported here: urllib.request pulls in ssl and email (~3 MB) that only cluster mode needs.
        import urllib.error
        import urllib.parse
        import urllib.request
        url = self.api_url + path
        if query:
            url += "?" + urllib.parse.urlencode(sorted(query.items()))
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("X-API-Key", self.api_key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            reply = urllib.request.urlopen(req, timeout=self.timeout)
            try:
                raw = reply.read(MAX_REPLY_BYTES + 1)
            finally:
                reply.close()
        except urllib.error.HTTPError as exc:
            detail = exc.read(512).decode("utf-8", "replace").strip()
            if exc.code in (401, 403):
                raise SyncthingError("Syncthing at %s refused the API key (HTTP %d)" % (self.api_url, exc.code))
            raise SyncthingError("Syncthing %s %s failed: HTTP %d %s" % (method, path, exc.code, detail))
        except urllib.error.URLError as exc:
            raise SyncthingError("Syncthing is not running or not reachable at %s: %s"
                                 % (self.api_url, getattr(exc, "reason", exc)), unreachable=True)
        except (TimeoutError, OSError) as exc:
            raise SyncthingError("Syncthing at %s did not answer %s %s: %s" % (self.api_url, method, path, exc),
                                 unreachable=True)
        if len(raw) > MAX_REPLY_BYTES:
            raise SyncthingError("Syncthing's reply to %s is larger than %d bytes" % (path, MAX_REPLY_BYTES))
        if not raw.strip():
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError:
            raise SyncthingError("Syncthing's reply to %s %s is not JSON" % (method, path))

    # Identity and state -------------------------------------------------------------------

    def my_id(self):
        return self.request("GET", "/rest/system/status")["myID"]

    def version(self):
        return self.request("GET", "/rest/system/version").get("version", "")

    def config(self):
        return self.request("GET", "/rest/config")

    def connections(self):
        """{device id: {"connected": bool, "address": ...}} for every configured device."""
        return self.request("GET", "/rest/system/connections").get("connections", {})

    def folder_status(self, folder_id):
        return self.request("GET", "/rest/db/status", query={"folder": folder_id})

    def completion(self, folder_id, device_id):
        return self.request("GET", "/rest/db/completion", query={"folder": folder_id, "device": device_id})

    def scan(self, folder_id):
        self.request("POST", "/rest/db/scan", query={"folder": folder_id})

    # Config writes: each object endpoint fills the fields we leave out with Syncthing's defaults.

    def add_device(self, device):
        self.request("POST", "/rest/config/devices", device)

    def patch_device(self, device_id, fields):
        self.request("PATCH", "/rest/config/devices/" + _quote(device_id), fields)

    def remove_device(self, device_id):
        self.request("DELETE", "/rest/config/devices/" + _quote(device_id))

    def add_folder(self, folder):
        self.request("POST", "/rest/config/folders", folder)

    def patch_folder(self, folder_id, fields):
        self.request("PATCH", "/rest/config/folders/" + _quote(folder_id), fields)

    def remove_folder(self, folder_id):
        self.request("DELETE", "/rest/config/folders/" + _quote(folder_id))

    def patch_options(self, fields):
        self.request("PATCH", "/rest/config/options", fields)


def _quote(text):
    import urllib.parse
    return urllib.parse.quote(text, safe="")


def device_id_from_cert(cert_pem_path):
    """The device ID of a Syncthing certificate file: base32(sha256(DER)) with check characters.

    Lets tests and tools know an identity without a running Syncthing.
    """
    import hashlib
    with open(cert_pem_path) as handle:
        pem = handle.read()
    body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    digest = hashlib.sha256(base64.b64decode("".join(body.split()))).digest()
    raw = base64.b32encode(digest).decode("ascii").rstrip("=")
    groups = [raw[i:i + 13] for i in range(0, 52, 13)]
    return normalize_device_id("".join(g + _luhn32(g) for g in groups))
