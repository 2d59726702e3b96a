"""``roomchat serve`` instances as real subprocesses, with their log lines at hand.

Each instance's stderr is read continuously (so the pipe never fills) into a list of
lines; a test waits for the line it expects with :meth:`Instance.wait_for_log`, never a
fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator

from roomchat.client import ChatClient, connect

TIMEOUT = 20.0
LISTENING = re.compile(r"listening on [^ ]*?:(\d+) with (\d+) rooms")


async def spawn_serve(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """``roomchat serve --host 127.0.0.1 --port 0 ARGS`` as a subprocess, its stderr piped
    (the caller reads it: that is where the listening line and the logs go)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomchat",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


class Instance:
    """One ``roomchat serve`` process on 127.0.0.1, port 0."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.port = 0
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> Instance:
        instance = cls(await spawn_serve(*args))
        try:
            match = await instance.wait_for_log(LISTENING.pattern)
        except BaseException:
            await instance.stop(kill=True)
            raise
        instance.port = int(match.group(1))
        return instance

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while True:
            line = await self.process.stderr.readline()
            async with self._changed:
                if line:
                    self.lines.append(line.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
            if not line:
                return

    async def wait_for_log(
        self, pattern: str, *, after: int = 0, timeout: float = TIMEOUT
    ) -> re.Match[str]:
        """The first log line from index ``after`` on that matches ``pattern``."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for line in self.lines[after:]:
                    if match := regex.search(line):
                        return match
                if self._reader.done():
                    raise AssertionError(
                        f"instance exited without logging {pattern!r}:\n" + "\n".join(self.lines)
                    )
                await self._changed.wait()

    async def client(self) -> ChatClient:
        return await connect("127.0.0.1", self.port, timeout=TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: the instance dies without cleaning anything up."""
        self.process.send_signal(signal.SIGKILL)

    async def stop(self, *, kill: bool = False) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            status = await self.process.wait()
            with contextlib.suppress(Exception):
                await self._reader
        return status


@contextlib.asynccontextmanager
async def instances(count: int, *args: str) -> AsyncIterator[list[Instance]]:
    """``count`` instances started with the same arguments, stopped at the end."""
    started: list[Instance] = []
    try:
        for _ in range(count):
            started.append(await Instance.start(*args))
        yield started
    finally:
        for instance in started:
            await instance.stop(kill=True)
