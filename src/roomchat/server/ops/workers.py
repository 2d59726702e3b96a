"""``roomchat serve --workers N``: N processes share one port and one bus.

The parent (:func:`supervise`) checks what it can itself, starts the workers, says once
that the server is listening, forwards SIGINT/SIGTERM and replaces a worker that dies
unasked. Each worker is ``python -m roomchat serve`` again, the ordinary single-process
server, told it is worker K by ``ROOMCHAT_WORKER_INDEX`` (:class:`WorkerRole`).

- The port. The parent binds one socket per address of ``--host`` with SO_REUSEPORT
  (port 0: the kernel picks a free port, which every worker is then given) and keeps it,
  never listening on it, for its whole life. Only listening sockets receive connections,
  so it takes none; it reserves the port (a replaced worker finds it free, nobody else
  can take it in between) and makes "port in use" the parent's error, reported once.
  The workers listen on it with SO_REUSEPORT; Linux spreads new connections over them
  by a hash of the addresses. (Elsewhere SO_REUSEPORT may not balance, see the README.)
- The log lines. Every line of worker K starts with ``[worker K]``; a worker logs
  ``ready on HOST:PORT ... (pid P)`` where the single-process server logs ``roomchat
  listening on``. The parent logs ``roomchat listening on HOST:PORT with R rooms, ...,
  N workers (pids ...)`` exactly once, when every worker is ready, so whoever waits for
  that line (tests, ``benchmarks/run.py``) can connect as soon as they see it.
- Parent and worker talk over the worker's stdin and stdout, two pipes. The worker
  writes ``ready`` once it listens, or ``error REASON`` if it cannot start (and then
  exits 1 without writing to stderr), so that a start-up error common to all workers
  (Redis unreachable) is reported once, by the parent. EOF on the worker's stdin means
  the parent is gone (even by SIGKILL): the worker shuts down as on SIGTERM.
- Signals. Workers run in their own process group, so Ctrl-C in a terminal reaches only
  the parent, which forwards each SIGINT/SIGTERM it gets to every worker once. When they
  have all stopped it exits 0 (1 if one had to be killed or failed while stopping).
- Restarts. A worker that exits without being asked (crash, SIGKILL, a stray SIGTERM)
  is started again, at once if it had been up for :data:`STABLE_AFTER` seconds, else
  after a back-off doubling from 0.1 s to 5 s. A worker that fails to start (exits
  before it is ready) :data:`MAX_FAILED_STARTS` times in a row makes the parent stop
  all and exit non-zero with the last reason, as gunicorn does: Redis down, or a
  broken deployment, is then for the service manager to see. During the first start
  there is no retry at all: the first failure ends the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import msgspec

from roomchat.addresses import format_address
from roomchat.server.app import ServerStartError, limits_summary
from roomchat.server.config import ServerConfig, load_rooms
from roomchat.server.shells.net import bind_sockets, listen_address

if TYPE_CHECKING:
    from roomchat.server.app import ChatServer

__all__ = [
    "MAX_FAILED_STARTS",
    "STABLE_AFTER",
    "WORKER_INDEX_ENV",
    "WorkerRole",
    "WorkersError",
    "supervise",
]

log = logging.getLogger("roomchat.workers")

#: Set (to 1..N) in a worker's environment by its parent; internal.
WORKER_INDEX_ENV = "ROOMCHAT_WORKER_INDEX"
CONFIG_ENV = "ROOMCHAT_WORKER_CONFIG"
#: Consecutive failed starts of one worker after which the parent gives up.
MAX_FAILED_STARTS = 5
#: A worker that was up this long (seconds) before dying is replaced without delay.
STABLE_AFTER = 10.0
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0
#: How long, beyond the server's shutdown grace, stopping workers may take before SIGKILL.
_STOP_EXTRA = 10.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: A worker's exit statuses that count as a clean stop once it was asked to stop: 0, or
#: killed by the signal before it had installed its handlers (130: SIGINT in Python).
_CLEAN_STOP = {0, 130, -signal.SIGINT, -signal.SIGTERM}


class WorkersError(Exception):
    """The workers could not start, or one kept failing to. The message says why."""


# -- the parent ------------------------------------------------------------------------
def supervise(config: ServerConfig, workers: int, log_level: str, log_format: str = "text") -> int:
    """Run ``workers`` worker processes until SIGINT or SIGTERM; return the exit status.

    Raises RoomsFileError, BusError, ServerStartError or WorkersError with a one-line
    reason when the workers cannot start, or when one keeps failing to start again."""
    rooms = load_rooms(config.rooms_path)  # the common mistakes, reported once
    bus = _bus_display(config.bus_url)
    reserved = _reserve_port(config.host, config.port)
    try:
        config = replace(config, port=reserved[0].getsockname()[1])
        summary = (
            f"{', '.join(format_address(sock.getsockname()) for sock in reserved)} "
            f"with {len(rooms)} rooms, bus {bus}"
        )
        if config.ws:  # the web port too: every worker listens on it (SO_REUSEPORT)
            try:
                host, port = listen_address(config.ws)
            except ValueError as exc:
                raise ServerStartError(f"cannot serve the web client: {exc}") from None
            web = _reserve_port(host, port)
            reserved += web
            config = replace(config, ws=format_address((host, web[0].getsockname()[1])))
            summary += f", web client on {config.ws}"
        supervisor = _Supervisor(
            config=config,
            count=workers,
            env=_worker_env(config, log_level, log_format),
            summary=summary,
        )
        return asyncio.run(supervisor.run())
    finally:
        for sock in reserved:
            sock.close()


def _bus_display(url: str) -> str:
    from roomchat.server.bus.redis.url import parse_redis_url

    return parse_redis_url(url).display  # BusError for a URL it cannot use


def _reserve_port(host: str, port: int) -> list[socket.socket]:
    """Bind (not listen) ``host:port`` with SO_REUSEPORT on every address of ``host``."""
    where = f"cannot listen on {host}:{port}"
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ServerStartError(f"{where}: --workers needs SO_REUSEPORT, not on this platform")
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ServerStartError(f"{where}: {exc.strerror}") from None
    try:
        return bind_sockets(infos, reuse_port=True)
    except OSError as exc:
        raise ServerStartError(f"{where}: {exc.strerror or exc}") from None


def _worker_env(config: ServerConfig, log_level: str, log_format: str) -> dict[str, str]:
    """The environment of a worker: the whole ServerConfig as JSON in one variable (so
    every setting reaches the workers, and no secret, such as a Redis password in the
    bus URL, shows on a command line), and the log level its logging starts with."""
    env = dict(os.environ)
    env.update(
        ROOMCHAT_LOG_LEVEL=log_level,
        ROOMCHAT_LOG_FORMAT=log_format,
        ROOMCHAT_WORKERS="1",
        **{CONFIG_ENV: msgspec.json.encode(config, enc_hook=str).decode()},
    )
    return env


def _decode_path(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise TypeError(f"cannot decode {kind}")


def _status(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    ready: bool = False  # the current process listens
    error: str | None = None  # what the current process reported, if it could not start
    failed_starts: int = 0  # in a row
    backoff: float = 0.0
    replaced_pid: int | None = None
    started: float = 0.0

    @property
    def alive(self) -> asyncio.subprocess.Process | None:
        process = self.process
        return process if process is not None and process.returncode is None else None


@dataclass(eq=False)
class _Supervisor:
    config: ServerConfig
    count: int
    env: dict[str, str]
    summary: str
    workers: list[_Worker] = field(default_factory=list)
    up: bool = False  # every worker was ready once: restarts from now on
    fatal: str | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    all_ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in _SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            self.workers = [_Worker(index) for index in range(1, self.count + 1)]
            tasks = [asyncio.create_task(self._keep(worker)) for worker in self.workers]
            ready = asyncio.create_task(self.all_ready.wait())
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait([ready, stop], return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not self.stopping.is_set():
                self.up = True
                log.info(
                    "roomchat listening on %s, %d workers (pids %s) (%s)",
                    self.summary,
                    self.count,
                    ", ".join(str(w.process.pid) for w in self.workers if w.process),
                    limits_summary(self.config),
                )
            await stop
            clean = await self._wait_stopped(tasks)
        finally:
            for signum in _SIGNALS:
                loop.remove_signal_handler(signum)
        if self.fatal is not None:
            raise WorkersError(self.fatal)
        log.info("all workers stopped")
        return 0 if clean else 1

    def _on_signal(self, signum: int) -> None:
        if not self.stopping.is_set():
            log.info("%s: stopping the workers", signal.Signals(signum).name)
            self.stopping.set()
        self._send(signum)

    def _fail(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.fatal = reason
            self.stopping.set()
            self._send(signal.SIGTERM)

    def _send(self, signum: int) -> None:
        for worker in self.workers:
            if process := worker.alive:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def _wait_stopped(self, tasks: list[asyncio.Task[None]]) -> bool:
        """Wait for every worker to stop (SIGKILL past the deadline); whether all did
        cleanly."""
        try:
            async with asyncio.timeout(self.config.shutdown_grace + _STOP_EXTRA):
                await asyncio.gather(*tasks)
        except TimeoutError:
            for worker in self.workers:
                if process := worker.alive:
                    log.warning(
                        "worker %d (pid %d) did not stop: killing it", worker.index, process.pid
                    )
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*tasks)
        clean = True
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode not in _CLEAN_STOP:
                assert process.returncode is not None
                if self.fatal is None:
                    log.warning(
                        "worker %d (pid %d) stopped with %s",
                        worker.index,
                        process.pid,
                        _status(process.returncode),
                    )
                clean = False
        return clean

    async def _keep(self, worker: _Worker) -> None:
        """Run worker ``worker.index`` until the parent stops, replacing it as needed."""
        try:
            await self._keep_running(worker)
        except OSError as exc:  # cannot start a process at all (fork, EMFILE, ...)
            self._fail(f"cannot start worker {worker.index}: {exc.strerror or exc}")

    async def _keep_running(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        while True:
            process = await self._start(worker)
            returncode = await self._follow(worker, process)
            if self.stopping.is_set():
                return
            what = f"worker {worker.index} (pid {process.pid})"
            if not self.up:  # the first start: no retries
                self._fail(
                    worker.error or f"{what} exited before listening ({_status(returncode)})"
                )
                return
            uptime = loop.time() - worker.started
            if worker.ready:
                worker.failed_starts = 0
            else:
                worker.failed_starts += 1
                if worker.failed_starts >= MAX_FAILED_STARTS:
                    self._fail(
                        f"worker {worker.index} failed to start {worker.failed_starts} times "
                        f"in a row: {worker.error or _status(returncode)}"
                    )
                    return
            if worker.ready and uptime >= STABLE_AFTER:
                worker.backoff = 0.0
            else:
                worker.backoff = min(max(worker.backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
            log.warning(
                "%s %s, %s; starting another%s",
                what,
                "died" if worker.ready else "failed to start",
                worker.error or _status(returncode),
                f" in {worker.backoff:g} s" if worker.backoff else "",
            )
            worker.replaced_pid = process.pid
            if worker.backoff:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(worker.backoff):
                        await self.stopping.wait()
            if self.stopping.is_set():
                return

    async def _start(self, worker: _Worker) -> asyncio.subprocess.Process:
        env = dict(self.env)
        env[WORKER_INDEX_ENV] = str(worker.index)
        worker.ready = False
        worker.error = None
        worker.started = asyncio.get_running_loop().time()
        worker.process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "roomchat",
            "serve",
            stdin=asyncio.subprocess.PIPE,  # EOF when the parent is gone
            stdout=asyncio.subprocess.PIPE,  # "ready" / "error REASON"
            env=env,
            process_group=0,  # a terminal's Ctrl-C reaches the parent, which forwards it
        )
        log.debug("worker %d started (pid %d)", worker.index, process.pid)
        if self.stopping.is_set():  # a signal came while it was being started
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        return process

    async def _follow(self, worker: _Worker, process: asyncio.subprocess.Process) -> int:
        """Read what the worker reports until it exits; its exit status."""
        assert process.stdout is not None
        while line := await process.stdout.readline():
            word, _, rest = line.decode(errors="replace").strip().partition(" ")
            if word == "ready":
                worker.ready = True
                if worker.replaced_pid is not None:
                    log.info(
                        "worker %d replaced: pid %d is ready in place of %d",
                        worker.index,
                        process.pid,
                        worker.replaced_pid,
                    )
                if all(w.ready for w in self.workers):
                    self.all_ready.set()
            elif word == "error":
                worker.error = rest
        return await process.wait()


# -- a worker --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What makes ``roomchat serve`` worker ``index`` of a ``--workers`` parent."""

    index: int

    @classmethod
    def from_environment(cls) -> WorkerRole | None:
        """This process's role, or None when it is not a worker."""
        value = os.environ.get(WORKER_INDEX_ENV, "")
        return cls(int(value)) if value.isdigit() else None

    def configure(self, config: ServerConfig) -> ServerConfig:
        """The parent's configuration (from the environment), listening with
        SO_REUSEPORT; ``config`` (from this process's own command line) is the fallback."""
        text = os.environ.get(CONFIG_ENV)
        if text:
            config = msgspec.json.decode(text, type=ServerConfig, dec_hook=_decode_path)
        metrics = config.metrics
        if metrics is not None and metrics[1]:
            # One metrics endpoint per worker (Prometheus scrapes each): PORT, PORT+1, ...
            metrics = (metrics[0], metrics[1] + self.index - 1)
        return replace(config, reuse_port=True, metrics=metrics)

    def listening(self, server: ChatServer) -> None:
        """Log "ready", tell the parent, and stop if the parent goes away."""
        logging.getLogger("roomchat.server").info(
            "ready on %s with %d rooms, bus %s (pid %d)",
            ", ".join(server.addresses),
            len(server.rooms.details),
            server.bus.description,
            os.getpid(),
        )
        _tell_parent("ready")
        loop = asyncio.get_running_loop()

        def stdin_readable() -> None:
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            if not data:  # the parent is gone: stop as on SIGTERM
                loop.remove_reader(0)
                log.warning("the parent process is gone: stopping")
                os.kill(os.getpid(), signal.SIGTERM)

        loop.add_reader(0, stdin_readable)

    def failed(self, reason: str) -> NoReturn:
        """A start-up error: the parent reports it (once for all workers)."""
        _tell_parent("error " + " ".join(reason.split()))
        sys.exit(1)


def _tell_parent(line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(1, line.encode() + b"\n")
