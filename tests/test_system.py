"""roomchat.system: the open-files limit (raised for real in a subprocess) and the loop."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys

import pytest

from roomchat import system

# In a fresh interpreter: lower the soft limit to 32, ask for 200, report the limits.
_LOWERED = """
import json, resource
from roomchat import system
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))
before = resource.getrlimit(resource.RLIMIT_NOFILE)
sentence = system.raise_open_files(200)
after = resource.getrlimit(resource.RLIMIT_NOFILE)
to_hard = system.raise_open_files()
print(json.dumps([before, sentence, after, to_hard, resource.getrlimit(resource.RLIMIT_NOFILE),
                  system.open_files_limit()]))
"""


def test_a_lowered_limit_is_raised_for_real() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or hard >= 200, "this host's hard limit is tiny"
    done = subprocess.run(
        [sys.executable, "-c", _LOWERED], capture_output=True, text=True, timeout=60, check=True
    )
    before, sentence, after, to_hard, final, said = json.loads(done.stdout)
    assert before == [32, hard]
    assert (sentence, after) == (None, [200, hard])  # raised to what was asked
    if hard != resource.RLIM_INFINITY:  # Linux refuses an unlimited soft limit
        assert (to_hard, final) == (None, [hard, hard])  # no number: soft raised to hard
        assert said == hard


def test_the_limit_is_raised_up_to_the_hard_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 20_000))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
    assert system.raise_open_files(10_000) is None
    assert system.raise_open_files() is None
    assert system.raise_open_files(100) is None  # enough already: nothing set
    assert calls == [(10_000, 20_000), (20_000, 20_000)]


def test_a_shortfall_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def refuse(_: int, limits: tuple[int, int]) -> None:
        calls.append(limits)
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    message = system.raise_open_files(10_000)
    assert message == (
        "the open-files limit is 1024 (hard 4096) but 10000 are needed and it cannot be raised here"
    )
    assert calls == [(10_000, 10_000)]  # it tried to raise the hard limit too
    message = system.raise_open_files()
    assert message == "cannot raise the open-files limit from 1024 to 4096: not allowed"
    assert system.open_files_limit() == 1024


def test_unlimited_needs_no_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    unlimited = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda _: (unlimited, unlimited))
    monkeypatch.setattr(resource, "setrlimit", lambda *_: pytest.fail("nothing to raise"))
    assert system.raise_open_files(10**9) is None
    assert system.raise_open_files() is None
    assert system.open_files_limit() is None


def test_run_runs_a_coroutine_on_uvloop() -> None:
    async def loop_name() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    assert system.run(loop_name()).startswith("uvloop")
