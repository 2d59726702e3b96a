"""``roomchat stress ramp`` (the original's load) and ``roomchat stress steady`` (for measuring)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from roomchat.client import parse_address, tls_context
from roomchat.protocol import DEFAULT_PORT
from roomchat.stress.config import (
    DEFAULT_RAMP,
    ENGINES,
    Config,
    RampConfig,
    SteadyConfig,
    parse_steps,
)
from roomchat.stress.report import report_table
from roomchat.stress.runner import StressError, run_in_processes
from roomchat.stress.stats import Progress, Tally, merge_histograms

__all__ = ["command"]

F = Callable[..., Any]


def _common(func: F) -> F:
    options = [
        click.option(
            "--addr",
            envvar="ROOMCHAT_ADDR",
            default=f"127.0.0.1:{DEFAULT_PORT}",
            show_default=True,
            help="Server to load, host:port (env ROOMCHAT_ADDR); several comma-separated "
            "(instances sharing rooms through Redis) split the users evenly. Nothing else "
            "is contacted.",
        ),
        click.option("--tls", is_flag=True, help="Connect with TLS (system CAs unless --tls-ca)."),
        click.option(
            "--tls-ca",
            default=None,
            type=click.Path(dir_okay=False),
            help="PEM file of the CA(s) to trust (implies --tls).",
        ),
        click.option("--rooms", default=24, show_default=True, help="How many rooms to use."),
        click.option("--rooms-per-user", default=5, show_default=True, help="Rooms each joins."),
        click.option("--payload", default=64, show_default=True, help="Bytes of content."),
        click.option(
            "--processes", default=1, show_default=True, help="Worker processes to spread users."
        ),
        click.option(
            "--connect-timeout", default=10.0, show_default=True, help="Seconds per connection."
        ),
        click.option(
            "--connect-batch",
            default=500,
            show_default=True,
            help="Connections opened at once (steady, without --connect-rate).",
        ),
        click.option(
            "--join-bound",
            default=1.0,
            show_default=True,
            help="Joining kept up if every user had all its rooms confirmed within this many "
            "seconds of starting to connect.",
        ),
        click.option(
            "--settle-timeout",
            default=60.0,
            show_default=True,
            help="Steady: seconds to wait for the join announcements to pass before sending.",
        ),
        click.option(
            "--drain-timeout",
            default=10.0,
            show_default=True,
            help="Seconds to wait for deliveries after the last send.",
        ),
        click.option(
            "--grace",
            default=30.0,
            show_default=True,
            help="Seconds a phase may overrun its plan before the run is abandoned.",
        ),
        click.option(
            "--v2",
            is_flag=True,
            help="Speak protocol v2 (hello/welcome; errors counted by code). A server without "
            "v2 leaves the sessions in v1 after a 1 s wait, and the report says so.",
        ),
        click.option(
            "--name-prefix",
            default=None,
            metavar="P",
            help="With --v2: users take the names P0, P1, ... (default: random ids).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON line, no table."),
        click.option("--quiet", is_flag=True, help="No live progress."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _base(kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        addrs = [parse_address(part) for part in kwargs.pop("addr").split(",")]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--addr") from None
    (host, port), *more = addrs
    tls, tls_ca = kwargs.pop("tls"), kwargs.pop("tls_ca")
    if tls_ca is not None:
        try:
            tls_context(tls_ca)  # fail here, with one line, rather than in every worker
        except OSError as exc:
            raise click.BadParameter(f"{tls_ca}: {exc}", param_hint="--tls-ca") from None
    return {"host": host, "port": port, "more_addrs": tuple(more), "tls": tls_ca or tls, **kwargs}


class _Live:
    """Live progress on stderr: a redrawn line on a terminal, a line every 2 s otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live: Live | None = None
        self.started = time.monotonic()
        self.previous: tuple[float, int, int] = (self.started, 0, 0)
        self.printed = 0.0

    def __enter__(self) -> _Live:
        if not self.quiet and self.console.is_terminal:
            self.live = Live(Text("starting..."), console=self.console, refresh_per_second=4)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, progress: list[Progress]) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        tally = Tally()
        for p in progress:
            tally.add(p.tally)
        then, sent, delivered = self.previous
        if now - then < 0.4:
            return
        self.previous = (now, tally.sent, tally.delivered_all)
        interval = merge_histograms([p.interval_histogram for p in progress])
        p99 = int(interval.get_value_at_percentile(99)) / 1000
        phases = ",".join(sorted({p.phase for p in progress}))
        joined = f"{tally.users_joined:,} joined"
        line = (
            f"[{now - self.started:6.1f} s] {phases}: users {tally.connected:,} "
            f"(failed {tally.failed:,}, {joined}), joins {tally.joined:,}, "
            f"sent {(tally.sent - sent) / (now - then):,.0f}/s, "
            f"delivered {(tally.delivered_all - delivered) / (now - then):,.0f}/s, "
            f"p99 {p99:g} ms, errors {tally.protocol_errors}"
        )
        if tally.errors_by_code:
            line += f", v2 errors {sum(tally.errors_by_code.values()):,}"
        if tally.skipped:  # the tool cannot keep to its schedule: say so as it happens
            line += f", BEHIND SCHEDULE: {tally.skipped:,} skipped"
        if self.live is not None:
            self.live.update(Text(line))
        elif now - self.printed >= 2:
            self.printed = now
            self.console.print(line, highlight=False, soft_wrap=True)


