"""`make bench`: run roomchat's standard load scenarios and write a report.

Starts `roomchat serve` pinned to one CPU (taskset), drives `roomchat stress steady`
from the other CPU(s), reads the server's CPU time and RSS from /proc, and writes
benchmarks/results/latest.json and latest.md. A fresh server is started for each step.

    .venv/bin/python benchmarks/run.py                 # every scenario (~10 minutes)
    .venv/bin/python benchmarks/run.py --quick         # shorter windows, fewer steps
    .venv/bin/python benchmarks/run.py --only seed,ceiling
    .venv/bin/python benchmarks/run.py --quick --only joinstorm
    .venv/bin/python benchmarks/run.py --store memory://   # the message store off

Each server keeps its messages in its own SQLite file in a temporary directory (the
default store of `roomchat serve`), removed when it stops; --store URL gives another.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SCENARIOS = (
    "seed",
    "limit",
    "ceiling",
    "bigroom",
    "manyusers",
    "joinstorm",
    "scaleout",
    "websocket",
)
P99_LIMIT_MS = 50.0
TOOL_LAG_LIMIT_MS = 250.0  # a load tool further behind its schedule measures itself
# A load tool busier than this (share of its CPUs over the step) delays its own reads and
# timestamps: a p99 over the bound is then the tool's as much as the server's.
TOOL_CPU_LIMIT_PCT = 90.0

# -- the server, and what /proc says about it ------------------------------------------------


def raise_own_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    if cpus is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", cpus, *argv]


def proc_cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Sampler(threading.Thread):
    """Samples processes' CPU seconds and RSS every 20 ms, stamped with monotonic_ns.

    ``pids`` is asked for the processes at each sample (a server with --workers has a
    parent and workers; several instances are several processes): their figures add up.
    """

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[int, float, float, int]] = []
        self.stopped = threading.Event()

    def sample(self) -> tuple[float, float, int]:
        user = system = 0.0
        rss = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                u, s = proc_cpu_seconds(pid)
                rss += proc_rss_bytes(pid)
                user, system = user + u, system + s
        return user, system, rss

    def run(self) -> None:
        while not self.stopped.is_set():
            user, system, rss = self.sample()
            self.samples.append((time.monotonic_ns(), user, system, rss))
            self.stopped.wait(0.02)

    def at(self, t_ns: int) -> tuple[float, float, int]:
        """User and system CPU seconds (interpolated), RSS (last sample before) at t_ns."""
        before = [s for s in self.samples if s[0] <= t_ns] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= t_ns] or self.samples[-1:]
        (t1, u1, s1, r1), (t2, u2, s2, _) = before[-1], after[0]
        share = 0.0 if t2 == t1 else (t_ns - t1) / (t2 - t1)
        return u1 + (u2 - u1) * share, s1 + (s2 - s1) * share, r1


def children(pid: int) -> list[int]:
    """A process's child processes (a --workers parent's workers)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    return found


