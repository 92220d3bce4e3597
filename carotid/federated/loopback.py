"""A real Flower deployment on one machine: one `flower-superlink` and one `flower-supernode` per site on
127.0.0.1 (free ports), the app submitted with `flwr run`, every process it started stopped by its PID.

The SuperLink runs without runtime dependency installation (offline: carotid is installed already). With
`certificates` (a CA certificate, and the SuperLink's certificate and key signed by it) every connection is TLS,
as in a real deployment; without, they are plain (127.0.0.1 only).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from carotid.core.errors import UserError
from carotid.federated.patient import check_patience_patch

CONNECTION = "loopback"  # the SuperLink connection's name in $FLWR_HOME/config.toml
APP_DIR = Path(__file__).parent / "app"  # the Flower app (pyproject.toml) that `flwr run` submits


@dataclass(frozen=True)
class Certificates:
    ca: Path
    certificate: Path
    key: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_config(settings: dict) -> str:
    """--node-config text: strings quoted (TOML basic strings, as JSON writes them), numbers and booleans bare."""
    parts = []
    for key, value in settings.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value), ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)


class Loopback:
    """`with Loopback(home, sites, logs) as flower: flower.submit(run_config, on_line)`; `sites` maps each
    site's name to its node-config settings."""

    def __init__(self, home: Path, sites: dict[str, dict], logs: Path, certificates: Certificates | None = None):
        self.home, self.sites, self.logs, self.certificates = Path(home), sites, Path(logs), certificates
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ, FLWR_HOME=str(self.home), PYTHONUNBUFFERED="1")
        # SuperLink and SuperNodes start `flower-superexec` by name: this interpreter's scripts come first.
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", "")])
        self.port = free_port()

    def __enter__(self) -> Loopback:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _tls(self, server: bool) -> list[str]:
        certs = self.certificates
        if certs is None:
            return ["--insecure"]
        if server:
            return [
                "--ssl-ca-certfile",
                str(certs.ca),
                "--ssl-certfile",
                str(certs.certificate),
                "--ssl-keyfile",
                str(certs.key),
            ]
        return ["--root-certificates", str(certs.ca)]

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()

    def start(self) -> None:
        flower = [sys.executable, "-m", "carotid.federated.patient"]  # Flower's own, patient with slow starts
        link = [*flower, "superlink", *self._tls(True), "--disable-runtime-dependency-installation"]
        self._spawn("superlink", [*link, "--port", str(self.port)])
        self._wait_for_port(self.port, "superlink")
        for name, settings in self.sites.items():
            self._spawn(f"supernode_{name}", [
                *flower, "supernode", *self._tls(False), "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--node-config", node_config({"site": name} | settings),
            ])  # fmt: skip
        self._write_connection()

    def _wait_for_port(self, port: int, name: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"flower {name} exited at start: see {self.logs / (name + '.log')}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"flower {name} did not open port {port} within {timeout:.0f} s")

    def _write_connection(self) -> None:
        # `flwr config list` writes the default config.toml; the SuperLink connection is added to it. A resumed
        # run reuses this home with a new SuperLink port: start from a fresh file (a second [superlink.NAME]
        # table would make it invalid TOML).
        (self.home / "config.toml").unlink(missing_ok=True)
        subprocess.run(["flwr", "config", "list"], env=self.env, capture_output=True, check=False)
        lines = ["", f"[superlink.{CONNECTION}]", f'address = "127.0.0.1:{self.port}"']
        if self.certificates is None:
            lines.append("insecure = true")
        else:
            lines.append(f"root-certificates = {json.dumps(str(self.certificates.ca))}")
        with open(self.home / "config.toml", "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    def submit(self, run_config: Path, on_line: Callable[[str], None]) -> str:
        """`flwr run APP loopback --stream` until the ServerApp ends; each line of its log goes to `on_line`.
        Returns the run's final status from `flwr ls` (e.g. finished:completed, finished:failed)."""
        command = ["flwr", "run", str(APP_DIR), CONNECTION, "--stream", "--run-config", str(run_config)]
        with open(self.logs / "flwr_run.log", "a", encoding="utf-8") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
                                       text=True, errors="replace")  # fmt: skip
            self.processes["flwr_run"] = process
            for line in process.stdout:
                log.write(line)
                on_line(line.rstrip("\n"))
            process.wait()
        return self.status()

    def status(self) -> str:
        """The last run's status; `flwr run --stream` exits 0 even when the ServerApp failed."""
        listed = subprocess.run(["flwr", "ls", CONNECTION, "--format", "json"], env=self.env, capture_output=True,
                                text=True, check=False)  # fmt: skip
        try:
            runs = json.loads(listed.stdout).get("runs", [])
        except json.JSONDecodeError:
            return f"unknown ({listed.stdout.strip()[-200:]})"
        return str(runs[-1].get("status", "unknown")) if runs else "no run"

    def kill_site(self, name: str) -> None:
        """Stop one site's SuperNode at once (the fault tests: a hospital that goes away mid-run)."""
        self.processes[f"supernode_{name}"].kill()

    def stop(self) -> None:
        """SIGINT to every process started here (SuperNodes stop cleanly on it), SIGKILL after 10 s; then the
        processes Flower started under them (SuperExec, ServerApp, ClientApps) that are still running."""
        running = [p for p in self.processes.values() if p.poll() is None]
        spawned = descendants([p.pid for p in running])
        for process in running:
            process.send_signal(signal.SIGINT)
        end = time.monotonic() + 10
        for process in running:
            try:
                process.wait(timeout=max(end - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in spawned:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)


def descendants(pids: list[int]) -> list[int]:
    """Every process below `pids` (children, their children, ...), read from /proc; [] where there is none."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(pids)
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def require_flower() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise UserError(
            "Flower is not installed", "install carotid[federated] (pip install 'carotid[federated]'; Python >= 3.11)"
        ) from None
    check_patience_patch()  # the pinned flwr, before any process starts
