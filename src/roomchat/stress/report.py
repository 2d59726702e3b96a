"""The outcome of a run: one Report built from every worker's result, as JSON or a table."""

from __future__ import annotations

import msgspec
from hdrh.histogram import HdrHistogram
from rich.table import Table

from roomchat.stress.config import Config
from roomchat.stress.stats import Tally, WorkerResult, merge_histograms

__all__ = ["CPU_SATURATED_PCT", "Latency", "Report", "build_report", "report_table"]

_LAG_NOTE_US = 50_000  # a sender this far behind its schedule is saturated
_STALL_NOTE_US = 50_000  # a loop stopped this long delayed its users' reads: saturated
#: The epoll engine sleeps when it has nothing to do, so a process this busy (share of
#: one core over the load) has no headroom left: its figures are its own limit.
CPU_SATURATED_PCT = 90.0


class Latency(msgspec.Struct, frozen=True):
    """Percentiles in milliseconds: of delivery latency (send stamp to arrival at a
    member), or of join time (a user's connecting to its last room confirmed)."""

    samples: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


class Report(msgspec.Struct, frozen=True):
    mode: str
    addr: str
    processes: int
    users: int
    rooms: int
    rooms_per_user: int
    rate: float  # messages per second per user (ramp: 1 / delay)
    payload: int
    check_every: int  # 1 user in N checked each delivery; the others counted in bulk
    warmup_s: float
    window_s: float  # the measured window
    connected: int
    failed: int
    joins_confirmed: int
    disconnected: int
    messages_sent: int  # in the window
    messages_per_s: float
    deliveries: int  # measured, each counted once
    deliveries_per_s: float  # over the window, or until the last delivery if that is later
    delivery_span_s: float  # from the window's start to the last measured delivery
    deliveries_expected: int
    lost: int
    duplicated: int
    out_of_order: int
    unexpected: int
    protocol_errors: int
    send_failed: int
    #: Scheduled messages the tool did not send (warm-up or window): it fell more than
    #: 1 s behind them (schedule.BACKLOG_NS), or the window ended.
    skipped: int
    #: Messages due in the measured window, sent or not: messages_sent of them went out.
    messages_scheduled: int
    max_send_lag_ms: float  # how late the oldest overdue message was (sent or skipped)
    #: The longest turn of the tool's event loop while the load ran and drained (beyond a
    #: 10 ms timer): how long a delivery may have waited to be read.
    max_loop_stall_ms: float
    #: The tool did not keep to its schedule (it skipped messages or fell more than 50 ms
    #: behind) or its loop stalled over 50 ms: the figures are the tool's limit.
    load_tool_saturated: bool
    drained: bool
    latency_ms: Latency
    # Joining (every mode; the point of --connect-rate). A user is joined when its own
    # user_joined_room has arrived for each of its rooms.
    connect_rate: float  # users/s arriving, spread evenly; 0: connected in batches
    max_connect_lag_ms: float  # how late the tool started an arrival's connection
    users_joined: int  # users with every room confirmed
    join_s: float  # from the first user's connecting to the last user's last confirmation
    join_time_ms: Latency  # per user: from its connecting to its last room confirmed
    login_time_ms: Latency  # ... of which: from its connecting to its login_successful
    join_bound_s: float
    users_joined_late: int  # users whose join time exceeded join_bound_s
    #: Joining kept up with arrivals: every user had all its rooms confirmed, each within
    #: join_bound_s of starting to connect (so no backlog of joins built up).
    joins_kept_up: bool
    # The run's clock (time.monotonic_ns(), machine-wide): load start, measured window.
    start_ns: int
    window_start_ns: int
    window_end_ns: int
    join_start_ns: int  # first connect (0: nobody connected)
    join_end_ns: int  # last user's last join confirmation (0: nobody joined)
    rooms_used: list[str]
    notes: list[str]
    # Protocol v2 (--v2). protocol_version: what the connected sessions speak (2 only if
    # every one of them got a welcome; 0: nobody connected).
    protocol_version: int = 1
    names: str | None = None  # the users' names: "<prefix>0", ... (None: random ids)
    #: v2 ``error`` events received, by code (refused hellos included).
    errors_by_code: dict[str, int] = msgspec.field(default_factory=dict)
    #: How the users ran: "asyncio" (the client library) or "epoll" (raw sockets,
    #: pre-built batches, deliveries counted undecoded; roomchat.stress.rawload).
    engine: str = "asyncio"
    #: The load tool's own CPU while the load ran and drained, in % of one core per
    #: process (averaged over processes); None when not measured (in-process runs of the
    #: asyncio engine share their process). The epoll engine is saturated from 90 %.
    load_tool_cpu_pct: float | None = None
    #: epoll engine: messages not written because the server had stopped reading those
    #: users (16 MB queued behind each): the server's limit, not the tool's.
    send_blocked: int = 0

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