class RedisProc:
    """A redis-server of the bench's own on a free port (pinned with the load)."""

    def __init__(self, cpus: str | None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run scripts/ensure-redis")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="roomchat-bench-redis-")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", self.dir]
        self.proc = subprocess.Popen(
            pinned(cpus, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


#: The servers' --store: "sqlite" is each server's own file in a temporary directory.
STORE = "sqlite"


@dataclass
class Server:
    cpus: str | None
    extra: list[str] = field(default_factory=list)  # more `roomchat serve` flags
    argv: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    addr: str = ""
    log: Path | None = None
    data: str | None = None  # the SQLite store's directory

    def command(self) -> list[str]:
        argv = [str(BIN / "roomchat"), "serve", "--host", "127.0.0.1", "--port", "0"]
        if STORE == "sqlite":
            self.data = tempfile.mkdtemp(prefix="roomchat-bench-data-")
            argv += ["--data-dir", self.data]
        else:
            argv += ["--store", STORE]
        # --flood-rate 0: the load scenarios send far above the default flood limit (up
        # to 10,000 messages/s on one connection); they measure the server, not the limit.
        return [*argv, "--log-level", "info", "--flood-rate", "0", *self.extra]

    def start(self) -> None:
        self.argv = self.command()
        fd, name = tempfile.mkstemp(prefix="roomchat-serve-", suffix=".log")
        self.log = Path(name)
        self.proc = subprocess.Popen(
            pinned(self.cpus, self.argv),
            stdout=subprocess.DEVNULL,
            stderr=fd,
            preexec_fn=raise_own_open_files,
        )
        os.close(fd)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if match := re.search(r"listening on (\S+:\d+)", self.log.read_text()):
                self.addr = match.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"roomchat serve did not start:\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> str:
        """Stop the server; return its log lines that are warnings or errors (a few)."""
        assert self.proc is not None and self.log is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        lines = [ln for ln in self.log.read_text().splitlines() if " INFO " not in ln]
        self.log.unlink()
        if self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)
        return "\n".join(lines[:5]) + (f"\n... {len(lines) - 5} more" if len(lines) > 5 else "")


LIMIT_SOURCE = ROOT / "benchmarks" / "limit" / "limit.c"


def limit_binary() -> Path | None:
    """benchmarks/limit/limit.c, built once into the virtual environment with the
    system's C compiler (None without one: the limit is then not measured)."""
    out = BIN.parent / "limit" / "limit"
    if out.exists() and out.stat().st_mtime >= LIMIT_SOURCE.stat().st_mtime:
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out.parent.mkdir(exist_ok=True)
    subprocess.run([cc, "-O2", "-o", str(out), str(LIMIT_SOURCE)], check=True)
    return out


@dataclass
class LimitServer(Server):
    """The limit (benchmarks/limit/limit.c): a minimal single-threaded C server doing one
    write per session per loop turn, in roomchat's place, to measure this machine's best
    against the same load. Its rooms are room-0 .. room-255 (no room file)."""

    def command(self) -> list[str]:
        binary = limit_binary()
        assert binary is not None, "no C compiler: the limit cannot be built"
        return [str(binary), "--port", "0", "--rooms", "256"]


@dataclass
class MirrorServer(Server):
    """roomchat.stress.mirror in roomchat's place: a stand-in doing the least a v1 server
    does for the small-room load, per read rather than per message, so that it costs less
    than the load tool: a step against it measures the tool's own ceiling."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "roomchat.stress.mirror", "--port", "0", "--rooms", "24"]


# -- one measured step -----------------------------------------------------------------------


@dataclass
class Options:
    quick: bool
    server_cpus: str | None
    load_cpus: str | None
    processes: int
    profile: bool
    output: Path


def run_step(
    opts: Options,
    name: str,
    stress_args: list[str],
    timeout: float,
    *,
    server_args: tuple[str, ...] = (),
    instances: int = 1,
    redis: bool = False,
    limit: bool = False,
    mirror: bool = False,
) -> dict[str, Any]:
    """Start a server (or ``instances`` of them sharing a Redis of the bench's own, with
    ``redis``; or, with ``limit``, the limit in its place), run one `roomchat stress
    steady` against it, measure the server (and Redis)."""
    redis_proc = RedisProc(opts.load_cpus) if redis else None
    extra = [*server_args, *(["--bus", redis_proc.url] if redis_proc else [])]
    kind = LimitServer if limit else MirrorServer if mirror else Server
    servers = [kind(opts.server_cpus, extra) for _ in range(instances)]
    for one in servers:
        one.start()
    server = servers[0]

    def server_pids() -> list[int]:
        return [pid for one in servers for pid in (one.pid, *children(one.pid))]

    sampler = Sampler(server_pids)
    sampler.start()
    redis_sampler = Sampler(lambda: [redis_proc.proc.pid] if redis_proc else [])
    redis_sampler.start()
    baseline_rss = sampler.sample()[2]
    addrs = ",".join(one.addr for one in servers)
    stress = [str(BIN / "roomchat"), "stress", "steady", "--addr", addrs]
    stress += [*stress_args, "--processes", str(opts.processes), "--json", "--quiet"]
    command = pinned(opts.load_cpus, stress)
    spy = start_profile(opts, name, server.pid)
    print(f"  $ {' '.join(command)}", flush=True)
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - started
    finally:
        for each in (sampler, redis_sampler):
            each.stopped.set()
            each.join()
        if spy is not None:
            spy.wait(timeout=60)
        server_log = "\n".join(log for one in servers if (log := one.stop()))
        if redis_proc is not None:
            redis_proc.stop()
    if done.returncode != 0 or not done.stdout.strip():
        return {"name": name, "command": command, "error": done.stderr.strip()[-2000:]}
    report = json.loads(done.stdout.strip().splitlines()[-1])
    user_start, sys_start, _ = sampler.at(report["window_start_ns"])
    user_end, sys_end, _ = sampler.at(report["window_end_ns"])
    _, _, rss_joined = sampler.at(report["start_ns"])
    deliveries = report["deliveries"]
    cpu_s = user_end - user_start + sys_end - sys_start
    # The join phase: from the first user's connecting to the last one's last join.
    join_cpu_pct = None
    if report["join_end_ns"] > report["join_start_ns"] > 0:
        user_a, sys_a, _ = sampler.at(report["join_start_ns"])
        user_b, sys_b, _ = sampler.at(report["join_end_ns"])
        join_span_s = (report["join_end_ns"] - report["join_start_ns"]) / 1e9
        join_cpu_pct = round(100 * (user_b - user_a + sys_b - sys_a) / join_span_s, 1)
    redis_cpu: dict[str, Any] = {}
    if redis_proc is not None:
        r_user_a, r_sys_a, _ = redis_sampler.at(report["window_start_ns"])
        r_user_b, r_sys_b, _ = redis_sampler.at(report["window_end_ns"])
        redis_s = r_user_b - r_user_a + r_sys_b - r_sys_a
        sent = report["messages_sent"]
        redis_cpu = {
            "redis_cpu_pct": round(100 * redis_s / report["window_s"], 1),
            "redis_us_per_message": round(1e6 * redis_s / sent, 2) if sent else None,
        }
    step = {
        "name": name,
        "command": command,
        "server_command": pinned(opts.server_cpus, server.argv),
        "instances": instances,
        **redis_cpu,
        "report": report,
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_pct": round(100 * cpu_s / report["window_s"], 1),
        "server_join_cpu_pct": join_cpu_pct,
        "server_kernel_share_pct": round(100 * (sys_end - sys_start) / cpu_s, 1) if cpu_s else None,
        "server_us_per_delivery": round(1e6 * cpu_s / deliveries, 2) if deliveries else None,
        "server_rss_idle_kb": baseline_rss // 1024,
        "server_rss_joined_kb": rss_joined // 1024,
        "server_rss_per_connection_kb": (
            round((rss_joined - baseline_rss) / 1024 / report["connected"], 2)
            if report["connected"]
            else None
        ),
        "server_log": server_log,
        "tool_cpu_pct": round(
            100 * (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall, 1
        ),
        # The tool's own figure: its CPU while the load ran and drained, per process.
        "tool_load_cpu_pct": report.get("load_tool_cpu_pct"),
        "asked_deliveries_per_s": asked_deliveries_per_s(report),
    }
    lat = report["latency_ms"]
    print(
        f"    {report['deliveries_per_s']:,.0f} deliveries/s, lost {report['lost']:,}, "
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, server {step['server_cpu_pct']} % CPU "
        f"({step['server_kernel_share_pct']} % of it in the kernel), "
        f"{step['server_us_per_delivery']} µs/delivery, tool lag {report['max_send_lag_ms']} ms, "
        f"tool {step['tool_cpu_pct']} % CPU over the whole run, "
        f"{step['tool_load_cpu_pct']} % of a core while loading ({report['engine']} engine), "
        f"{step['asked_deliveries_per_s']:,.0f} deliveries/s asked"
        + (
            f", Redis {step['redis_cpu_pct']} % CPU, {step['redis_us_per_message']} µs/message"
            if redis_cpu
            else ""
        ),
        flush=True,
    )
    if report["connect_rate"]:
        join = report["join_time_ms"]
        print(
            f"    joining: {report['users_joined']:,} of {report['users']:,} users in "
            f"{report['join_s']:g} s, per user p50 {join['p50']} ms, p99 {join['p99']} ms, "
            f"max {join['max']} ms (to login: p50 {report['login_time_ms']['p50']} ms), "
            f"kept up: {report['joins_kept_up']}, server "
            f"{step['server_join_cpu_pct']} % CPU while joining, arrivals up to "
            f"{report['max_connect_lag_ms']} ms late",
            flush=True,
        )
    return step


def start_profile(opts: Options, name: str, pid: int) -> subprocess.Popen[bytes] | None:
    """With --profile: py-spy samples the server for a while (if py-spy is installed)."""
    spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if not opts.profile or spy is None:
        return None
    out = opts.output / f"profile-{name}.txt"
    argv = [spy, "record", "--pid", str(pid), "--duration", "8", "--format", "raw"]
    argv += ["--output", str(out), "--nonblocking"]
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def asked_deliveries_per_s(report: dict[str, Any]) -> float:
    """Deliveries/s the schedule asked for: messages due in the window, times the
    deliveries each message makes (the members of its room)."""
    if not report["messages_sent"] or not report["window_s"]:
        return 0.0
    per_message = report["deliveries_expected"] / report["messages_sent"]
    return round(per_message * report["messages_scheduled"] / report["window_s"], 1)


def tool_share(step: dict[str, Any]) -> float:
    """The load tool's CPU in % of one core per process: its own figure over the load
    when it gives one, else its processes' CPU over the whole run."""
    if step.get("tool_load_cpu_pct") is not None:
        return float(step["tool_load_cpu_pct"])
    return float(step.get("tool_cpu_pct", 0)) / max(1, step["report"].get("processes", 1))


def failure(step: dict[str, Any], p99_limit: float | None) -> str | None:
    """Why a step did not hold (None: it held)."""
    if "error" in step:
        return "error"
    report = step["report"]
    if max(report["max_send_lag_ms"], report["max_connect_lag_ms"]) > TOOL_LAG_LIMIT_MS:
        return "load tool saturated"
    # The epoll engine sleeps when it has nothing to do: near a full core it has no
    # headroom left (the asyncio engine's sender polls, so its CPU share says nothing).
    if report.get("engine") == "epoll" and tool_share(step) >= TOOL_CPU_LIMIT_PCT:
        return "load tool saturated"
    if report.get("send_blocked"):
        return "the server stopped reading (sockets full)"
    if report["lost"] or not report["drained"] or report["connected"] < report["users"]:
        return "loss"
    if p99_limit is not None and report["latency_ms"]["p99"] > p99_limit:
        if tool_share(step) >= TOOL_CPU_LIMIT_PCT:
            return f"p99 > {p99_limit:g} ms with the load tool saturated"
        return f"p99 > {p99_limit:g} ms"
    return None


# -- the scenarios ---------------------------------------------------------------------------


def seed(opts: Options) -> dict[str, Any]:
    duration = "5" if opts.quick else "20"
    args = ["--users", "48", "--rooms", "24", "--rooms-per-user", "1", "--rate", "200"]
    step = run_step(opts, "seed", [*args, "--duration", duration, "--warmup", "3"], 120)
    return {"scenario": "seed", "steps": [step]}


def limit(opts: Options) -> dict[str, Any]:
    """The seed on roomchat and on the limit (benchmarks/limit/limit.c), interleaved, in
    one run: CPU per delivery side by side (issue 20: no more than the limit's)."""
    if limit_binary() is None:
        return {"scenario": "limit", "error": "no C compiler (cc): limit.c not built", "steps": []}
    duration = "5" if opts.quick else "15"
    args = ["--users", "48", "--rooms", "24", "--rooms-per-user", "1", "--rate", "200"]
    args += ["--duration", duration, "--warmup", "3"]
    steps = []
    for round_ in range(1, (2 if opts.quick else 3) + 1):
        for on_limit in (False, True):
            name = f"seed-{'limit' if on_limit else 'roomchat'}-{round_}"
            steps.append(run_step(opts, name, args, 120, limit=on_limit))
    # Small rooms at the three rates (48 users x rate x 2 members), epoll engine.
    small = ["--users", "48", "--rooms", "24", "--rooms-per-user", "1", "--engine", "epoll"]
    small += ["--duration", "3" if opts.quick else "6", "--warmup", "2"]
    for rate in LIMIT_SMALL_RATES:
        for on_limit in (False, True):
            name = f"small-{'limit' if on_limit else 'roomchat'}-{rate * 96 / 1e6:g}M"
            steps.append(run_step(opts, name, [*small, "--rate", str(rate)], 240, limit=on_limit))
    # The big room and the 10,000-user shape (issue 20, item 6: parity).
    big = ["--users", "1000", "--rooms", "1", "--rooms-per-user", "1", "--check-every", "20"]
    big += ["--rate", "1.0", "--duration", "3" if opts.quick else "6", "--warmup", "2"]
    big += ["--drain-timeout", "15"]
    users = "2000" if opts.quick else "10000"
    many = ["--users", users, "--rooms", "24", "--rooms-per-user", "5", "--check-every", "20"]
    many += ["--rate", "0.1", "--duration", "10" if opts.quick else "30", "--warmup", "2"]
    many += ["--connect-timeout", "30", "--settle-timeout", "400", "--drain-timeout", "15"]
    many += ["--grace", "300"]
    for shape, shape_args in (("bigroom", big), ("manyusers", many)):
        for on_limit in (False, True):
            name = f"{shape}-{'limit' if on_limit else 'roomchat'}"
            steps.append(run_step(opts, name, shape_args, 1200, limit=on_limit))
    return {"scenario": "limit", "steps": steps}


def _both(result: dict[str, Any], name: str, describe: Callable[..., str]) -> list[str]:
    """``describe(step, report)`` of the step ``name`` on roomchat and on the limit
    (``name`` has ``{}`` where the server's name goes), each one there is."""
    parts = []
    for kind in ("roomchat", "limit"):
        step = next((s for s in result["steps"] if s["name"] == name.format(kind)), None)
        if step is not None:
            parts.append(f"{kind}: error" if "error" in step else describe(step, step["report"]))
    return parts


def limit_pair_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The big room at 1 M deliveries/s and the 10,000-user shape, both servers."""

    def describe(step: dict[str, Any], r: dict[str, Any]) -> str:
        why = failure(step, None)
        return (
            f"{step['name'].split('-')[1]} {r['deliveries_per_s']:,.0f}/s, lost {r['lost']:,}, "
            f"{step['server_us_per_delivery']} µs/delivery, p99 {r['latency_ms']['p99']} ms, "
            f"{step['server_rss_per_connection_kb']} KB RSS/connection"
            + (f" ({why})" if why else "")
        )

    shapes = (("bigroom", "1,000-member room, 1 M deliveries/s asked, against the limit"),)
    shapes += (("manyusers", "users x 5 of 24 rooms, 1 msg/10 s each, against the limit"),)
    return [
        (title, "; ".join(parts), "parity (issue 20, item 6)")
        for shape, title in shapes
        if (parts := _both(result, shape + "-{}", describe))
    ]


#: Messages/s per user of the small-room steps against the limit: 1.54, 3.07 and 6.14
#: million deliveries/s asked (issue 20's table).
LIMIT_SMALL_RATES = [16000, 32000, 64000]


def limit_small_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Small rooms at each asked rate: delivered/s, p99 and server CPU, both servers."""

    def describe(step: dict[str, Any], r: dict[str, Any]) -> str:
        why = failure(step, P99_LIMIT_MS)
        return (
            f"{step['name'].split('-')[1]} {r['deliveries_per_s']:,.0f}/s, lost {r['lost']:,}, "
            f"p99 {r['latency_ms']['p99']} ms, server {step['server_cpu_pct']} % CPU, tool "
            f"{r.get('load_tool_cpu_pct')} %" + (f" ({why})" if why else "")
        )

    return [
        (
            f"small rooms, {rate * 96:,} deliveries/s asked, against the limit",
            "; ".join(parts),
            "held (nothing lost, p99 ≤ 50 ms) on one core",
        )
        for rate in LIMIT_SMALL_RATES
        if (parts := _both(result, f"small-{{}}-{rate * 96 / 1e6:g}M", describe))
    ]


def limit_row(result: dict[str, Any]) -> tuple[str, str, str]:
    """The seed's CPU per delivery, roomchat against the limit (medians of the rounds)."""
    target = "roomchat ≤ the limit's CPU per delivery, p99 ≤ 5 ms"
    scenario = "seed against the limit (interleaved, one run)"
    if "error" in result:
        return (scenario, result["error"], target)
    per: dict[str, list[float]] = {"roomchat": [], "limit": []}
    p99: dict[str, list[float]] = {"roomchat": [], "limit": []}
    for step in result["steps"]:
        if not step["name"].startswith("seed-"):
            continue
        if "error" in step or failure(step, None) is not None:
            return (scenario, f"{step['name']}: {step.get('error') or failure(step, None)}", target)
        kind = step["name"].split("-")[1]
        per[kind].append(step["server_us_per_delivery"])
        p99[kind].append(step["report"]["latency_ms"]["p99"])
    ours, best = sorted(per["roomchat"]), sorted(per["limit"])
    mid_ours, mid_best = ours[len(ours) // 2], best[len(best) // 2]
    return (
        scenario,
        f"roomchat {', '.join(map(str, per['roomchat']))} µs/delivery (p99 "
        f"{', '.join(map(str, p99['roomchat']))} ms); the limit "
        f"{', '.join(map(str, per['limit']))} µs (p99 {', '.join(map(str, p99['limit']))} ms); "
        f"median ratio {mid_ours / mid_best:.2f}",
        target,
    )


def stepped(
    opts: Options, name: str, args: list[str], rates: list[float], p99_limit: float | None
) -> dict[str, Any]:
    """Raise the rate step by step; stop at the first step that does not hold."""
    duration = "3" if opts.quick else "6"
    steps, best, stopped = [], None, None
    for rate in rates:
        step_args = [*args, "--rate", str(rate), "--duration", duration, "--warmup", "2"]
        step = run_step(opts, f"{name}-{rate:g}", step_args, 240)
        steps.append(step)
        if (stopped := failure(step, p99_limit)) is not None:
            break
        best = step
    top = best["report"]["deliveries_per_s"] if best else 0
    return {
        "scenario": name,
        "steps": steps,
        "held_deliveries_per_s": top,
        "stopped_by": stopped or "last step held",
    }


#: Messages/s per user of the small-room ceiling; x 96 deliveries/s (48 users in rooms of
#: 2, the sender getting its own): 96,000 up to 6,000,000 deliveries/s.
CEILING_RATES = [1000, 2000, 3200, 4000, 5000, 6000, 8000, 10000, 14000, 20000, 30000, 45000]
CEILING_RATES += [62500]
#: A step keeps up in throughput when this share of the asked deliveries/s arrived.
KEPT_UP_SHARE = 0.95


def ceiling(opts: Options) -> dict[str, Any]:
    """Small rooms, driven by the epoll engine (raw sockets, pre-built batches, counted
    deliveries: benchmarks/README.md, "The load tool's own limits"). The rate goes up
    until the server gives out: the p99 bound first (the held figure), then on until it
    no longer keeps up in throughput (loss, its sockets full, or under 95 % of the asked
    deliveries/s). A step where the tool saturated stops the ramp: from there on the
    tool is measured. Then the same load against roomchat.stress.mirror, the stand-in
    that costs less than the tool, up the same rates: the tool's own ceiling."""
    rates = CEILING_RATES if opts.quick else sorted({*CEILING_RATES, 400, 800, 1600, 2600})
    duration = "3" if opts.quick else "6"
    args = ["--users", "48", "--rooms", "24", "--rooms-per-user", "1", "--engine", "epoll"]
    args += ["--duration", duration, "--warmup", "2"]
    steps: list[dict[str, Any]] = []
    held = throughput = None
    stopped, p99_failed = "last step held", False
    for rate in rates:
        step = run_step(opts, f"ceiling-{rate:g}", [*args, "--rate", str(rate)], 240)
        steps.append(step)
        why = failure(step, P99_LIMIT_MS)
        if why is None and not p99_failed:
            held = step
        if keeps_up(step) and (why is None or why.startswith("p99")):
            throughput = step  # past the p99 bound, on while it keeps up
            p99_failed = p99_failed or why is not None
            continue
        short = f"under {KEPT_UP_SHARE:.0%} of the asked deliveries/s delivered"
        stopped = short if why is None else f"{why}, {short}" if why.startswith("p99") else why
        break
    tool_steps: list[dict[str, Any]] = []
    tool_top = None
    for rate in [r for r in rates if r >= 10000] + [90000]:
        name = f"ceiling-mirror-{rate:g}"
        step = run_step(opts, name, [*args, "--rate", str(rate)], 240, mirror=True)
        tool_steps.append(step)
        if failure(step, None) is not None or not keeps_up(step):
            break
        tool_top = step
    return {
        "scenario": "ceiling",
        "steps": steps + tool_steps,
        "held_deliveries_per_s": held["report"]["deliveries_per_s"] if held else 0,
        "held_server_cpu_pct": held["server_cpu_pct"] if held else None,
        "throughput_deliveries_per_s": (
            throughput["report"]["deliveries_per_s"] if throughput else 0
        ),
        "throughput_server_cpu_pct": throughput["server_cpu_pct"] if throughput else None,
        "stopped_by": stopped,
        "tool_deliveries_per_s": tool_top["report"]["deliveries_per_s"] if tool_top else 0,
        "tool_cpu_pct": tool_share(tool_top) if tool_top else None,
        "tool_stopped_by": (
            "last step held"
            if tool_top is tool_steps[-1]
            else failure(tool_steps[-1], None)
            or f"under {KEPT_UP_SHARE:.0%} of the asked deliveries/s delivered (the mirror)"
        ),
    }


def keeps_up(step: dict[str, Any]) -> bool:
    """Nothing lost and at least KEPT_UP_SHARE of the asked deliveries/s delivered."""
    if "error" in step:
        return False
    report = step["report"]
    asked = step["asked_deliveries_per_s"]
    return (
        not report["lost"]
        and report["drained"]
        and not report.get("send_blocked")
        and report["deliveries_per_s"] >= KEPT_UP_SHARE * asked
    )


def ceiling_row(result: dict[str, Any]) -> tuple[str, str, str]:
    target = "≥ 3,000,000 deliveries/s (issue 8); the tool: 6,000,000 from one core (issue 20)"
    measured = (
        f"{result['held_deliveries_per_s']:,.0f} deliveries/s held (server "
        f"{result['held_server_cpu_pct']} % CPU); kept up in throughput to "
        f"{result['throughput_deliveries_per_s']:,.0f}/s (server "
        f"{result['throughput_server_cpu_pct']} %); next step: {result['stopped_by']}. "
        f"The load tool alone (against roomchat.stress.mirror): "
        f"{result['tool_deliveries_per_s']:,.0f}/s at {result['tool_cpu_pct']} % of its core "
        f"(next: {result['tool_stopped_by']})"
    )
    return ("small-room ceiling (p99 ≤ 50 ms, nothing lost), epoll engine", measured, target)


def bigroom(opts: Options) -> dict[str, Any]:
    rates = [0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0]
    args = ["--users", "1000", "--rooms", "1", "--rooms-per-user", "1", "--drain-timeout", "15"]
    args += ["--check-every", "20"]  # 50 members check each delivery, 950 count theirs
    return stepped(opts, "bigroom", args, rates, None)


def manyusers(opts: Options) -> dict[str, Any]:
    """10,000 users x 5 rooms: first nearly idle (RSS per connection, p99 with 10,000
    sessions), then at the scenario's rate, one message per 10 s each."""
    users = "2000" if opts.quick else "10000"
    duration = "10" if opts.quick else "30"
    args = ["--users", users, "--rooms", "24", "--rooms-per-user", "5", "--check-every", "20"]
    args += ["--duration", duration, "--warmup", "2", "--connect-timeout", "30"]
    args += ["--settle-timeout", "400", "--drain-timeout", "15", "--grace", "300"]
    steps = [
        run_step(opts, "manyusers-idle", [*args, "--rate", "0.001"], 1200),
        run_step(opts, "manyusers", [*args, "--rate", "0.1"], 1200),
    ]
    return {"scenario": "manyusers", "steps": steps}


def joinstorm(opts: Options) -> dict[str, Any]:
    """A reconnect wave: 10,000 users x 5 of 24 rooms arriving at 500/s, each sending its
    joins right after login; once all have joined, 1 msg / 10 s each for a short window."""
    users = "2000" if opts.quick else "10000"
    duration = "5" if opts.quick else "10"
    args = ["--users", users, "--rooms", "24", "--rooms-per-user", "5", "--check-every", "20"]
    args += ["--connect-rate", "500", "--rate", "0.1", "--duration", duration, "--warmup", "1"]
    args += ["--connect-timeout", "30", "--settle-timeout", "400", "--drain-timeout", "15"]
    args += ["--grace", "300"]
    return {"scenario": "joinstorm", "steps": [run_step(opts, "joinstorm", args, 1200)]}


def scaleout(opts: Options) -> dict[str, Any]:
    """What the Redis bus costs and what instances and workers give, on this machine:
    the seed and the 1,000-member room on the in-process bus and on Redis (one instance),
    then split over two instances, then --workers 2 vs 1. Every server process is pinned
    to the server CPU (so two instances or workers share one core); Redis runs with the
    load, and its CPU is reported per message."""
    duration = "4" if opts.quick else "8"
    seed_args = ["--users", "48", "--rooms", "24", "--rooms-per-user", "1", "--rate", "200"]
    seed_args += ["--duration", duration, "--warmup", "2"]
    big = ["--users", "1000", "--rooms", "1", "--rooms-per-user", "1", "--drain-timeout", "15"]
    big += ["--check-every", "20", "--duration", duration, "--warmup", "2"]
    steps = []
    for bus in ("memory", "redis"):
        steps.append(run_step(opts, f"seed-{bus}", seed_args, 120, redis=bus == "redis"))
    for rate in ("1.0", "3.0"):
        for bus in ("memory", "redis"):
            name = f"bigroom-{rate}-{bus}"
            args = [*big, "--rate", rate]
            steps.append(run_step(opts, name, args, 240, redis=bus == "redis"))
    steps.append(run_step(opts, "seed-2-instances", seed_args, 120, instances=2, redis=True))
    for rate in ("1.0", "3.0"):
        args = [*big, "--rate", rate]
        steps.append(
            run_step(opts, f"bigroom-{rate}-2-instances", args, 240, instances=2, redis=True)
        )
        for workers in ("1", "2"):
            steps.append(
                run_step(
                    opts,
                    f"bigroom-{rate}-workers-{workers}",
                    args,
                    240,
                    server_args=("--workers", workers),
                    redis=True,
                )
            )
    return {"scenario": "scaleout", "steps": steps}


def websocket(opts: Options) -> dict[str, Any]:
    """The web port against plain TCP, same run, same clients (benchmarks/ws_libs.py):
    the seed's shape (48 clients, 2 per room, 200 messages/s each) and a 1,000-member
    room (one sender, 200 messages/s: 200,000 deliveries/s),
    server CPU per delivery and latency, with the default coalescing window."""
    argv = [sys.executable, str(ROOT / "benchmarks" / "ws_libs.py"), "--shells", "tcp,websockets"]
    argv += ["--shapes", "seed,fanout", "--members", "1000", "--rate", "200"]
    argv += ["--windows", "3000", "--json"]
    argv += ["--seconds", "4" if opts.quick else "8"]
    if opts.server_cpus is not None and opts.load_cpus is not None:
        argv += ["--server-cpu", opts.server_cpus, "--load-cpu", opts.load_cpus.split("-")[0]]
    print(f"  $ {' '.join(argv)}", flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"scenario": "websocket", "error": done.stderr.strip()[-2000:], "steps": []}
    print(done.stdout, flush=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {"scenario": "websocket", "steps": [], "results": results}


def websocket_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for r in result.get("results", []):
        shape = "seed shape" if r["shape"] == "seed" else "1,000-member room"
        rows.append(
            (
                f"{'WebSocket' if r['shell'] != 'tcp' else 'TCP'}, {shape}",
                f"{r['deliveries_per_s']:,.0f} deliveries/s, {r['us_per_delivery']:.2f} µs server "
                f"CPU/delivery, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms",
                "WebSocket against TCP, same run",
            )
        )
    return rows


def scaleout_rows(steps: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows = []
    for step in steps:
        if "error" in step:
            rows.append((f"scale-out {step['name']}", "error", ""))
            continue
        r = step["report"]
        redis = (
            f", Redis {step['redis_us_per_message']} µs/message"
            if step.get("redis_us_per_message") is not None
            else ""
        )
        why = failure(step, None)
        rows.append(
            (
                f"scale-out {step['name']}",
                f"{r['deliveries_per_s']:,.0f} deliveries/s, {step['server_us_per_delivery']} "
                f"µs server CPU/delivery, p99 {r['latency_ms']['p99']} ms, lost {r['lost']}"
                + redis
                + (f" ({why})" if why else ""),
                "Redis bus ≤ 20 % more CPU/delivery in the 1,000-member room",
            )
        )
    return rows


def joinstorm_row(step: dict[str, Any]) -> tuple[str, str, str]:
    target = "joins keep up with arrivals, nothing lost"
    if "error" in step:
        return ("joinstorm", "error", target)
    r = step["report"]
    why = failure(step, None)
    measured = (
        f"joined in {r['join_s']:g} s, kept up: {'yes' if r['joins_kept_up'] else 'no'} "
        f"({r['users_joined']:,} of {r['users']:,} joined, {r['users_joined_late']:,} later "
        f"than {r['join_bound_s']:g} s; join p50 {r['join_time_ms']['p50']} ms, "
        f"p99 {r['join_time_ms']['p99']} ms, of which to login p50 "
        f"{r['login_time_ms']['p50']} ms); server CPU {step['server_join_cpu_pct']} % "
        f"while joining, {step['server_cpu_pct']} % in the window; "
        f"{step['server_rss_per_connection_kb']} KB RSS/connection; "
        f"{r['deliveries']:,} deliveries, lost {r['lost']:,}"
    )
    if why is not None:
        measured += f" ({why})"
    return (
        f"joinstorm: {r['users']:,} users x 5 of 24 rooms arriving at "
        f"{r['connect_rate']:g}/s, then 1 msg/{1 / r['rate']:g} s each",
        measured,
        target,
    )


# -- the report ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"MemTotal:\s*(\d+)", meminfo)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "cpu": model.group(1) if model else platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gb": round(int(mem.group(1)) / 1024**2, 1) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
        "commit": commit + ("+uncommitted" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def summary_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    if "seed" in results:
        step = results["seed"]["steps"][0]
        if "error" in step:
            rows.append(("seed", "error", "≤ 11 µs/delivery, p99 ≤ 5 ms"))
        else:
            r = step["report"]
            rows.append(
                (
                    "seed: 48 users, 24 rooms, 200 msg/s each",
                    f"{step['server_us_per_delivery']} µs/delivery, p50 {r['latency_ms']['p50']} "
                    f"ms, p99 {r['latency_ms']['p99']} ms, lost {r['lost']}",
                    "≤ 11 µs/delivery, p99 ≤ 5 ms",
                )
            )
    if "limit" in results:
        rows.append(limit_row(results["limit"]))
        rows += limit_small_rows(results["limit"])
        rows += limit_pair_rows(results["limit"])
    if "ceiling" in results:
        rows.append(ceiling_row(results["ceiling"]))
    ceilings = [
        ("bigroom", "1,000-member room, nothing lost", "≥ 1,000,000 deliveries/s"),
    ]
    for name, scenario, target in ceilings:
        if name in results:
            top, why = results[name]["held_deliveries_per_s"], results[name]["stopped_by"]
            rows.append((scenario, f"{top:,.0f} deliveries/s (next step: {why})", target))
    for step in results.get("manyusers", {}).get("steps", []):
        if "error" in step:
            rows.append((step["name"], "error", "nothing lost, ≤ 15 KB per idle connection"))
        else:
            r = step["report"]
            pct = 100 * r["lost"] / r["deliveries_expected"] if r["deliveries_expected"] else 0
            rows.append(
                (
                    f"{r['users']:,} users x 5 rooms, 1 msg/{1 / r['rate']:g} s each",
                    f"lost {pct:.1f} %, p99 {r['latency_ms']['p99']} ms, "
                    f"{step['server_rss_per_connection_kb']} KB RSS/connection",
                    "nothing lost, ≤ 15 KB per idle connection",
                )
            )
    rows += [joinstorm_row(step) for step in results.get("joinstorm", {}).get("steps", [])]
    rows += scaleout_rows(results.get("scaleout", {}).get("steps", []))
    rows += websocket_rows(results.get("websocket", {}))
    return rows


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# roomchat benchmark results",
        "",
        f"{m['date']}, commit {m['commit']}: {m['cpu']}, {m['cpus']} CPUs, "
        f"{m['memory_gb']} GB, Linux {m['kernel']}, Python {m['python']}.",
        f"Server pinned to CPU {data['server_cpus']}, load on CPU {data['load_cpus']} "
        f"({data['processes']} load process(es)). Options: `{' '.join(data['argv'])}`.",
        "",
        "| scenario | measured | target |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(data["results"])]
    lines += [
        "",
        "## Every step",
        "",
        "| step | asked/s | deliveries/s | lost | p50 ms | p99 ms | max ms | server CPU % "
        "| tool CPU % | kernel % | µs/delivery | RSS/conn KB | tool lag ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    commands: list[str] = []
    for result in data["results"].values():
        for step in result["steps"]:
            if "error" in step:
                lines.append(f"| {step['name']} | error: {step['error'][-200:]!r} |")
                continue
            r, lat = step["report"], step["report"]["latency_ms"]
            # The tool's CPU in % of one core per process (its own figure over the load
            # when it gives one), next to the server's: which of the two gave out.
            lines.append(
                f"| {step['name']} | {step.get('asked_deliveries_per_s', 0):,.0f} "
                f"| {r['deliveries_per_s']:,.0f} | {r['lost']:,} "
                f"| {lat['p50']} | {lat['p99']} | {lat['max']} | {step['server_cpu_pct']} "
                f"| {tool_share(step):g} | {step['server_kernel_share_pct']} "
                f"| {step['server_us_per_delivery']} | {step['server_rss_per_connection_kb']} "
                f"| {r['max_send_lag_ms']} |"
            )
            commands.append(f"{' '.join(step['server_command'])}  # server")
            commands.append(" ".join(step["command"]).replace(r["addr"], "$ADDR"))
    lines += ["", "## Exact commands", "", "```", *dict.fromkeys(commands), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer steps")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--server-cpus", default="0", help="taskset list for the server")
    parser.add_argument("--load-cpus", default="", help="taskset list for the load (default: 1-)")
    parser.add_argument("--processes", type=int, default=0, help="load processes (0: per CPU)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server for 8 s per step, if present"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write latest.*")
    parser.add_argument(
        "--store", default="sqlite", help="the servers' --store (sqlite: a temporary file each)"
    )
    args = parser.parse_args()
    global STORE
    STORE = args.store
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(chosen) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    cpus = os.cpu_count() or 1
    load_cpus = (args.load_cpus or f"1-{cpus - 1}") if cpus > 1 else None
    server_cpus = args.server_cpus if cpus > 1 else None
    if shutil.which("taskset") is None:
        print("taskset not found: server and load are not pinned", file=sys.stderr)
    processes = args.processes or max(1, cpus - 1)
    opts = Options(args.quick, server_cpus, load_cpus, processes, args.profile, args.output)
    args.output.mkdir(parents=True, exist_ok=True)
    raise_own_open_files()
    runners = {
        "seed": seed,
        "limit": limit,
        "ceiling": ceiling,
        "bigroom": bigroom,
        "manyusers": manyusers,
        "joinstorm": joinstorm,
        "scaleout": scaleout,
        "websocket": websocket,
    }
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        print(f"== {name}", flush=True)
        results[name] = runners[name](opts)
    data = {
        "machine": machine(),
        "argv": sys.argv[1:] or ["(defaults)"],
        "server_cpus": server_cpus,
        "load_cpus": load_cpus,
        "processes": processes,
        "store": STORE,
        "results": results,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "latest.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.output / "latest.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
