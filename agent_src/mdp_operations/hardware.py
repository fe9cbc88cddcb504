"""The hardware: CPU model and flags, DMI identity, temperatures, block devices, SMART health."""

import re
import subprocess

from . import NotAvailable, _host

# /sys/class/dmi/id attributes readable by everyone (serial numbers and UUIDs are root-only and
# identify the machine's owner more than its hardware: left out).
DMI_FIELDS = ("sys_vendor", "product_name", "product_version", "product_family", "board_vendor", "board_name",
              "bios_vendor", "bios_version", "bios_date", "chassis_vendor", "chassis_type")
MAX_SENSORS = 256           # hwmon chips rarely have more than 30 inputs each
MAX_BLOCK_DEVICES = 512     # whole disks and partitions; loop devices left out unless in use
SMART_TIMEOUT = 8.0         # smartctl -H -A on a spun-down disk; under the 10 s operation_timeout
MAX_SMART_ATTRIBUTES = 64   # ATA has at most 30 in practice
# Devices smartctl may be pointed at: disk names only, no paths, no options.
SMART_DEVICE = re.compile(r"^(sd[a-z]{1,3}|hd[a-z]|vd[a-z]{1,2}|xvd[a-z]{1,2}|nvme[0-9]{1,2}(n[0-9]{1,2})?)\Z")
PROGRAM_DIRS = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]


def cpu():
    """The CPU: model, vendor, counts, speed, cache and flags, from /proc/cpuinfo.

    No arguments. Returns {"model", "vendor", "logical_cpus", "physical_packages", "cores" (null
    where cpuinfo does not say), "mhz": [per logical CPU], "cache", "flags": [sorted], "bugs":
    [sorted]}. Example: {"model": "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz", "vendor":
    "GenuineIntel", "logical_cpus": 2, "physical_packages": 1, "cores": 2, "mhz": [2399.998,
    2399.998], "cache": "35840 KB", "flags": ["aes", "avx", ...], "bugs": ["spectre_v1", ...]}.
    """
    blocks = [b for b in _host.read("proc", "cpuinfo").split("\n\n") if b.strip()]
    cpus = []
    for block in blocks:
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" in fields:
            cpus.append(fields)
    first = cpus[0] if cpus else {}
    cores = {(c.get("physical id"), c.get("core id")) for c in cpus if "core id" in c}
    packages = {c.get("physical id") for c in cpus if "physical id" in c}
    mhz = []
    for c in cpus:
        try:
            mhz.append(float(c["cpu MHz"]))
        except (KeyError, ValueError):
            pass
    flags = first.get("flags") or first.get("Features") or ""   # arm says Features
    return {
        "model": first.get("model name") or first.get("Processor") or first.get("cpu model"),
        "vendor": first.get("vendor_id") or first.get("CPU implementer"),
        "logical_cpus": len(cpus),
        "physical_packages": len(packages) or None,
        "cores": len(cores) or None,
        "mhz": mhz,
        "cache": first.get("cache size"),
        "flags": sorted(flags.split()),
        "bugs": sorted(first.get("bugs", "").split()),
    }


def dmi():
    """Vendor, product, board, BIOS and chassis as the firmware's DMI table names them.

    No arguments. Returns {field: text or null} for sys_vendor, product_name, product_version,
    product_family, board_vendor, board_name, bios_vendor, bios_version, bios_date,
    chassis_vendor, chassis_type (serials and UUIDs are left out). Example: {"sys_vendor": "Dell
    Inc.", "product_name": "PowerEdge R640", "bios_version": "2.19.1", "chassis_type": "23", ...}.
    Error "not_available" where there is no DMI (most ARM boards, some VMs).
    """
    if not _host.listdir("sys", "class", "dmi", "id"):
        raise NotAvailable("no /sys/class/dmi/id: this machine's firmware has no DMI table")
    return {name: _host.read_or("", "sys", "class", "dmi", "id", name).strip() or None for name in DMI_FIELDS}


def _millidegrees(text):
    try:
        return int(text.strip()) / 1000.0
    except ValueError:
        return None


def _hwmon_sensors():
    rows = []
    for chip in sorted(_host.listdir("sys", "class", "hwmon")):
        # Kernels before 3.15 (trusty's 3.13) keep most drivers' attributes in hwmonN/device/.
        for sub in ((), ("device",)):
            base = ("sys", "class", "hwmon", chip) + sub
            inputs = sorted(n for n in _host.listdir(*base) if re.match(r"^temp\d+_input\Z", n))
            if not inputs:
                continue
            name = (_host.read_or("", *(base + ("name",))) or _host.read_or("", "sys", "class", "hwmon", chip,
                                                                             "name")).strip()
            for attr in inputs:
                prefix = attr[:-len("_input")]
                rows.append({
                    "source": "hwmon", "chip": name or chip,
                    "label": _host.read_or("", *(base + (prefix + "_label",))).strip() or prefix,
                    "celsius": _millidegrees(_host.read_or("", *(base + (attr,)))),
                    "max": _millidegrees(_host.read_or("", *(base + (prefix + "_max",)))),
                    "critical": _millidegrees(_host.read_or("", *(base + (prefix + "_crit",)))),
                })
            break
    return rows