def build_report(cfg: Config, results: list[WorkerResult], notes: list[str], t0: int) -> Report:
    """Add up the workers' results of a run whose load started at ``t0``."""
    tally = Tally()
    for result in results:
        tally.add(result.tally)
    expected = sum(r.expected for r in results)
    histogram = merge_histograms([r.histogram for r in results])
    join_histogram = merge_histograms([r.join_histogram for r in results])
    warmup, window = float(cfg.warmup), float(cfg.duration)
    all_notes = list(notes)
    engine = cfg.engine
    check_every = 0 if engine == "epoll" else cfg.check_every
    measured = [r for r in results if r.wall_s > 0]
    cpu_pct = (
        round(sum(100 * r.cpu_s / r.wall_s for r in measured) / len(measured), 1)
        if measured
        else None
    )
    if engine == "epoll":
        all_notes.append(
            "epoll engine: every user counted its deliveries undecoded (user_message tags),"
            " warm-up included, so 'lost' counts any missing delivery and a surplus shows as"
            " duplicated; order is not checked; latency is sampled"
            f" ({int(histogram.get_total_count()):,} stamped deliveries: one message per user"
            " per 10 ms carries its send time)"
        )
    if check_every > 1:
        all_notes.append(
            f"1 user in {check_every} checked each delivery (latency, order, duplicates:"
            f" {int(histogram.get_total_count()):,} samples); the others counted theirs in"
            " bulk, so loss is over every user but their duplicates only show as a surplus"
        )
    if tally.delivered > expected:
        all_notes.append(f"{tally.delivered - expected} more deliveries than expected")
    scheduled = tally.scheduled_measured
    if tally.skipped:
        share = 100 * tally.sent_measured / scheduled if scheduled else 0.0
        all_notes.append(
            f"the load tool could not keep to its schedule: it sent {tally.sent_measured:,}"
            f" of the {scheduled:,} messages due in the window ({share:.1f} %),"
            f" {tally.sent_measured / window:,.0f}/s of {scheduled / window:,.0f}/s asked;"
            f" {tally.skipped:,} skipped in all (over 1 s overdue), up to"
            f" {tally.max_send_lag_us / 1000:,.0f} ms behind: the rates are the tool's limit,"
            " not the server's (add --processes, on more CPUs)"
        )
    elif tally.max_send_lag_us > _LAG_NOTE_US:
        all_notes.append(
            f"the load tool fell up to {tally.max_send_lag_us / 1000:,.0f} ms behind its schedule:"
            " it sent less than asked, so the rates are the tool's limit, not the server's"
            " (add --processes, on more CPUs)"
        )
    if tally.max_loop_stall_us > _STALL_NOTE_US:
        all_notes.append(
            f"the load tool's event loop took up to {tally.max_loop_stall_us / 1000:,.0f} ms"
            " over one turn while the load ran (reading or sending): a delivery could wait"
            " that long to be read, so latency (and any session the server cut as a slow"
            " consumer) includes the tool's own delay"
        )
    cpu_bound = engine == "epoll" and cpu_pct is not None and cpu_pct >= CPU_SATURATED_PCT
    if cpu_bound:
        all_notes.append(
            f"the load tool used {cpu_pct:g} % of its core while the load ran: it has no"
            " headroom left, so its figures (rates, latency) are its own limit, not the"
            " server's"
        )
    if tally.send_blocked:
        all_notes.append(
            f"{tally.send_blocked:,} messages were not sent because the server had stopped"
            " reading those users (16 MB already queued behind each): the server's limit"
        )
    saturated = (
        tally.skipped > 0
        or tally.max_send_lag_us > _LAG_NOTE_US
        or tally.max_loop_stall_us > _STALL_NOTE_US
        or cpu_bound
    )
    if not all(r.drained for r in results):
        all_notes.append(
            f"deliveries were still arriving when the {cfg.drain_timeout:g} s drain timeout"
            " ended: 'lost' counts them (a saturated load tool reads too slowly to tell)"
        )
    if tally.joined < tally.connected * cfg.rooms_per_user:
        all_notes.append(
            f"only {tally.joined} of {tally.connected * cfg.rooms_per_user} joins confirmed"
        )
    kept_up = tally.users_joined == cfg.users and tally.users_joined_late == 0
    if tally.users_joined_late:
        all_notes.append(
            f"{tally.users_joined_late:,} users took longer than {cfg.join_bound:g} s from"
            " connecting to their last join confirmation: joining did not keep up"
        )
    if tally.max_connect_lag_us > _LAG_NOTE_US:
        all_notes.append(
            f"the load tool started connections up to {tally.max_connect_lag_us / 1000:,.0f} ms"
            " late: users arrived slower than asked"
        )
    join_end = tally.last_join_ns if tally.users_joined else 0

    window_start = t0 + int(warmup * 1e9)
    span = max(0.0, (tally.last_delivery_ns - window_start) / 1e9) if tally.delivered else 0.0

    rooms_used = next((r.rooms_used for r in results if r.rooms_used), [])
    if not tally.connected:
        version = 0
    elif tally.sessions_v2 == tally.connected:
        version = 2
    else:
        version = 1
        if cfg.v2:
            all_notes.append(
                f"{tally.connected - tally.sessions_v2:,} of {tally.connected:,} sessions got no"
                " welcome and stayed in v1 (the server has no v2?)"
                + ("" if tally.sessions_v2 == 0 else f"; {tally.sessions_v2:,} speak v2")
            )
    return Report(
        mode=cfg.mode,
        addr=cfg.addr,
        processes=cfg.processes,
        users=cfg.users,
        rooms=cfg.rooms,
        rooms_per_user=cfg.rooms_per_user,
        rate=float(cfg.message_rate),
        payload=cfg.payload,
        check_every=check_every,
        warmup_s=warmup,
        window_s=window,
        connected=tally.connected,
        failed=tally.failed,
        joins_confirmed=tally.joined,
        disconnected=tally.disconnected,
        messages_sent=tally.sent_measured,
        messages_per_s=round(tally.sent_measured / window, 1),
        deliveries=tally.delivered,
        deliveries_per_s=round(tally.delivered / max(window, span), 1),
        delivery_span_s=round(span, 3),
        deliveries_expected=expected,
        lost=max(0, expected - tally.delivered),
        duplicated=tally.duplicated,
        out_of_order=tally.out_of_order,
        unexpected=tally.unexpected,
        protocol_errors=tally.protocol_errors,
        send_failed=tally.send_failed,
        skipped=tally.skipped,
        messages_scheduled=scheduled,
        max_send_lag_ms=tally.max_send_lag_us / 1000,
        max_loop_stall_ms=tally.max_loop_stall_us / 1000,
        load_tool_saturated=saturated,
        drained=all(r.drained for r in results),
        latency_ms=_percentiles(histogram),
        connect_rate=float(cfg.connect_rate),
        max_connect_lag_ms=tally.max_connect_lag_us / 1000,
        users_joined=tally.users_joined,
        join_s=round((join_end - tally.first_connect_ns) / 1e9, 3) if join_end else 0.0,
        join_time_ms=_percentiles(join_histogram),
        login_time_ms=_percentiles(merge_histograms([r.login_histogram for r in results])),
        join_bound_s=float(cfg.join_bound),
        users_joined_late=tally.users_joined_late,
        joins_kept_up=kept_up,
        start_ns=t0,
        window_start_ns=window_start,
        window_end_ns=t0 + int((warmup + window) * 1e9),
        join_start_ns=tally.first_connect_ns,
        join_end_ns=join_end,
        rooms_used=rooms_used,
        notes=all_notes,
        protocol_version=version,
        names=None if cfg.name_prefix is None else f"{cfg.name_prefix}0, {cfg.name_prefix}1, ...",
        errors_by_code=dict(sorted(tally.errors_by_code.items())),
        engine=engine,
        load_tool_cpu_pct=cpu_pct,
        send_blocked=tally.send_blocked,
    )


