"""Drive Debian's headless Chromium from tests, with nothing downloaded at run time.

The browser is Debian's ``chromium`` package (``/usr/bin/chromium``; override with the
environment variable ``LEARNGENE_CHROMIUM``). It is spoken to over the Chrome DevTools Protocol on
a pipe (``--remote-debugging-pipe``: JSON messages ending in NUL on file descriptors 3 and 4), so
no WebDriver binary, no Selenium Manager and no extra Python package is involved.

Typical use::

    from browser import headless_chromium, requires_chromium, serve_app

    @requires_chromium
    def test_page(live_url):
        with headless_chromium() as page:
            page.open(live_url + "/docs")
            page.wait_for(".opblock")
            page.click("button.try-out__btn")
            assert "ok" in page.text(".response")

Tests that use it should carry ``@requires_chromium`` (skips, with the reason, only when the
browser is not installed) and ``@pytest.mark.browser``. ``serve_app`` runs an ASGI app under a
real uvicorn server on 127.0.0.1 in a thread, for the browser to talk to.

If ``LEARNGENE_BROWSER_ARTIFACTS`` names a folder, a test that fails inside
``headless_chromium()`` leaves a screenshot, the page's HTML and Chromium's log there.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "CHROMIUM",
    "BrowserError",
    "JavaScriptError",
    "Page",
    "chromium_missing_reason",
    "headless_chromium",
    "requires_chromium",
    "serve_app",
]

CHROMIUM = Path(os.environ.get("LEARNGENE_CHROMIUM", "/usr/bin/chromium"))

# Flags that keep Chromium quiet and self-contained on a machine with no internet: no
# background fetches (component updates, sync, safe browsing lists, QUIC probes), no GPU, a
# fresh profile every time, no sandbox (tests run as root in containers).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--metrics-recording-only",
    "--mute-audio",
    "--password-store=basic",
    "--use-mock-keychain",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,"
    "AutofillServerCommunication,CertificateTransparencyComponentUpdater",
)


def chromium_missing_reason() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return (
            f"headless browser tests need Debian's chromium at {CHROMIUM}: "
            "apt-get install -y chromium chromium-driver"
        )
    return None


requires_chromium = pytest.mark.skipif(
    chromium_missing_reason() is not None, reason=chromium_missing_reason() or ""
)


class BrowserError(RuntimeError):
    """Chromium failed, closed, or did not do what was asked in time."""


class JavaScriptError(BrowserError):
    """An expression evaluated in the page threw."""


# --------------------------------------------------------------------------------------------
# The DevTools connection


class _Connection:
    """CDP over the pipe: one reader thread; commands wait for their reply by id."""

    def __init__(self, read_fd: int, write_fd: int, describe_failure: Any) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._describe_failure = describe_failure  # () -> str, for error messages
        self._next_id = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._replies: dict[int, dict[str, Any]] = {}
        self._listeners: list[Any] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        buf = b""
        try:
            while True:
                chunk = os.read(self._read_fd, 1 << 16)
                if not chunk:
                    break
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    self._dispatch(json.loads(raw))
        except OSError:
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            with self._cond:
                self._replies[message["id"]] = message
                self._cond.notify_all()
            return
        for listener in list(self._listeners):
            listener(message)

    def add_listener(self, listener: Any) -> None:
        self._listeners.append(listener)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        with self._cond:
            if self._closed:
                raise BrowserError(f"{method}: chromium has closed. {self._describe_failure()}")
            self._next_id += 1
            msg_id = self._next_id
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        data = json.dumps(message).encode() + b"\0"
        with self._write_lock:
            try:
                while data:
                    data = data[os.write(self._write_fd, data) :]
            except OSError as exc:
                raise BrowserError(f"{method}: cannot write to chromium ({exc})") from exc
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._replies:
                left = deadline - time.monotonic()
                if self._closed:
                    raise BrowserError(
                        f"{method}: chromium closed before replying. {self._describe_failure()}"
                    )
                if left <= 0:
                    raise BrowserError(f"{method}: no reply from chromium within {timeout:.0f}s")
                self._cond.wait(left)
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result", {})

    @property
    def closed(self) -> bool:
        return self._closed


# --------------------------------------------------------------------------------------------
# The page object handed to tests

_FIND_JS = """
(sel, text, visible) => {
  for (const el of document.querySelectorAll(sel)) {
    if (text !== null && !((el.innerText || el.textContent || '').includes(text))) continue;
    if (visible) {
      const r = el.getBoundingClientRect(), s = getComputedStyle(el);
      if (r.width === 0 || r.height === 0 || s.visibility === 'hidden') continue;
    }
    return el;
  }
  return null;
}
"""


class Page:
    """One browser tab. Selectors are CSS; ``text=`` narrows a selector to the elements whose
    visible text contains that string. Every wait raises BrowserError after its timeout."""

    def __init__(self, conn: _Connection, session_id: str, *, timeout: float) -> None:
        self._conn = conn
        self._session = session_id
        self.timeout = timeout
        #: URL of every request the page made (documents, scripts, fetch/XHR, images...).
        self.requests: list[str] = []
        #: Uncaught exceptions and console errors seen in the page.
        self.errors: list[str] = []
        conn.add_listener(self._on_event)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Network.enable")
        self.send("Log.enable")

    # -- plumbing -------------------------------------------------------------------------
    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a raw DevTools command to this tab and return its result."""
        return self._conn.send(method, params, session_id=self._session, timeout=self.timeout + 10)

    def _on_event(self, message: dict[str, Any]) -> None:
        if message.get("sessionId") != self._session:
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.errors.append(f"uncaught: {exc.get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            self.errors.append("console.error: " + " ".join(map(str, args)))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())

    def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        """Evaluate a JavaScript expression in the page and return its (JSON) value."""
        result = self.send(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=await_promise,
            userGesture=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            exc = details.get("exception", {})
            raise JavaScriptError(exc.get("description") or details.get("text") or str(details))
        return result.get("result", {}).get("value")

    def _call_on_match(self, selector: str, text: str | None, visible: bool, body: str) -> Any:
        """Run ``body`` (JS using ``el``) on the first match; None if there is no match."""
        args = ",".join(json.dumps(a) for a in (selector, text, visible))
        return self.evaluate(
            f"(() => {{ const el = ({_FIND_JS})({args}); if (!el) return null; {body} }})()"
        )

    def _poll(self, what: str, check: Any, timeout: float | None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            value = check()
            if value is not None and value is not False:
                return value
            if time.monotonic() >= deadline:
                raise BrowserError(
                    f"timed out waiting for {what}; url={self.url!r}; page errors={self.errors}"
                )
            time.sleep(0.05)

    # -- what tests use -------------------------------------------------------------------
    def open(self, url: str, *, timeout: float | None = None) -> None:
        """Navigate to ``url`` and wait until the document has loaded."""
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        loaded = "document.readyState === 'complete' && location.href !== 'about:blank'"
        self._poll(f"{url} to load", lambda: self.evaluate(loaded), timeout)

    @property
    def url(self) -> str:
        return self.evaluate("location.href")

    @property
    def title(self) -> str:
        return self.evaluate("document.title")

    def exists(self, selector: str, *, text: str | None = None, visible: bool = True) -> bool:
        return bool(self._call_on_match(selector, text, visible, "return true;"))

    def wait_for(
        self,
        selector: str,
        *,
        text: str | None = None,
        visible: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Wait until an element matching ``selector`` (and containing ``text``) is shown."""
        what = repr(selector) + (f" containing {text!r}" if text is not None else "")
        self._poll(what, lambda: self.exists(selector, text=text, visible=visible), timeout)

    def text(self, selector: str, *, text: str | None = None, timeout: float | None = None) -> str:
        """Visible text of the first matching element (waits for it to appear)."""
        self.wait_for(selector, text=text, timeout=timeout)
        return self._call_on_match(selector, text, True, "return el.innerText;") or ""

    def texts(self, selector: str) -> list[str]:
        """Visible text of every element matching ``selector`` now (no waiting)."""
        return self.evaluate(
            f"Array.from(document.querySelectorAll({json.dumps(selector)}), e => e.innerText)"
        )

    def attribute(self, selector: str, name: str, *, timeout: float | None = None) -> str | None:
        self.wait_for(selector, visible=False, timeout=timeout)
        return self._call_on_match(
            selector, None, False, f"return el.getAttribute({json.dumps(name)});"
        )

    def click(
        self, selector: str, *, text: str | None = None, timeout: float | None = None
    ) -> None:
        """Click the first matching element with a real mouse event at its centre.

        Waits until it is shown and not covered by another element (like WebDriver's click).
        """
        locate = """
            el.scrollIntoView({block: 'center', inline: 'center'});
            const r = el.getBoundingClientRect();
            const x = r.left + r.width / 2, y = r.top + r.height / 2;
            const hit = document.elementFromPoint(x, y);
            if (!hit || !(hit === el || el.contains(hit))) return false;
            return {x: x, y: y};
        """
        what = f"{selector!r} to be clickable" + (f" (text {text!r})" if text else "")
        point = self._poll(what, lambda: self._call_on_match(selector, text, True, locate), timeout)
        x, y = point["x"], point["y"]
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    def type(self, selector: str, value: str, *, timeout: float | None = None) -> None:
        """Focus the matching input and type ``value`` as keyboard input."""
        self.click(selector, timeout=timeout)
        self.send("Input.insertText", text=value)

    def screenshot(self, path: str | os.PathLike[str]) -> Path:
        """Save a PNG of the viewport."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        out = Path(path)
        out.write_bytes(base64.b64decode(data))
        return out

    def html(self) -> str:
        return self.evaluate("document.documentElement.outerHTML")


# --------------------------------------------------------------------------------------------
# Launching Chromium


def _high_fd(fd: int) -> int:
    """Duplicate ``fd`` to a number >= 10 (close-on-exec) and close the original, so the
    later dup2 onto 3 and 4 in the child never meets a descriptor already numbered 3 or 4."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


@contextlib.contextmanager
def headless_chromium(
    *, timeout: float = 20.0, window_size: tuple[int, int] = (1280, 1024)
) -> Iterator[Page]:
    """Start a fresh headless Chromium, yield a :class:`Page` (one tab), and shut it down.

    ``timeout`` is the default for every wait on the page, in seconds.
    """
    reason = chromium_missing_reason()
    if reason:
        pytest.skip(reason)

    with tempfile.TemporaryDirectory(prefix="lg-chromium-", ignore_cleanup_errors=True) as tmp:
        tmpdir = Path(tmp)
        log_path = tmpdir / "chromium.log"
        profile = tmpdir / "profile"
        profile.mkdir()

        to_chrome_r, to_chrome_w = (_high_fd(fd) for fd in os.pipe())
        from_chrome_r, from_chrome_w = (_high_fd(fd) for fd in os.pipe())
        argv = [
            str(CHROMIUM),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={window_size[0]},{window_size[1]}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["HOME"] = str(tmpdir)  # keep ~/.config, ~/.cache and ~/.pki out of the real home
        log_flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        pid = os.posix_spawn(
            str(CHROMIUM),
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log_path), log_flags, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
                (os.POSIX_SPAWN_DUP2, to_chrome_r, 3),
                (os.POSIX_SPAWN_DUP2, from_chrome_w, 4),
            ],
            setsid=True,  # its own process group: cleanup can reach the renderers too
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def describe_failure() -> str:
            return f"chromium log ({log_path}):\n{_tail(log_path)}"

        conn = _Connection(from_chrome_r, to_chrome_w, describe_failure)
        try:
            conn.send("Browser.getVersion", timeout=60)  # first reply: the browser is up
            target = conn.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = conn.send(
                "Target.attachToTarget", {"targetId": target, "flatten": True}
            )["sessionId"]
            page = Page(conn, session, timeout=timeout)
            try:
                yield page
            except BaseException:
                _save_artifacts(page, log_path)
                raise
        finally:
            _shutdown(conn, pid)
            os.close(to_chrome_w)
            os.close(from_chrome_r)


def _save_artifacts(page: Page, log_path: Path) -> None:
    folder = os.environ.get("LEARNGENE_BROWSER_ARTIFACTS")
    if not folder:
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with contextlib.suppress(Exception):
        page.screenshot(out / f"{stamp}-screenshot.png")
    with contextlib.suppress(Exception):
        (out / f"{stamp}-page.html").write_text(page.html())
    with contextlib.suppress(Exception):
        (out / f"{stamp}-chromium.log").write_text(_tail(log_path, 100_000))


def _shutdown(conn: _Connection, pid: int) -> None:
    """Ask Chromium to close; kill its process group if it does not exit promptly."""
    with contextlib.suppress(BrowserError):
        if not conn.closed:
            conn.send("Browser.close", timeout=5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # Helpers (zygote, renderers) share the group; make sure none outlives the browser.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# A live server for the browser to talk to


@contextlib.contextmanager
def serve_app(app: Any, *, host: str = "127.0.0.1", timeout: float = 20.0) -> Iterator[str]:
    """Run ``app`` (ASGI) under a real uvicorn server on a free port of ``host`` in a thread.

    Yields the base URL, e.g. ``http://127.0.0.1:43127``; stops the server on exit.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="auto")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited during startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {timeout:.0f}s")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
