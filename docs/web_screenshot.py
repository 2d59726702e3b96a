"""Regenerate docs/web.png (a chat with a few messages) and docs/web-connect.png (the
connect page) with headless Chromium (Debian's chromium + chromium-driver).

    .venv/bin/python docs/web_screenshot.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from roomchat.client import ChatClient, connect  # noqa: E402
from tests.browser import ServerThread, new_driver  # noqa: E402


async def tcp_user(port: int, name: str) -> ChatClient:
    client = await connect("127.0.0.1", port, v2=True, name=name)
    await client.join("general")
    return client


def main() -> None:
    server = ServerThread()
    driver = new_driver(1280, 760)
    try:
        chat = server.start()
        driver.get(server.url)
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "connect-button"))
        driver.find_element(By.ID, "name-input").send_keys("Ada")
        time.sleep(0.3)
        driver.save_screenshot(str(ROOT / "docs" / "web-connect.png"))
        others = [server.call(tcp_user(chat.port, name)) for name in ("grace", "linus")]
        server.call(others[1].send("general", "quiet morning so far"))  # history on join
        driver.find_element(By.ID, "connect-button").click()
        WebDriverWait(driver, 10).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#room-list button")
        )
        for room in ("python", "rust"):
            server.call(others[0].join(room))
        for room in ("python", "general"):  # in two rooms: #python collects unread messages
            driver.find_element(By.CSS_SELECTOR, f'#room-list button[data-room="{room}"]').click()
            time.sleep(0.2)
        WebDriverWait(driver, 10).until(
            lambda d: d.find_element(By.ID, "message-input").is_enabled()
        )
        box = driver.find_element(By.ID, "message-input")
        server.call(others[0].send("general", "morning all! anyone tried the new web client?"))
        time.sleep(0.2)
        box.send_keys("I'm on it right now, from the browser", Keys.ENTER)
        time.sleep(0.2)
        server.call(others[1].send("general", "and I'm in the terminal UI: same room"))
        time.sleep(0.2)
        server.call(others[0].send("general", "<b>markup</b> stays text, as it should"))
        server.call(others[0].send("python", "asyncio question when you have a minute"))
        server.call(others[0].send("python", "never mind, found it"))
        server.call(others[0].send("rust", "tokio 2 is out"))
        time.sleep(0.2)
        box.send_keys("nice, no build step either")
        time.sleep(0.3)
        driver.save_screenshot(str(ROOT / "docs" / "web.png"))
        for other in others:
            other.close()
    finally:
        driver.quit()
        server.close()


if __name__ == "__main__":
    main()
