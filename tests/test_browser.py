"""The web client in a real headless Chromium (Selenium, the system chromedriver), protocol
v2: two pages pick names ("ann", "bob"; a name already taken is refused on the connect
page) and chat with a TCP client in one room; a page joining later gets the room's
history; markup in messages stays text; a page whose WebSocket drops catches up on what
it missed, exactly once and in order; after the server restarts (shutdown notice) the
pages reconnect with their names, re-join and show the gap. And the community from the
page: a room created, a direct message, a ban (docs/moderation.md).

Screenshots and page sources of every page go to the test's tmp_path on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from roomchat.client import ChatClient, connect
from roomchat.protocol import Event, RoomParticipation, UserMessage
from roomchat.server import ChatServer
from tests.browser import ServerThread, new_driver

WAIT = 10.0
XSS = "<script>alert(1)</script> and <img src=x onerror=alert(1)>"


def wait_for(driver: WebDriver, what: Callable[[WebDriver], Any], timeout: float = WAIT) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(what)


def texts(driver: WebDriver, selector: str) -> list[str]:
    # textContent, not .text: on a phone-sized screen some panes are hidden. Read in one
    # script, so that a re-render between finding the elements and reading each one
    # (an edit, a page of older messages) cannot leave a stale reference.
    found: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent || '')",
        selector,
    )
    return found


def user_id(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "user-id").get_attribute("textContent") or ""


def connect_as(driver: WebDriver, name: str) -> None:
    box = driver.find_element(By.ID, "name-input")
    box.clear()
    box.send_keys(name)
    driver.find_element(By.ID, "connect-button").click()


def open_chat(driver: WebDriver, url: str | None, name: str) -> None:
    """(Load the page,) connect as ``name``, open #general."""
    if url is not None:
        driver.get(url)
    connect_as(driver, name)
    wait_for(driver, lambda d: user_id(d) == name)
    driver.find_element(By.CSS_SELECTOR, '#room-list button[data-room="general"]').click()
    wait_for(driver, lambda d: d.find_element(By.ID, "message-input").is_enabled())


def messages(driver: WebDriver) -> list[str]:
    """The open room's items: "author: text" for messages, "* text" for the others."""
    script = """return [...document.querySelectorAll('#messages li')].map(li =>
        li.classList.contains('msg')
          ? li.querySelector('.author').textContent.replace(' (you)', '') + ': '
            + li.querySelector('.text').textContent
          : '* ' + li.textContent);"""
    result: list[str] = driver.execute_script(script)
    return result


def chat_only(items: list[str]) -> list[str]:
    return [m for m in items if not m.startswith("* ")]


def members(driver: WebDriver) -> set[str]:
    return {t.replace(" (you)", "") for t in texts(driver, ".member-name")}


