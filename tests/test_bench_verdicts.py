"""benchmarks/run.py's verdict on a step: a figure is the server's only when the load tool
kept up (benchmarks/README.md, "How it measures")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RUN_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def step(
    *,
    p99: float = 10.0,
    lag: float = 20.0,
    tool_cpu: float = 40.0,
    processes: int = 1,
    lost: int = 0,
) -> dict[str, Any]:
    report = {
        "max_send_lag_ms": lag,
        "max_connect_lag_ms": 0.0,
        "lost": lost,
        "drained": True,
        "connected": 48,
        "users": 48,
        "processes": processes,
        "latency_ms": {"p99": p99},
    }
    return {"report": report, "tool_cpu_pct": tool_cpu}


def test_a_step_that_held(bench: ModuleType) -> None:
    assert bench.failure(step(), 50.0) is None


def test_a_tool_behind_its_schedule_is_the_tool(bench: ModuleType) -> None:
    assert bench.failure(step(lag=600.0, p99=900.0), 50.0) == "load tool saturated"


def test_loss_is_loss(bench: ModuleType) -> None:
    assert bench.failure(step(lost=3), 50.0) == "loss"


def test_a_slow_p99_with_a_saturated_tool_says_so(bench: ModuleType) -> None:
    assert bench.failure(step(p99=72.0, tool_cpu=94.8), 50.0) == (
        "p99 > 50 ms with the load tool saturated"
    )
    # Two load processes at 95 % each: 190 % over the step.
    assert bench.failure(step(p99=72.0, tool_cpu=190.0, processes=2), 50.0) == (
        "p99 > 50 ms with the load tool saturated"
    )


def test_a_slow_p99_with_a_tool_to_spare_is_the_servers(bench: ModuleType) -> None:
    assert bench.failure(step(p99=72.0, tool_cpu=60.0), 50.0) == "p99 > 50 ms"
    assert bench.failure(step(p99=72.0, tool_cpu=120.0, processes=2), 50.0) == "p99 > 50 ms"
