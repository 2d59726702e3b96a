"""Running a stress test: in this event loop (one worker) or over several processes.

Every run goes through the same phases: prepare (steady: connect and join everyone),
run (send from a common start time), drain (each worker waits, bounded, for the
deliveries that the merged sent log says its users should get), result.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from roomchat import system
from roomchat.stress.config import Config, SteadyConfig
from roomchat.stress.rawload import EpollWorker
from roomchat.stress.report import Report, build_report
from roomchat.stress.stats import Progress, SentLog, WorkerResult
from roomchat.stress.worker import LoadWorker, StressError

__all__ = ["StressError", "run_in_process", "run_in_processes"]

ProgressCallback = Callable[[list[Progress]], None]

_START_MARGIN = 0.1  # seconds between "go" and the common start time
_SPAWN = 30.0  # seconds for the worker processes to start
_SPARE_FILES = 64  # open files besides the users' sockets (pipes, the interpreter's own)


def _raise_open_files(sessions: int) -> str | None:
    """Make room for ``sessions`` sockets; a sentence when the limit cannot be raised."""
    shortfall = system.raise_open_files(sessions + _SPARE_FILES)
    if shortfall is None:
        return None
    return (
        f"{shortfall} (for {sessions} sessions): connections past the limit will fail"
        " (raise it with `ulimit -n` or use more --processes)"
    )


def _users_of(cfg: Config, part: int) -> list[int]:
    return list(range(part, cfg.users, cfg.processes))


async def run_in_process(
    cfg: Config, on_progress: Callable[[Progress], None] | None = None
) -> Report:
    """Run the whole load in the running event loop (``cfg.processes`` is ignored)."""
    notes = [note] if (note := _raise_open_files(cfg.users)) else []
    if isinstance(cfg, SteadyConfig) and cfg.engine == "epoll":
        # Its own thread: its loop blocks, and a server may share this event loop.
        return await asyncio.to_thread(_epoll_here, cfg, on_progress, notes)
    worker = LoadWorker(cfg, range(cfg.users), on_progress=on_progress)
    t0 = 0
    try:
        await worker.prepare(time.monotonic_ns())
        t0 = time.monotonic_ns() + int(_START_MARGIN * 1e9)
        log = await worker.run(t0)
        await worker.drain(log)
    finally:
        result = await worker.result()
    return build_report(cfg, [result], notes, t0)


def _epoll_here(
    cfg: SteadyConfig, on_progress: Callable[[Progress], None] | None, notes: list[str]
) -> Report:
    """The whole epoll-engine run in this thread; its CPU is this thread's."""
    worker = EpollWorker(cfg, range(cfg.users), on_progress=on_progress)
    t0 = cpu = 0
    try:
        worker.prepare()
        t0 = time.monotonic_ns() + int(_START_MARGIN * 1e9)
        cpu = time.thread_time_ns()
        worker.drain(worker.run(t0))
    finally:
        result = worker.result()
    if t0:
        result.cpu_s = (time.thread_time_ns() - cpu) / 1e9
        result.wall_s = (time.monotonic_ns() - t0) / 1e9
    return build_report(cfg, [result], notes, t0)


# -- several processes --------------------------------------------------------------------


def _worker_main(cfg: Config, part: int, conn: Connection) -> None:
    """A worker process: runs its share, answering the parent through ``conn``."""
    try:
        if isinstance(cfg, SteadyConfig) and cfg.engine == "epoll":
            _epoll_worker(cfg, part, conn)
        else:
            system.run(_worker(cfg, part, conn))
    except Exception as exc:
        conn.send(("error", f"worker {part}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


async def _recv(conn: Connection) -> Any:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), readable)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv()


async def _worker(cfg: Config, part: int, conn: Connection) -> None:
    users = _users_of(cfg, part)
    note = _raise_open_files(len(users))
    worker = LoadWorker(cfg, users, part=part, on_progress=lambda p: conn.send(("progress", p)))
    try:
        conn.send(("up", None))
        kind, connect_from = await _recv(conn)
        assert kind == "connect"
        await worker.prepare(connect_from)
        conn.send(("ready", note))
        kind, t0 = await _recv(conn)
        assert kind == "go"
        cpu = time.process_time()
        conn.send(("sent", await worker.run(t0)))
        kind, log = await _recv(conn)
        assert kind == "drain"
        await worker.drain(log)
        # The sender polls when its next message is due within 2 ms (worker.py), so this
        # is near 100 % at any high rate: the tool's lag, not its CPU, says it saturated.
        cpu_s, wall_s = time.process_time() - cpu, (time.monotonic_ns() - t0) / 1e9
    finally:
        result = await worker.result()
    result.cpu_s, result.wall_s = cpu_s, wall_s
    conn.send(("result", result))


