"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol
through a pipe (`--remote-debugging-pipe`: JSON messages on fds 3 and 4,
each ending in a NUL byte). No extra Python package, no debugging port, no
driver binary whose version must match the browser: the protocol commands
used here (Target, Page, DOM, Input, Emulation) are stable ones.

    with Browser(tmp_path) as browser:
        page = browser.new_page(javascript=False)   # its own cookie jar
        page.goto(url)
        page.type("#note", "text"); page.click("#send")   # real mouse and keyboard input
        page.text("#status"); page.screenshot(tmp_path / "x.png")

The `browser` fixture starts one per test and fails (never skips) when
chromium is missing: scripts/setup-chromium.sh installs it.
"""

from __future__ import annotations

import base64
import html
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--window-size=1280,1600"]


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, workdir: Path, timeout_s: float = 20.0) -> None:
        binary = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
        if binary is None:
            raise BrowserError("chromium is not installed: run scripts/setup.sh (scripts/setup-chromium.sh)")
        self.timeout_s = timeout_s
        self.profile = workdir / "chromium-profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        cmd_r, self._cmd_w = os.pipe()     # we write commands, chromium reads fd 3
        self._evt_r, evt_w = os.pipe()     # chromium writes fd 4, we read

        def fds() -> None:
            os.dup2(cmd_r, 3)
            os.dup2(evt_w, 4)

        self.log = open(workdir / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, pass_fds=(3, 4),
            preexec_fn=fds, start_new_session=True)
        os.close(cmd_r)
        os.close(evt_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._waiting: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        self.send("Browser.getVersion")

    # -- the protocol --------------------------------------------------------------
    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._evt_r, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        box = self._waiting.pop(msg["id"], None)
                    if box is not None:
                        box.put(msg)
                else:
                    self.events.put(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
            box: queue.Queue = queue.Queue()
            self._waiting[msg_id] = box
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        try:
            reply = box.get(timeout=self.timeout_s)
        except queue.Empty:
            raise BrowserError(f"{method}: no answer within {self.timeout_s} s") from None
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str | None, timeout_s: float | None = None) -> dict:
        end = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no {method} within the timeout")
            try:
                msg = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if msg.get("method") == method and (session is None or msg.get("sessionId") == session):
                return msg.get("params", {})

    # -- pages ----------------------------------------------------------------------
    def new_page(self, javascript: bool = True) -> "Page":
        """A tab in a fresh browser context (its own cookies, like another person's browser)."""
        context = self.send("Target.createBrowserContext")["browserContextId"]
        target = self.send("Target.createTarget", {"url": "about:blank", "browserContextId": context})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.send("Page.enable")
        page.send("DOM.enable")
        if not javascript:
            page.send("Emulation.setScriptExecutionDisabled", {"value": True})
        return page

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
        for fd in (self._cmd_w, self._evt_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def _drain(self) -> None:
        while True:
            try:
                self.browser.events.get_nowait()
            except queue.Empty:
                return

    def goto(self, url: str) -> None:
        self._drain()
        reply = self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"navigating to {url}: {reply['errorText']}")
        self.browser.wait_event("Page.loadEventFired", self.session)

    @property
    def url(self) -> str:
        history = self.send("Page.getNavigationHistory")
        return history["entries"][history["currentIndex"]]["url"]

    def _node(self, selector: str) -> int:
        root = self.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise BrowserError(f"no element {selector!r} on {self.url}")
        return node

    def exists(self, selector: str) -> bool:
        root = self.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        return bool(self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"])

    def outer_html(self, selector: str = "html") -> str:
        return self.send("DOM.getOuterHTML", {"nodeId": self._node(selector)})["outerHTML"]

    def text(self, selector: str) -> str:
        """The element's text as the DOM holds it (tags dropped, entities decoded)."""
        return html.unescape(re.sub(r"<[^>]*>", "", self.outer_html(selector)))

    def count(self, selector: str) -> int:
        root = self.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        return len(self.send("DOM.querySelectorAll", {"nodeId": root, "selector": selector})["nodeIds"])

    def _center(self, selector: str) -> tuple[float, float]:
        node = self._node(selector)
        self.send("DOM.scrollIntoViewIfNeeded", {"nodeId": node})
        quad = self.send("DOM.getContentQuads", {"nodeId": node})["quads"][0]
        xs, ys = quad[0::2], quad[1::2]
        return sum(xs) / 4, sum(ys) / 4

    def click(self, selector: str, navigates: bool = True) -> None:
        """A real left click in the middle of the element (a form submits without JavaScript)."""
        x, y = self._center(selector)
        self._drain()
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})
        if navigates:
            self.browser.wait_event("Page.loadEventFired", self.session)

    def type(self, selector: str, text: str) -> None:
        """Focus the field (by a click) and type `text` as keyboard input."""
        self.click(selector, navigates=False)
        self.send("DOM.focus", {"nodeId": self._node(selector)})
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@pytest.fixture
def browser(tmp_path):
    with Browser(tmp_path) as b:
        yield b