def _percentiles(histogram: HdrHistogram) -> Latency:
    """A histogram of microseconds as milliseconds."""

    def ms(percentile: float) -> float:
        return round(int(histogram.get_value_at_percentile(percentile)) / 1000, 3)

    return Latency(
        int(histogram.get_total_count()),
        ms(50),
        ms(90),
        ms(99),
        ms(99.9),
        round(int(histogram.get_max_value()) / 1000, 3),
    )


def report_table(report: Report) -> Table:
    """The final table, for a terminal."""
    table = Table(title=f"roomchat stress ({report.mode}) against {report.addr}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    lat, join, login = report.latency_ms, report.join_time_ms, report.login_time_ms
    arrivals = (
        f"{report.connect_rate:g} users/s, up to {report.max_connect_lag_ms:g} ms late"
        if report.connect_rate
        else "in batches"
        if report.mode == "steady"
        else "in load increments"
    )
    lost_pct = 100 * report.lost / report.deliveries_expected if report.deliveries_expected else 0
    errors = ", ".join(f"{code} {count:,}" for code, count in report.errors_by_code.items())
    rows = [
        (
            "protocol version",
            f"v{report.protocol_version}" + (f", names {report.names}" if report.names else ""),
        ),
        ("users connected / failed", f"{report.connected:,} / {report.failed:,}"),
        ("rooms used / per user", f"{report.rooms} / {report.rooms_per_user}"),
        ("rate per user", f"{report.rate:g} msg/s, {report.payload} B content"),
        ("engine", report.engine),
        (
            "users checking each delivery",
            f"1 in {report.check_every}" if report.check_every else "none (counted)",
        ),
        ("users arriving", arrivals),
        ("users joined all their rooms", f"{report.users_joined:,} of {report.users:,}"),
        ("joining took (first connect to last join)", f"{report.join_s:g} s"),
        ("join time per user p50 / p99 / max", f"{join.p50:g} / {join.p99:g} / {join.max:g} ms"),
        (
            "... of which to login p50 / p99 / max",
            f"{login.p50:g} / {login.p99:g} / {login.max:g} ms",
        ),
        (
            f"joins kept up (each within {report.join_bound_s:g} s)",
            f"{'yes' if report.joins_kept_up else 'no'} ({report.users_joined_late:,} late)",
        ),
        ("measured window", f"{report.window_s:g} s (after {report.warmup_s:g} s warm-up)"),
        ("messages sent", f"{report.messages_sent:,} ({report.messages_per_s:,.0f}/s)"),
        ("... of those due in the window", f"{report.messages_scheduled:,}"),
        ("behind schedule, not sent", f"{report.skipped:,}"),
        (
            "deliveries",
            f"{report.deliveries:,} ({report.deliveries_per_s:,.0f}/s over "
            f"{max(report.window_s, report.delivery_span_s):g} s)",
        ),
        ("deliveries expected", f"{report.deliveries_expected:,}"),
        ("lost", f"{report.lost:,} ({lost_pct:.2f} %)"),
        ("duplicated / out of order", f"{report.duplicated:,} / {report.out_of_order:,}"),
        ("unexpected / protocol errors", f"{report.unexpected:,} / {report.protocol_errors:,}"),
        ("errors received by code (v2)", errors or "none"),
        ("sessions closed by server", f"{report.disconnected:,}"),
        ("latency p50 / p90 / p99", f"{lat.p50:g} / {lat.p90:g} / {lat.p99:g} ms"),
        ("latency p99.9 / max", f"{lat.p999:g} / {lat.max:g} ms"),
        ("load tool max send lag", f"{report.max_send_lag_ms:g} ms"),
        ("load tool max loop stall", f"{report.max_loop_stall_ms:g} ms"),
        (
            "load tool CPU (of one core, per process)",
            "not measured"
            if report.load_tool_cpu_pct is None
            else f"{report.load_tool_cpu_pct:g} %",
        ),
        ("not sent: the server stopped reading", f"{report.send_blocked:,}"),
        (
            "load tool kept up",
            "no: the figures are the tool's limit" if report.load_tool_saturated else "yes",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    for note in report.notes:
        table.add_row("note", note)
    return table
