"""Headless Chromium driven over the DevTools protocol: open a page, wait until it shows something, read its text,
click, and photograph the viewport. Used by mlflow_screenshots.py; needs Debian's
`chromium` and the `websockets` package (a dependency of Prefect's, so in the venv already).

    with Browser() as b:
        b.open("http://127.0.0.1:5000/#/experiments/1/runs", until="matching runs")
        print(b.js("document.title"))
        b.screenshot("runs.png")

A fresh temporary profile per Browser: as a new user's browser, with no column choice or view remembered in its
local storage.
"""
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

from scripts.local_stack import stop

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--remote-debugging-port=0", "--remote-allow-origins=*"]
CLICKABLE = "button, [role=button], [role=menuitem], [role=option], a"


class Browser:
    def __init__(self, width: int = 1500, height: int = 900, start_timeout: float = 60):
        self.profile = Path(tempfile.mkdtemp(prefix="chromium-"))
        self.process = subprocess.Popen(["chromium", *FLAGS, f"--user-data-dir={self.profile}",
                                         f"--window-size={width},{height}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)  # its renderers and helpers stop with it
        self.ids = itertools.count(1)
        try:
            port = self._port(start_timeout)
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            page = next(p for p in pages if p["type"] == "page")
            self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        except BaseException:
            self.close()
            raise
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        active = self.profile / "DevToolsActivePort"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode} before it listened")
            if active.is_file() and (text := active.read_text().split()):
                return int(text[0])
            time.sleep(0.2)
        raise TimeoutError(f"chromium did not open its DevTools port within {timeout:.0f} s")

    def call(self, method: str, timeout: float = 60, **params):
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait(self, until: str | None = None, timeout: float = 90, settle: float = 2.0) -> bool:
        """Wait until the page's text holds `until` (any of them when a list; None: any text at all), then until
        the text stops changing for `settle` seconds. False when `until` did not appear in time."""
        wanted = [until] if isinstance(until, str) else list(until or [])
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if text.strip() and (not wanted or any(w in text for w in wanted)):
                break
            time.sleep(0.3)
        else:
            return False
        quiet_since, last = time.monotonic(), text
        give_up = min(deadline, quiet_since + 4 * settle + 10)  # a clock on the page never stops changing
        while time.monotonic() < give_up and time.monotonic() - quiet_since < settle:
            time.sleep(0.3)
            if (text := self.text()) != last:
                quiet_since, last = time.monotonic(), text
        return True

    def open(self, url: str, until: str | list | None = None, timeout: float = 90) -> bool:
        """Load `url` and wait() for `until`. Through about:blank first: a link into the same single-page app only
        changes its #fragment, and the old page's text would satisfy `until` at once."""
        self.call("Page.enable")
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)
        return self.wait(until, timeout)

    def click(self, text: str, selector: str = CLICKABLE, settle: float = 1.5) -> bool:
        """Click, with the mouse as a user does (menus open on pointer events, not on element.click()), the first
        visible element matching `selector` whose text (or aria-label) is `text` (its innermost descendant with that
        text, scrolled into view); False when there is none."""
        box = self.js(f"""(() => {{
            const want = {json.dumps(text)};
            const label = e => (e.innerText || e.getAttribute('aria-label') || '').trim();
            for (let e of document.querySelectorAll({json.dumps(selector)})) {{
                if (label(e) === want && e.getClientRects().length) {{
                    // the innermost element with that text: a wide row's middle can miss its handler
                    const inner = [...e.querySelectorAll('*')].filter(
                        c => label(c) === want && c.getClientRects().length);
                    if (inner.length) e = inner[inner.length - 1];
                    e.scrollIntoView({{block: 'nearest', inline: 'nearest'}});
                    const r = e.getBoundingClientRect();
                    return {{x: r.x, y: r.y, width: r.width, height: r.height}};
                }}
            }}
            return null; }})()""")
        if not box:
            return False
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        self.wait(settle=settle)
        return True

    def scroll_to(self, text: str) -> bool:
        """Scroll the innermost element whose own text is `text` to the top of its scrolling container."""
        return bool(self.js(f"""(() => {{
            const want = {json.dumps(text)};
            const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            while (walker.nextNode()) {{
                if (walker.currentNode.textContent.trim() === want) {{
                    walker.currentNode.parentElement.scrollIntoView({{block: 'start'}});
                    return true;
                }}
            }}
            return false; }})()"""))

    def screenshot(self, path) -> Path:
        """The viewport as a PNG."""
        path = Path(path)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):  # AttributeError: no connection was made
            self.ws.close()
        stop(self.process, timeout=10)  # its own process group: chromium's helpers too
        self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
