"""The real things around the monitor's HTTP side: Debian's Prometheus and headless Chromium, plus agents and monitors.

Prometheus and Chromium come from Debian (`apt-get install` here when missing and we are root, as CI
is; skipped otherwise). Prometheus runs on 127.0.0.1 with a generated config and its own tmp storage;
everything is stopped after each test. Screenshots go to tests/artifacts/web/ (ignored by git).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from integration.harness import REPO, Agent, Monitor, Process, free_port, wait_for, write_config

ARTIFACTS = REPO / "tests" / "artifacts" / "web"
# Every operation the metrics and the page show (the agent's default report is the first four).
FULL_REPORT = ("system.uptime, load.avg, memory.info, filesystem.usage, network.stats, cpu.usage, process.count, "
               "system.info")
_installed_here: set[str] = set()


def ensure_debian_package(package: str, binary: str) -> str:
    """The path of binary, apt-installing package first when it is missing (root only; else the test skips)."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{binary} is missing and only root can apt-get install {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", package]
    if subprocess.run(command, env=env, capture_output=True, timeout=900, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, f"apt-get install {package} failed:\n{result.stdout}\n{result.stderr}"
    _installed_here.add(package)
    if package == "prometheus" and shutil.which("systemctl"):
        # The package enables a system-wide Prometheus on :9090; the tests run their own on loopback.
        subprocess.run(["systemctl", "disable", "--now", "prometheus"], capture_output=True, timeout=60, check=False)
    found = shutil.which(binary)
    assert found, f"{package} is installed but {binary} is not on PATH"
    return found


class Prometheus(Process):
    """Debian's prometheus on 127.0.0.1:port scraping the given monitors every second."""

    def __init__(self, workdir: Path, targets: list[str], token_file: Path | None = None):
        self.binary = ensure_debian_package("prometheus", "prometheus")
        self.port = free_tcp_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        job = {"job_name": "mdp", "scrape_interval": "1s", "scrape_timeout": "1s",
               "static_configs": [{"targets": targets}]}
        if token_file:
            job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                           "scrape_configs": [job]}, indent=1))   # JSON is YAML
        super().__init__("prometheus", workdir / "prometheus.log")

    def start(self) -> Prometheus:
        self._spawn([self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"])
        wait_for(lambda: self._ready(), "prometheus to be ready", timeout=60, interval=0.2)
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict]:
        """An instant PromQL query through the HTTP API; fails the test on any error Prometheus reports."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"PromQL {expr!r}: HTTP {exc.code} {exc.read().decode(errors='replace')}") from None
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def targets_up(self) -> dict[str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/targets", timeout=10) as response:
            active = json.load(response)["data"]["activeTargets"]
        return {t["labels"]["instance"]: t["health"] for t in active}


def free_tcp_port() -> int:
    for _ in range(200):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port")


class Fleet:
    """Monitors serving HTTP and agents reporting to them every second, all on 127.0.0.x; kill() ends them all."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.processes: list[Process] = []
        self.udp_port = free_port()    # every agent listens on it, each on its own address

    def monitor(self, name: str = "monitor", flags=()) -> Monitor:
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        http_port = free_tcp_port()
        monitor = Monitor(workdir, free_port(), workdir / "known_machines",
                          flags=["--http", f"127.0.0.1:{http_port}", *flags])
        monitor.http = f"127.0.0.1:{http_port}"
        self.processes.append(monitor)
        monitor.start()
        return monitor

    def agent(self, ip: str, monitor: Monitor) -> Agent:
        config = write_config(self.workdir / f"agent-{ip}.conf", report_operations=FULL_REPORT)
        agent = Agent(self.workdir, ip, self.udp_port, self.workdir / "controller_keys", config=config,
                      flags=["--monitor", monitor.address, "--interval", "1"])
        self.processes.append(agent)
        agent.start()
        agent.trust(monitor.known_machines)
        return agent

    def kill(self):
        for process in self.processes:
            process.kill()


@pytest.fixture
def fleet_on_loopback(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.kill()


@pytest.fixture
def prometheus(tmp_path):
    """prometheus(targets, token_file=None) -> a started Prometheus scraping those HOST:PORTs."""
    started: list[Prometheus] = []

    def start(targets, token_file=None) -> Prometheus:
        server = Prometheus(tmp_path / f"prometheus{len(started)}", targets, token_file)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def http_get(url: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def artifacts_dir(test_name: str) -> Path:
    path = ARTIFACTS / test_name
    path.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {path}")
    return path

