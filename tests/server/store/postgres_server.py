"""A real, throwaway PostgreSQL server for tests (plain Python; the fixtures that wrap it
are in conftest.py).

``initdb`` makes a cluster in a temporary directory (user ``roomchat``, trust
authentication, no fsync); ``postgres`` serves it on 127.0.0.1 on a free port, with its
Unix socket in the same directory. As root (PostgreSQL refuses to run as root) both run
as ``nobody``, who owns the directory. :meth:`PostgresServer.kill` is a crash (SIGKILL to
the postmaster and every backend); :meth:`PostgresServer.start` brings the same cluster
back on the same port. Nothing waits with a fixed sleep: each step polls ``pg_isready``
with a deadline. Every server still running at interpreter exit is killed.

The binaries (initdb, postgres, pg_isready, psql): ``$ROOMCHAT_PG_BIN`` if set, else the
newest ``/usr/lib/postgresql/*/bin`` (Debian), else ``pg_config --bindir``, else PATH.
``scripts/ensure-postgresql`` installs them when missing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
USER = "roomchat"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Who runs the server when the tests run as root.
UNPRIVILEGED = "nobody"


class PostgresError(RuntimeError):
    """initdb, postgres or psql did not do what a test needed."""


def bin_dir() -> Path:
    """Where PostgreSQL's server binaries are (see the module docstring)."""
    env = os.environ.get("ROOMCHAT_PG_BIN")
    if env:
        return Path(env)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for candidate in reversed(debian):
        if (candidate / "initdb").is_file():
            return candidate
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out and (Path(out) / "initdb").is_file():
                return Path(out)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresError(
        "no PostgreSQL server binaries (initdb, postgres): run scripts/ensure-postgresql "
        "(make test does), or set ROOMCHAT_PG_BIN=/usr/lib/postgresql/NN/bin"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is alive and not a zombie (Linux /proc;
    elsewhere False)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


_live: set[PostgresServer] = set()
#: The directory of this process's first cluster, never started: copied by initdb().
_template: Path | None = None


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.close()
    if _template is not None:
        shutil.rmtree(_template, ignore_errors=True)


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, served on 127.0.0.1.

    >>> srv = PostgresServer.launch()
    >>> url = srv.create_database("t1")  # postgresql://roomchat@127.0.0.1:PORT/t1
    >>> srv.kill(); srv.start()          # a crash, then the same cluster back
    >>> srv.close()
    """

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="roomchat-pg-"))
        self.data = self.dir / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            who = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.dir, who.pw_uid, who.pw_gid)
            self._as = {"user": who.pw_uid, "group": who.pw_gid, "extra_groups": []}

    @classmethod
    def launch(cls, timeout: float = START_TIMEOUT) -> PostgresServer:
        """initdb, start, wait until it accepts connections."""
        server = cls()
        try:
            server.initdb()
            server.start(timeout=timeout)
        except BaseException:
            server.close()
            raise
        return server

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@{HOST}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def initdb(self) -> None:
        """A new cluster in the data directory: a copy of this process's first one (an
        initdb takes a second or two; a copy a few milliseconds)."""
        global _template
        if _template is None:
            template = self.dir.with_name(self.dir.name + "-template")
            template.mkdir(mode=0o700)
            if self._as:
                os.chown(template, self._as["user"], self._as["group"])
            self._run_as(
                str(self.bin / "initdb"), "-D", str(template / "data"), "-U", USER,
                "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
            _template = template
        self._run_as("cp", "-a", str(_template / "data"), str(self.data))

    def _run_as(self, *command: str) -> None:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=self.dir,
            timeout=120,
            check=False,
            **self._as,
        )
        if done.returncode != 0:
            raise PostgresError(f"{command[0]} failed:\n{done.stdout}\n{done.stderr}")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (again) on the same port and data directory; return once it accepts
        connections (after a kill, once crash recovery is over)."""
        if self.running:
            raise PostgresError(f"PostgreSQL on port {self.port} is already running")
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in _terminate/close)
        command = [
            str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.dir),
            "-c", f"listen_addresses={HOST}",
            "-c", "fsync=off",
            "-c", "max_connections=50",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,  # its own process group: kill() takes every backend
            **self._as,
        )
        _live.add(self)
        deadline = time.monotonic() + timeout
        interval = 0.01
        while not self._ready():
            if not self.running:
                raise PostgresError(f"postgres on port {self.port} exited:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                self._terminate(signal.SIGKILL)
                raise PostgresError(
                    f"postgres on port {self.port} not ready after {timeout:.0f}s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(interval)
            interval = min(interval * 2, 0.1)

    def _ready(self) -> bool:
        done = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", HOST, "-p", str(self.port), "-U", USER],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return done.returncode == 0

    def _terminate(self, sig: signal.Signals) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGKILL:  # the postmaster and every backend at once
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        if proc is not None and sig == signal.SIGKILL:
            # The backends die with it; wait until none is left running (a restart
            # refuses shared memory that a process is still attached to).
            deadline = time.monotonic() + STOP_TIMEOUT
            while _group_running(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """A crash: SIGKILL to the postmaster and its backends (clients see their
        connections drop, nothing is shut down cleanly)."""
        self._terminate(signal.SIGKILL)

    def stop(self) -> None:
        """A fast shutdown (SIGINT): clients are disconnected, the cluster is kept."""
        self._terminate(signal.SIGINT)

    def close(self) -> None:
        """Stop for good and remove the directory."""
        self._terminate(signal.SIGKILL)
        _live.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL string with psql; its output (unaligned, tuples only)."""
        command = [
            str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", HOST, "-p", str(self.port), "-U", USER, "-d", database, "-c", sql,
        ]  # fmt: skip
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise PostgresError(f"psql {sql!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PostgresServer {HOST}:{self.port} {state}>"