def temperatures():
    """Temperatures the kernel reads: hwmon sensors and ACPI/SoC thermal zones, in degrees Celsius.

    No arguments. Returns {"count", "sensors": [{"source": "hwmon"|"thermal", "chip" (driver or
    zone type), "label", "celsius", "max", "critical" (null when unknown)}]} (at most 256). An
    empty list is normal in a VM. Example: {"count": 2, "sensors": [{"source": "hwmon", "chip":
    "coretemp", "label": "Core 0", "celsius": 45.0, "max": 82.0, "critical": 100.0}, {"source":
    "thermal", "chip": "x86_pkg_temp", "label": "thermal_zone0", "celsius": 47.0, ...}]}.
    """
    rows = _hwmon_sensors()
    for zone in sorted(_host.listdir("sys", "class", "thermal")):
        if not zone.startswith("thermal_zone"):
            continue
        base = ("sys", "class", "thermal", zone)
        celsius = _millidegrees(_host.read_or("", *(base + ("temp",))))
        if celsius is None:
            continue  # a zone whose sensor is off answers EINVAL/ENODATA
        rows.append({"source": "thermal", "chip": _host.read_or("", *(base + ("type",))).strip() or None,
                     "label": zone, "celsius": celsius, "max": None, "critical": None})
    return {"count": len(rows), "sensors": rows[:MAX_SENSORS]}


def _block(base, name, parent):
    def attr(*parts):
        return _host.read_or("", *(base + parts)).strip()
    sectors = attr("size")
    return {
        "name": name, "parent": parent,
        "size_bytes": int(sectors) * 512 if sectors.isdigit() else None,  # always 512-byte units
        "model": attr("device", "model") or None,
        "vendor": attr("device", "vendor") or None,
        "rotational": attr("queue", "rotational") == "1" if attr("queue", "rotational") else None,
        "removable": attr("removable") == "1",
        "read_only": attr("ro") == "1",
    }


def block_devices():
    """Disks and their partitions with size and model, from /sys/block (as lsblk).

    No arguments. Returns {"count", "truncated", "devices": [{"name", "parent" (disk of a
    partition, else null), "size_bytes", "model", "vendor", "rotational", "removable",
    "read_only"}]}; empty loop and ram devices are left out. Example: {"count": 2, "truncated":
    false, "devices": [{"name": "sda", "parent": null, "size_bytes": 500107862016, "model":
    "Samsung SSD 860", "vendor": "ATA", "rotational": false, "removable": false, "read_only":
    false}, {"name": "sda1", "parent": "sda", ...}]}.
    """
    rows = []
    for name in sorted(_host.listdir("sys", "block")):
        base = ("sys", "block", name)
        disk = _block(base, name, None)
        if name.startswith(("loop", "ram", "zram")) and not disk["size_bytes"]:
            continue
        rows.append(disk)
        for part in sorted(_host.listdir(*base)):
            if _host.read_or(None, *(base + (part, "partition"))) is not None:
                entry = _block(base + (part,), part, name)
                entry.update(model=disk["model"], vendor=disk["vendor"], rotational=disk["rotational"])
                rows.append(entry)
    return {"count": len(rows), "truncated": len(rows) > MAX_BLOCK_DEVICES, "devices": rows[:MAX_BLOCK_DEVICES]}


_SMART_ATTR = re.compile(r"^\s*(\d{1,3})\s+(\S+)\s+0x[0-9a-f]{4}\s+(\d{3})\s+(\d{3})\s+(\d{3})\s+\S+\s+\S+\s+\S+\s+(.+)$")
_SMART_HEALTH = re.compile(r"(?:overall-health self-assessment test result|SMART Health Status):\s*(\S+)")


def smart(device):
    """SMART health and attributes of a disk, asked of smartctl (smartmontools) where it is installed.

    device: a disk name as in /sys/block (sda, nvme0n1, vdb...), no path. Runs `smartctl -H -A
    /dev/NAME` (at most 8 s). Returns {"device", "health": "PASSED"|"FAILED!"|"OK"|null,
    "exit_status" (smartctl's bit mask: 0 is all good), "attributes": [{"id", "name", "value",
    "worst", "threshold", "raw"}] (ATA; at most 64), "output" (the first 2000 characters when
    no health line was found)}. Example: {"device": "sda", "health": "PASSED", "exit_status": 0,
    "attributes": [{"id": 5, "name": "Reallocated_Sector_Ct", "value": 100, "worst": 100,
    "threshold": 10, "raw": "0"}, ...]}. Error "not_available" without smartctl.
    """
    if not isinstance(device, str) or not SMART_DEVICE.match(device):
        raise ValueError("device must be a disk name such as sda or nvme0n1 (pattern %s)" % SMART_DEVICE.pattern)
    program = _host.find_program("smartctl", PROGRAM_DIRS)
    if program is None:
        raise NotAvailable("smartctl is not installed (package smartmontools)")
    try:
        code, out = _host.run([program, "-H", "-A", "/dev/" + device], SMART_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError("smartctl did not answer about %s within %g s" % (device, SMART_TIMEOUT))
    health = _SMART_HEALTH.search(out)
    attributes = []
    for line in out.splitlines():
        m = _SMART_ATTR.match(line)
        if m and len(attributes) < MAX_SMART_ATTRIBUTES:
            attributes.append({"id": int(m.group(1)), "name": m.group(2), "value": int(m.group(3)),
                               "worst": int(m.group(4)), "threshold": int(m.group(5)), "raw": m.group(6).strip()})
    result = {"device": device, "health": health.group(1) if health else None, "exit_status": code,
              "attributes": attributes}
    if not health:
        result["output"] = out.strip()[:2000]
    return result