def _epoll_worker(cfg: SteadyConfig, part: int, conn: Connection) -> None:
    """A worker process of the epoll engine: the same exchange with the parent, blocking
    (the engine's loop is the process's only work)."""
    users = _users_of(cfg, part)
    note = _raise_open_files(len(users))
    worker = EpollWorker(cfg, users, part=part, on_progress=lambda p: conn.send(("progress", p)))
    try:
        conn.send(("up", None))
        kind, _ = conn.recv()
        assert kind == "connect"
        worker.prepare()
        conn.send(("ready", note))
        kind, t0 = conn.recv()
        assert kind == "go"
        cpu = time.process_time()
        conn.send(("sent", worker.run(t0)))
        kind, log = conn.recv()
        assert kind == "drain"
        worker.drain(log)
        cpu_s, wall_s = time.process_time() - cpu, (time.monotonic_ns() - t0) / 1e9
    finally:
        result = worker.result()
    result.cpu_s, result.wall_s = cpu_s, wall_s
    conn.send(("result", result))


class _Parent:
    def __init__(self, cfg: Config, on_progress: ProgressCallback | None) -> None:
        self.cfg = cfg
        self.on_progress = on_progress
        context = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for part in range(cfg.processes):
            parent_end, child_end = context.Pipe()
            proc = context.Process(
                target=_worker_main, args=(cfg, part, child_end), daemon=True, name=f"stress-{part}"
            )
            self.conns.append(parent_end)
            self.procs.append(proc)
        self.latest: dict[int, Progress] = {}

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    def collect(self, kind: str, seconds: float) -> list[Any]:
        """Wait for one ``kind`` message from every worker, passing progress on."""
        deadline = time.monotonic() + seconds
        answers: dict[int, Any] = {}
        while len(answers) < len(self.conns):
            left = deadline - time.monotonic()
            if left <= 0:
                raise StressError(f"workers did not report {kind!r} within {seconds:.0f} s")
            for conn in wait([c for i, c in enumerate(self.conns) if i not in answers], left):
                assert isinstance(conn, Connection)
                part = self.conns.index(conn)
                try:
                    what, payload = conn.recv()
                except EOFError:
                    raise StressError(f"worker {part} exited unexpectedly") from None
                if what == "error":
                    raise StressError(payload)
                if what == "progress":
                    self.latest[part] = payload
                    if self.on_progress is not None:
                        self.on_progress(list(self.latest.values()))
                elif what == kind:
                    answers[part] = payload
        return [answers[i] for i in range(len(self.conns))]

    def send(self, message: tuple[str, Any]) -> None:
        for conn in self.conns:
            conn.send(message)

    def stop(self) -> None:
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def run_in_processes(cfg: Config, on_progress: ProgressCallback | None = None) -> Report:
    """Spread the users over ``cfg.processes`` worker processes and merge their results."""
    parent = _Parent(cfg, on_progress)
    connecting = cfg.connect_seconds(-(-cfg.users // cfg.processes))
    try:
        parent.start()
        parent.collect("up", _SPAWN)
        # Arrivals at a rate are timed from one start shared by every process.
        parent.send(("connect", time.monotonic_ns() + int(_START_MARGIN * 1e9)))
        notes = [n for n in parent.collect("ready", connecting + cfg.grace) if n]
        t0 = time.monotonic_ns() + int(_START_MARGIN * 1e9)
        parent.send(("go", t0))
        logs: list[SentLog] = parent.collect("sent", cfg.load_seconds() + cfg.grace)
        parent.send(("drain", SentLog.merge(logs)))
        results: list[WorkerResult] = parent.collect("result", cfg.drain_timeout + cfg.grace)
    finally:
        parent.stop()
    return build_report(cfg, results, sorted(set(notes)), t0)
