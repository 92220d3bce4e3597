"""A page opened in headless Chromium through the DevTools protocol: what a reader's browser would report.

`open_page` loads a local HTML file and returns its console messages, JavaScript exceptions, network
requests and failures, the decoded size of every <img>, and a full-page PNG screenshot. Chromium comes
from the system (Debian's `chromium`, installed by .ci/run); tests skip when it is absent.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
IMAGES = """Promise.all([...document.images].map(img => img.decode().then(
    () => ({ok: true, width: img.naturalWidth, height: img.naturalHeight, alt: img.alt}),
    error => ({ok: false, error: String(error), alt: img.alt}))))"""


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


BLANKS = """[...document.querySelectorAll('table')].flatMap((table, t) => {
    const cells = [...table.querySelectorAll('td')];
    if (!cells.length) return [`table ${t + 1} has no row (${table.innerText.slice(0, 60)})`];
    return cells.filter(td => !td.querySelector('img') && ['', '-', 'None', 'null'].includes(td.innerText.trim()))
        .map(td => `table ${t + 1}, row "${td.parentElement.innerText.slice(0, 60)}": a blank cell`);
}).concat([...document.querySelectorAll('h1, p, .card')].filter(e => /(·\\s*·|:\\s*$|\\bNone\\b|\\bclasses\\s*$)/
    .test(e.innerText.trim())).map(e => `a blank field in "${e.innerText.slice(0, 80)}"`))"""


@dataclass
class PageReport:
    console: list[dict] = field(default_factory=list)  # Runtime.consoleAPICalled and Log.entryAdded
    exceptions: list[dict] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    screenshot: bytes = b""
    title: str = ""
    blanks: list[str] = field(default_factory=list)  # tables without a row, empty cells, fields left blank


class DevTools:
    """A minimal DevTools client over one websocket: numbered commands, events collected while waiting."""

    def __init__(self, url: str):
        import websocket  # websocket-client

        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(json.loads(self.socket.recv()))

    def close(self) -> None:
        self.socket.close()


def open_page(path: Path, width: int = 1280) -> PageReport:
    """Load `path` in a fresh headless Chromium and report what happened (see PageReport)."""
    binary = find_chromium()
    assert binary, "no chromium"
    # Chromium's helper processes can still be writing the profile when the browser exits: a cleanup that meets
    # a file written after it listed the folder ('Directory not empty') must not fail the page's test.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # tests may run as root (CI containers), where the sandbox refuses to start
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={width},900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = _devtools_port(process)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
                page = next(t for t in json.load(answer) if t["type"] == "page")
            tools = DevTools(page["webSocketDebuggerUrl"])
            try:
                return _load(tools, path)
            finally:
                tools.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _devtools_port(process: subprocess.Popen) -> int:
    for line in process.stderr:  # Chromium announces "DevTools listening on ws://127.0.0.1:PORT/…"
        found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if found:
            return int(found.group(1))
    raise RuntimeError(f"chromium exited ({process.wait()}) without starting DevTools")


def _load(tools: DevTools, path: Path) -> PageReport:
    for domain in ("Page", "Runtime", "Log", "Network"):
        tools.send(f"{domain}.enable")
    tools.send("Page.navigate", url=path.resolve().as_uri())
    tools.wait_for("Page.loadEventFired")
    report = PageReport()
    report.images = tools.send("Runtime.evaluate", expression=IMAGES, awaitPromise=True, returnByValue=True)["result"][
        "value"
    ]
    report.blanks = tools.send("Runtime.evaluate", expression=BLANKS, returnByValue=True)["result"]["value"]
    report.title = tools.send("Runtime.evaluate", expression="document.title", returnByValue=True)["result"]["value"]
    size = tools.send("Page.getLayoutMetrics")["cssContentSize"]
    shot = tools.send(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    )
    report.screenshot = base64.b64decode(shot["data"])
    for event in tools.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            report.console.append({"level": params["type"], "text": str(params.get("args"))})
        elif method == "Log.entryAdded":
            report.console.append({"level": params["entry"]["level"], "text": params["entry"]["text"]})
        elif method == "Runtime.exceptionThrown":
            report.exceptions.append(params["exceptionDetails"])
        elif method == "Network.requestWillBeSent":
            report.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            report.failed.append(params)
    return report