def say(driver: WebDriver, text: str) -> None:
    box = driver.find_element(By.ID, "message-input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def sees_message(text: str) -> Callable[[WebDriver], bool]:
    return lambda d: text in texts(d, "#messages .msg .text")


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


async def _tcp_send(client: ChatClient, contents: list[str]) -> None:
    for content in contents:
        await client.send("general", content)
    await _tcp_until(client, lambda e: isinstance(e, UserMessage) and e.content == contents[-1])


async def _drop_and_send(chat: ChatServer, name: str, tcp: ChatClient, contents: list[str]) -> None:
    """Cut ``name``'s WebSocket (as a network failure would: no close frame) and have
    ``tcp`` post ``contents`` at once: the page reconnects 0.375 s later at the
    earliest, so it can only get them by catching up."""
    assert chat.web is not None
    dropped = [c for c in chat.connections if c.session and c.session.user_id == name]
    assert len(dropped) == 1
    dropped[0].abort("test: connection lost")
    await _tcp_send(tcp, contents)


def test_names_history_catch_up_and_restart(
    web: ServerThread, drivers: dict[str, WebDriver]
) -> None:
    started = time.monotonic()
    drivers["ann"] = ann = new_driver()
    drivers["bob"] = bob = new_driver(width=390, height=844)  # a phone-sized screen
    chat = web.server
    assert chat is not None
    tcp = web.call(_tcp_join(chat.port))
    web.call(_tcp_send(tcp, ["early one", "early two"]))
    terminal = tcp.user_id

    # ann joins after two messages: the history shows them, oldest first.
    open_chat(ann, web.url, "ann")
    wait_for(ann, lambda d: messages(d)[:2] == [f"{terminal}: early one", f"{terminal}: early two"])
    say(ann, "hello from ann")
    wait_for(ann, sees_message("hello from ann"))

    # bob asks for ann's name (in other case): refused on the connect page; then "bob".
    bob.get(web.url)
    connect_as(bob, "ANN")
    error = bob.find_element(By.ID, "connect-error")
    wait_for(bob, lambda d: "taken" in (error.get_attribute("textContent") or ""))
    assert error.is_displayed() and bob.find_element(By.ID, "connect-view").is_displayed()
    open_chat(bob, None, "bob")
    # bob's history: everything so far, in order, ann's message under her name.
    wait_for(
        bob,
        lambda d: (
            [m for m in messages(d) if not m.startswith("*")][:3]
            == [f"{terminal}: early one", f"{terminal}: early two", "ann: hello from ann"]
        ),
    )
    web.call(_tcp_until(tcp, lambda e: e == RoomParticipation("general", "bob", "joined")))
    wait_for(ann, lambda d: members(d) == {"ann", "bob", terminal})
    wait_for(bob, lambda d: members(d) == {"ann", "bob", terminal})

    # Names in messages, both ways, and to the TCP client.
    say(bob, "hi ann, bob here")
    wait_for(ann, lambda d: "bob: hi ann, bob here" in messages(d))
    web.call(_tcp_until(tcp, lambda e: e == UserMessage("general", "bob", "hi ann, bob here")))
    own = ann.find_elements(By.CSS_SELECTOR, "#messages .msg.own .text")
    assert [e.get_attribute("textContent") for e in own] == ["hello from ann"]

    # Markup in a message is shown as text: no element is created, no script runs.
    say(bob, XSS)
    for page in (ann, bob):
        wait_for(page, sees_message(XSS))
        assert page.find_elements(By.CSS_SELECTOR, "#messages img, #messages script") == []
        assert page.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
        with pytest.raises(NoAlertPresentException):
            page.switch_to.alert.text  # noqa: B018
    web.call(_tcp_until(tcp, lambda e: e == UserMessage("general", "bob", XSS)))

    # An error from the server is shown (a v2 error event, here for an unknown room).
    ann.execute_script("window.roomchat.client._command({_ct: 'join_room', r: 'nowhere'})")
    wait_for(ann, lambda d: "unknown_room" in (d.find_element(By.ID, "notice").text or ""))

    # ann's connection drops while three messages are posted: she catches up on them,
    # each once, in order, with no gap; bob, connected all along, saw them live.
    missed = ["missed one", "missed two", "missed three"]
    before = messages(ann)
    web.call(_drop_and_send(chat, "ann", tcp, missed))
    wait_for(ann, lambda d: chat_only(messages(d))[-3:] == [f"{terminal}: {m}" for m in missed])
    web.call(_tcp_until(tcp, lambda e: e == RoomParticipation("general", "ann", "joined")))
    web.call(tcp.send("general", "after the drop"))
    wait_for(ann, sees_message("after the drop"))
    after = messages(ann)
    assert after[: len(before)] == before
    news = chat_only(after[len(before) :])
    assert news == [f"{terminal}: {m}" for m in [*missed, "after the drop"]], after
    assert not any("missed" in m for m in after if m.startswith("*")), after
    wait_for(bob, sees_message("after the drop"))
    assert [m for m in messages(bob) if m.endswith(" three")] == [f"{terminal}: missed three"]
    for page in (ann, bob):  # nothing went wrong in the page (CSP violations included)
        errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors

    # The server restarts on the same WebSocket port. The pages get the shutdown notice
    # ("restarting"), come back after reconnect_ms (2 s) with their names and re-join;
    # the new server has a new, empty history: the pages say messages were missed.
    ws_port = web.ws_port
    tcp.close()
    web.stop()
    for page in (ann, bob):
        wait_for(page, lambda d: "restarting" in d.find_element(By.ID, "banner").text)
        assert page.find_element(By.ID, "status").text != "Connected"
    chat = web.start(ws_port)
    tcp = web.call(_tcp_join(chat.port))
    terminal = tcp.user_id
    web.call(_tcp_send(tcp, ["while you were away"]))  # before the pages are back
    for page, name in ((ann, "ann"), (bob, "bob")):
        wait_for(page, lambda d: d.find_element(By.ID, "status").text == "Connected")
        assert user_id(page) == name
        wait_for(page, sees_message("while you were away"))
        assert not page.find_element(By.ID, "banner").is_displayed()
        items = messages(page)
        gap = [i for i, m in enumerate(items) if m.startswith("* Some messages were missed")]
        assert len(gap) == 1, items
        assert items.index(f"{terminal}: while you were away") > gap[0]
    web.call(_tcp_until(tcp, lambda e: e == RoomParticipation("general", "bob", "joined")))
    web.call(tcp.send("general", "welcome back"))
    wait_for(ann, sees_message("welcome back"))
    wait_for(bob, sees_message("welcome back"))
    say(bob, "bob is back")
    wait_for(ann, lambda d: "bob: bob is back" in messages(d))
    # Messages from before the restart are still there, and still marked as own.
    assert "hello from ann" in texts(ann, "#messages .msg.own .text")

    # The keyboard alone: Escape goes back to the rooms, arrows move, Enter opens (joins).
    ann.find_element(By.ID, "message-input").send_keys(Keys.ESCAPE)
    assert ann.switch_to.active_element.get_attribute("data-room") == "general"
    ann.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    assert ann.switch_to.active_element.get_attribute("data-room") == "random"
    ann.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(ann, lambda d: d.find_element(By.ID, "message-input").is_enabled())
    assert ann.find_element(By.ID, "room-title").text == "# random"
    assert ann.switch_to.active_element.get_attribute("id") == "message-input"
    # #general, no longer open, counts what arrives.
    say(bob, "unread one")
    general = '#room-list button[data-room="general"] .badge'
    wait_for(ann, lambda d: texts(d, general) == ["1"])
    tcp.close()
    assert time.monotonic() - started < 40


def open_room(driver: WebDriver, room: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#room-list button[data-room="{room}"]').click()
    wait_for(driver, lambda d: d.find_element(By.ID, "message-input").is_enabled())


def room_names(driver: WebDriver) -> list[str]:
    # In one script: the list is redrawn as rooms come (elements go stale).
    script = "return [...document.querySelectorAll('#room-list button')].map(b => b.dataset.room);"
    names: list[str] = driver.execute_script(script)
    return names


def notice(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "notice").get_attribute("textContent") or ""


def test_create_a_room_a_direct_message_and_a_ban(drivers: dict[str, WebDriver]) -> None:
    """docs/moderation.md from the browser: /create, /dm, /ban (the page's commands)."""
    thread = ServerThread()
    try:
        thread.start(user_rooms=True)
        drivers["ann"] = ann = new_driver()
        drivers["bob"] = bob = new_driver()
        open_chat(ann, thread.url, "ann")
        open_chat(bob, thread.url, "bob")
        # ann creates a room: both lists show it; ann owns it.
        say(ann, "/create games board games")
        wait_for(ann, lambda d: "games" in room_names(d))
        wait_for(bob, lambda d: "games" in room_names(d))
        open_room(ann, "games")
        open_room(bob, "games")
        say(bob, "hello games")
        wait_for(ann, sees_message("hello games"))
        # A direct message: bob learns of it with its first message.
        say(ann, "/dm bob")
        wait_for(ann, lambda d: "dm:ann+bob" in room_names(d))
        assert "dm:ann+bob" not in room_names(bob)
        open_room(ann, "dm:ann+bob")
        say(ann, "psst, bob")
        wait_for(bob, lambda d: "dm:ann+bob" in room_names(d))
        open_room(bob, "dm:ann+bob")
        wait_for(bob, sees_message("psst, bob"))
        # A ban: bob is told why, leaves the room, and cannot join it again.
        open_room(ann, "games")
        say(ann, "/ban bob 60 spam")
        wait_for(bob, lambda d: "You were banned in #games: spam" in notice(d))
        wait_for(ann, lambda d: any("ann: ban bob (spam)" in m for m in messages(d)))
        bob.find_element(By.CSS_SELECTOR, '#room-list button[data-room="games"]').click()
        wait_for(bob, lambda d: "Error (banned)" in notice(d))
    finally:
        thread.close()
