"""``roomchat serve`` run as a user runs it (a real subprocess): shared by the tests of
the command line, logs, TLS and workers."""

from __future__ import annotations

import asyncio
import re
import sys
from dataclasses import dataclass

from tests.instances import spawn_serve

__all__ = ["LISTENING", "TIMEOUT", "Served", "assert_one_clean_line", "run_roomchat", "start_serve"]

TIMEOUT = 20.0
LISTENING = re.compile(rb"listening on [^ ]*?:(\d+) with (\d+) rooms")


@dataclass
class Served:
    process: asyncio.subprocess.Process
    port: int
    rooms: int


async def run_roomchat(*args: str) -> tuple[int, str]:
    """Run ``roomchat ARGS`` to completion; return its exit status and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomchat",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT):
        _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def start_serve(*args: str) -> Served:
    process = await spawn_serve(*args)
    assert process.stderr is not None
    async with asyncio.timeout(TIMEOUT):
        while True:
            line = await process.stderr.readline()
            assert line, "server exited before listening"
            match = LISTENING.search(line)
            if match:
                return Served(process, int(match.group(1)), int(match.group(2)))


def assert_one_clean_line(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("roomchat: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
