"""The load-test tool: ``roomchat stress`` (see :mod:`roomchat.stress.cli`).

In-process use (tests, benchmarks)::

    report = await run_in_process(SteadyConfig(port=port, users=48, rate=10, duration=2))
"""

from __future__ import annotations

from roomchat.stress.config import LoadStep, RampConfig, SteadyConfig, parse_steps
from roomchat.stress.report import Latency, Report
from roomchat.stress.runner import StressError, run_in_process, run_in_processes

__all__ = [
    "Latency",
    "LoadStep",
    "RampConfig",
    "Report",
    "SteadyConfig",
    "StressError",
    "parse_steps",
    "run_in_process",
    "run_in_processes",
]