def _execute(cfg: Config, as_json: bool, quiet: bool) -> None:
    try:
        with _Live(quiet) as live:
            # Even one worker runs in its own process, so that this one can end the run
            # at its deadline whatever the load does to the worker's event loop.
            report = run_in_processes(cfg, live.update)
    except StressError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        sys.stdout.write(report.to_json().decode() + "\n")
    else:
        Console().print(report_table(report))
    if report.connected == 0:
        raise click.ClickException(f"no user could connect to {report.addr}")


@click.group(name="stress")
def command() -> None:
    """Load-test a protocol v1 (or, with --v2, v2) server and report throughput, loss
    and latency.

    Every run stops by itself: steady after warm-up + duration + drain, ramp after its
    load increments + drain.
    """


@command.command()
@_common
@click.option("--users", default=48, show_default=True, help="Users (one session each).")
@click.option("--rate", default=1.0, show_default=True, help="Messages/s per user, spread evenly.")
@click.option("--duration", default=10.0, show_default=True, help="Measured seconds.")
@click.option("--warmup", default=2.0, show_default=True, help="Seconds of load before measuring.")
@click.option(
    "--check-every",
    default=1,
    show_default=True,
    help="One user in N checks every delivery it gets (order, duplicates, latency); the "
    "others count theirs in bulk, undecoded, so the tool keeps up with millions of "
    "deliveries/s. Loss is always counted over every user.",
)
@click.option(
    "--connect-rate",
    default=0.0,
    show_default=True,
    help="Users arriving per second, spread evenly, each joining its rooms right after "
    "login (a reconnect wave); the report says how long joining took and whether it "
    "kept up. 0: connect in batches of --connect-batch.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="asyncio",
    show_default=True,
    help="asyncio: users run on the client library, each delivery a callback (checked, or "
    "counted with --check-every). epoll: once joined, a process's users are raw sockets in "
    "one epoll loop writing pre-built batches and counting deliveries undecoded, latency "
    "sampled; several times the deliveries/s per core (plain-TCP v1, batch connecting).",
)
def steady(as_json: bool, quiet: bool, **kwargs: Any) -> None:
    """Everyone connects and joins (in batches, or arriving at --connect-rate), then all
    send at a fixed rate: for measuring."""
    try:
        cfg = SteadyConfig(**_base(kwargs))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _execute(cfg, as_json, quiet)


@command.command()
@_common
@click.option(
    "--steps",
    default=DEFAULT_RAMP,
    show_default=True,
    help="Load increments users/after-seconds/steps, comma separated.",
)
@click.option("--delay", default=10.0, show_default=True, help="Seconds between a user's sends.")
def ramp(as_json: bool, quiet: bool, steps: str, **kwargs: Any) -> None:
    """The original's stress test: users arrive in load increments, each joins 5 rooms
    (round-robin) and sends one message every --delay seconds to its rooms in turn."""
    try:
        cfg = RampConfig(steps=parse_steps(steps), **_base(kwargs))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _execute(cfg, as_json, quiet)
