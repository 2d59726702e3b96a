"""The web client in a real headless Chromium (Selenium, the system chromedriver): two
browser pages and a TCP client chat in one room; markup in messages stays text; the
pages reconnect and re-join when the server restarts.

Screenshots and page sources of every page go to the test's tmp_path on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from roomchat.client import ChatClient, connect
from roomchat.protocol import Event, RoomParticipation, UserMessage
from tests.browser import ServerThread, chromium_available, new_driver, save_screenshots

pytestmark = pytest.mark.skipif(
    not chromium_available(),
    reason="no chromium/chromedriver (make test runs scripts/ensure-chromium)",
)

WAIT = 10.0
XSS = "<script>alert(1)</script> and <img src=x onerror=alert(1)>"


def wait_for(driver: WebDriver, what: Callable[[WebDriver], Any], timeout: float = WAIT) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(what)


def texts(driver: WebDriver, selector: str) -> list[str]:
    # textContent, not .text: on a phone-sized screen some panes are hidden.
    return [
        e.get_attribute("textContent") or ""
        for e in driver.find_elements(By.CSS_SELECTOR, selector)
    ]


def user_id(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "user-id").get_attribute("textContent") or ""


def open_chat(driver: WebDriver, url: str) -> str:
    """Load the page, connect, open #general; the page's user id."""
    driver.get(url)
    driver.find_element(By.ID, "connect-button").click()
    wait_for(driver, lambda d: len(user_id(d)) == 5)
    driver.find_element(By.CSS_SELECTOR, '#room-list button[data-room="general"]').click()
    wait_for(driver, lambda d: d.find_element(By.ID, "message-input").is_enabled())
    return user_id(driver)


def say(driver: WebDriver, text: str) -> None:
    box = driver.find_element(By.ID, "message-input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def sees_message(text: str) -> Callable[[WebDriver], bool]:
    return lambda d: text in texts(d, "#messages .msg .text")


@pytest.fixture
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    try:
        thread.start()
        yield thread
    finally:
        thread.close()


@pytest.fixture
def drivers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, WebDriver]]:
    started: dict[str, WebDriver] = {}
    try:
        yield started
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            saved = save_screenshots(started, tmp_path / "screenshots")
            print("screenshots:", *saved)
        for driver in started.values():
            driver.quit()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Let the drivers fixture know whether the test body failed (for screenshots).
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


async def _tcp_join(port: int) -> ChatClient:
    client = await connect("127.0.0.1", port, timeout=WAIT)
    await client.join("general")
    return client


async def _tcp_until(client: ChatClient, wanted: Callable[[Event], bool]) -> list[Event]:
    seen: list[Event] = []
    while True:
        event = await client.next_event(timeout=WAIT)
        seen.append(event)
        if wanted(event):
            return seen


def test_two_pages_and_a_tcp_client_chat_and_survive_a_restart(
    server: ServerThread, drivers: dict[str, WebDriver]
) -> None:
    started = time.monotonic()
    drivers["alice"] = alice = new_driver()
    drivers["bob"] = bob = new_driver(width=390, height=844)  # a phone-sized screen
    assert server.server is not None
    tcp = server.call(_tcp_join(server.server.port))

    alice_id = open_chat(alice, server.url)
    bob_id = open_chat(bob, server.url)
    assert alice_id != bob_id
    server.call(_tcp_until(tcp, lambda e: e == RoomParticipation("general", bob_id, "joined")))
    # Each page lists the others (user_joined_room + joined) in the members panel.
    wait_for(
        alice, lambda d: {bob_id, tcp.user_id} <= set(" ".join(texts(d, ".member-name")).split())
    )

    # Browser -> browser and TCP; TCP -> both browsers.
    say(alice, "hello from alice")
    wait_for(bob, sees_message("hello from alice"))
    server.call(
        _tcp_until(tcp, lambda e: e == UserMessage("general", alice_id, "hello from alice"))
    )
    server.call(tcp.send("general", "hello from the terminal"))
    wait_for(alice, sees_message("hello from the terminal"))
    wait_for(bob, sees_message("hello from the terminal"))
    own = alice.find_elements(By.CSS_SELECTOR, "#messages .msg.own .text")
    assert [e.get_attribute("textContent") for e in own] == ["hello from alice"]

    # Markup in a message is shown as text: no element is created, no script runs.
    say(bob, XSS)
    for page in (alice, bob):
        wait_for(page, sees_message(XSS))
        assert page.find_elements(By.CSS_SELECTOR, "#messages img, #messages script") == []
        assert page.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
        with pytest.raises(NoAlertPresentException):
            page.switch_to.alert.text  # noqa: B018
    server.call(_tcp_until(tcp, lambda e: e == UserMessage("general", bob_id, XSS)))
    for page in (alice, bob):  # nothing went wrong in the page (CSP violations included)
        errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors

    # The server restarts on the same WebSocket port: the pages reconnect and re-join.
    ws_port = server.ws_port
    tcp.close()
    server.stop()
    for page in (alice, bob):
        wait_for(page, lambda d: d.find_element(By.ID, "status").text != "Connected")
    server.start(ws_port)
    assert server.server is not None
    for page, old_id in ((alice, alice_id), (bob, bob_id)):
        wait_for(page, lambda d, old=old_id: len(user_id(d)) == 5 and user_id(d) != old)
        wait_for(page, lambda d: d.find_element(By.ID, "status").text == "Connected")
        assert not page.find_element(By.ID, "banner").is_displayed()
    tcp = server.call(_tcp_join(server.server.port))
    new_alice, new_bob = user_id(alice), user_id(bob)
    # Both pages are back in #general: the TCP client sees them there.
    reply = server.call(_tcp_until(tcp, lambda e: getattr(e, "users", None) is not None))[-1]
    assert {new_alice, new_bob} <= set(reply.users)  # type: ignore[attr-defined]
    server.call(tcp.send("general", "welcome back"))
    wait_for(alice, sees_message("welcome back"))
    wait_for(bob, sees_message("welcome back"))
    say(bob, "bob is back")
    wait_for(alice, sees_message("bob is back"))
    # Messages from before the restart are still there, and still marked as own.
    assert "hello from alice" in texts(alice, "#messages .msg.own .text")

    # The keyboard alone: Escape goes back to the rooms, arrows move, Enter opens (joins).
    alice.find_element(By.ID, "message-input").send_keys(Keys.ESCAPE)
    assert alice.switch_to.active_element.get_attribute("data-room") == "general"
    alice.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    assert alice.switch_to.active_element.get_attribute("data-room") == "random"
    alice.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(alice, lambda d: d.find_element(By.ID, "message-input").is_enabled())
    assert alice.find_element(By.ID, "room-title").text == "# random"
    assert alice.switch_to.active_element.get_attribute("id") == "message-input"
    # #general, no longer open, counts what arrives.
    say(bob, "unread one")
    general = '#room-list button[data-room="general"] .badge'
    wait_for(alice, lambda d: texts(d, general) == ["1"])
    tcp.close()
    assert time.monotonic() - started < 60
