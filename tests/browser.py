"""Helpers for driving the web client in a real headless Chromium (Debian's ``chromium``
and ``chromium-driver``; ``scripts/ensure-chromium`` installs them).

Selenium is blocking, so the server runs in a thread of its own with its own event loop
(:class:`ServerThread`), and the test (or docs/web_screenshot.py) stays synchronous.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from roomchat.server import ChatServer, ServerConfig

T = TypeVar("T")

CHROMIUM = os.environ.get("ROOMCHAT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("ROOMCHAT_CHROMEDRIVER")
    or shutil.which("chromedriver")
    or "/usr/bin/chromedriver"
)

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def new_driver(width: int = 1280, height: int = 800) -> webdriver.Chrome:
    """A headless Chromium with a fresh profile (removed when the process ends)."""
    for binary in (CHROMIUM, CHROMEDRIVER):  # a clear failure, never a skip
        assert os.access(binary, os.X_OK), f"{binary} missing: run scripts/ensure-chromium"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="roomchat-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(0)
    return driver


class ServerThread:
    """A ChatServer (with ``--ws``) on an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: ChatServer | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def start(self, ws_port: int = 0, **settings: Any) -> ChatServer:
        config = ServerConfig(host="127.0.0.1", port=0, ws=f"127.0.0.1:{ws_port}", **settings)
        self.server = self.call(ChatServer.start(config))
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.call(self.server.close())
            self.server = None

    @property
    def ws_port(self) -> int:
        assert self.server is not None and self.server.web is not None
        return self.server.web.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ws_port}/"

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


def save_screenshots(drivers: dict[str, webdriver.Chrome], where: Path) -> list[Path]:
    """Screenshot and page source of every driver (after a failure)."""
    saved: list[Path] = []
    where.mkdir(parents=True, exist_ok=True)
    for name, driver in drivers.items():
        try:
            path = where / f"{name}.png"
            driver.save_screenshot(str(path))
            (where / f"{name}.html").write_text(driver.page_source)
            saved.append(path)
        except Exception:  # the browser may be what failed
            continue
    return saved


@pytest.fixture
def web() -> Iterator[ServerThread]:
    """A roomchat server (with its web client) on a thread of its own."""
    thread = ServerThread()
    try:
        thread.start()
        yield thread
    finally:
        thread.close()


@pytest.fixture
def drivers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, webdriver.Chrome]]:
    """The test's browsers by name, quit at the end; screenshots of them if it failed
    (``rep_call``: tests/conftest.py's pytest_runtest_makereport)."""
    started: dict[str, webdriver.Chrome] = {}
    try:
        yield started
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            saved = save_screenshots(started, tmp_path / "screenshots")
            print("screenshots:", *saved)
        for driver in started.values():
            driver.quit()
