"""Real redis-server processes for tests: one server, or a 3-master cluster.

Plain Python (usable from scripts and benchmarks too); the pytest fixtures that wrap it
are registered in conftest.py. Every server listens on 127.0.0.1 on a free port, keeps
nothing on disk (``--save ''``, ``--appendonly no``), lives in its own temporary
directory and is killed at interpreter exit if a test forgot it. Nothing waits with a
fixed sleep: each step polls for the state it needs, with a deadline.

The binaries: ``$ROOMCHAT_REDIS_SERVER`` if set, else ``redis-server`` on PATH;
``redis-cli`` next to that server, else on PATH. ``make test`` runs
``scripts/ensure-redis`` first, which installs them when missing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
CLUSTER_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Free ports for cluster nodes stay at or below this, so port + 10000 (the cluster bus
# port) is a valid port too.
MAX_CLUSTER_PORT = 65535 - 10000

T = TypeVar("T")


class RedisError(RuntimeError):
    """A redis-server or redis-cli did not do what a test helper needed."""


# --------------------------------------------------------------------------- binaries


def redis_server_binary() -> str:
    """Path of the redis-server to run: $ROOMCHAT_REDIS_SERVER, else PATH."""
    env = os.environ.get("ROOMCHAT_REDIS_SERVER")
    if env:
        return env
    found = shutil.which("redis-server")
    if found is None:
        raise RedisError(
            "no redis-server on PATH: run scripts/ensure-redis (make test does), "
            "or set ROOMCHAT_REDIS_SERVER=/path/to/redis-server"
        )
    return found


def redis_cli_binary() -> str:
    """Path of redis-cli: next to the redis-server in use, else PATH."""
    beside = Path(redis_server_binary()).with_name("redis-cli")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise RedisError("no redis-cli next to redis-server nor on PATH")
    return found


# ------------------------------------------------------------------------------ ports


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # The same option redis-server sets, so a port in TIME_WAIT counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A port nobody listens on now (bind port 0, close). With ``cluster_bus``, one at
    most 55535 whose bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if not cluster_bus:
            return port
        if port <= MAX_CLUSTER_PORT and _port_is_free(port + 10000):
            return port
    raise RedisError("could not find a free port")


# ---------------------------------------------------------------------------- polling


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.01) -> T:
    """Call ``check`` until it returns something other than None/False; RedisError
    naming ``what`` after ``timeout`` seconds. The poll interval grows to 0.1 s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise RedisError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 2, 0.1)


# Last resort: every process still alive at interpreter exit is killed. Strong
# references: a RedisServer dropped without close() must not escape this.
_live: set[RedisServer] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.close(kill=True)


# ----------------------------------------------------------------------- RedisServer


class RedisServer:
    """One real redis-server on 127.0.0.1.

    >>> srv = RedisServer.launch("--client-output-buffer-limit", "pubsub 64kb 0 0")
    >>> srv.url, srv.cli("PING")
    ('redis://127.0.0.1:40123', 'PONG')
    >>> srv.restart()  # same port; data is not kept (no persistence)
    >>> srv.close()
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        cluster: bool = False,
        directory: Path | None = None,
    ) -> None:
        self.cluster = cluster
        self.port = port if port is not None else free_port(cluster_bus=cluster)
        self.extra_args = list(extra_args)
        self._owns_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix=f"roomchat-redis-{self.port}-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @classmethod
    def launch(
        cls, *extra_args: str, cluster: bool = False, timeout: float = START_TIMEOUT
    ) -> RedisServer:
        """Start a server on a free port; return once it answers PING."""
        server = cls(extra_args, cluster=cluster)
        try:
            server.start(timeout=timeout)
        except BaseException:
            server.close(kill=True)
            raise
        return server

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _command(self) -> list[str]:
        cmd = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", HOST,
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--protected-mode", "no",
        ]  # fmt: skip
        if self.cluster:
            cmd += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000",
            ]  # fmt: skip
        return cmd + self.extra_args

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (or start again) this server on its port and wait for PING. Retries
        while the port is briefly unavailable (the old process's socket lingering)."""
        if self.running:
            raise RedisError(f"redis-server on port {self.port} is already running")
        deadline = time.monotonic() + timeout
        while True:
            self._spawn()
            try:
                wait_for(
                    self._ready_or_dead,
                    max(0.0, deadline - time.monotonic()),
                    f"redis-server on port {self.port} to answer PING",
                )
            except RedisError:
                self._terminate(signal.SIGKILL)
                raise RedisError(
                    f"redis-server on port {self.port} did not start:\n{self.log_tail()}"
                ) from None
            if self.running:
                _live.add(self)
                return
            # It exited: most likely "Address already in use". Try again until the
            # deadline; the port is ours (we chose it free), so it frees up soon.
            if time.monotonic() >= deadline:
                raise RedisError(
                    f"redis-server on port {self.port} exited at start:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _spawn(self) -> None:
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in _terminate/close)
        self.process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,  # a Ctrl-C in the test run does not hit it first
        )

    def _ready_or_dead(self) -> bool:
        """True once the server answers PING or once the process has exited."""
        if not self.running:
            return True
        return self.ping()

    def ping(self, timeout: float = 0.5) -> bool:
        """Whether the server answers PING with PONG now (raw RESP, no client)."""
        try:
            with socket.create_connection((HOST, self.port), timeout=timeout) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _terminate(self, sig: signal.Signals) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None
        _live.discard(self)

    def stop(self) -> None:
        """SIGTERM and wait for the process to exit. The directory (and a cluster
        node's nodes.conf) is kept, so ``start()``/``restart()`` can bring it back."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL (a crash: no goodbye to clients, nothing saved) and reap it."""
        self._terminate(signal.SIGKILL)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop if running (SIGTERM), then start again on the same port."""
        self.stop()
        self.start(timeout=timeout)

    def close(self, *, kill: bool = False) -> None:
        """Stop for good and remove the temporary directory."""
        self._terminate(signal.SIGKILL if kill else signal.SIGTERM)
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``redis-cli -h 127.0.0.1 -p PORT ARGS...``; its stdout, stripped.
        Raises RedisError if redis-cli fails or the reply is an error (``ERR ...``)."""
        done = subprocess.run(
            [redis_cli_binary(), "-h", HOST, "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        out = done.stdout.strip()
        if done.returncode != 0 or out.startswith(("ERR ", "(error)")):
            raise RedisError(f"redis-cli {' '.join(args)}: {out} {done.stderr.strip()}")
        return out

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous redis-py client for this server (decoded replies)."""
        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis(host=HOST, port=self.port, **kwargs)

    def command(self, *args: Any) -> Any:
        """Run one command through a short-lived synchronous client; its reply."""
        with self.client() as c:
            return c.execute_command(*args)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.address} {state}>"

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- RedisCluster


class RedisCluster:
    """A Redis Cluster of ``masters`` (default 3) masters and no replicas, each a
    RedisServer with cluster mode on; created with ``redis-cli --cluster create``."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @classmethod
    def launch(cls, masters: int = 3, extra_args: Sequence[str] = ()) -> RedisCluster:
        """Start the nodes, create the cluster, wait for cluster_state:ok everywhere."""
        nodes: list[RedisServer] = []
        cluster = cls(nodes)
        try:
            ports: set[int] = set()
            for _ in range(masters):
                node = RedisServer(extra_args, cluster=True)
                while node.port in ports:  # two free_port() calls can return the same
                    node.close()
                    node = RedisServer(extra_args, cluster=True)
                ports.add(node.port)
                nodes.append(node)
                node.start()
            create = [redis_cli_binary(), "--cluster", "create"]
            create += [n.address for n in nodes]
            create += ["--cluster-replicas", "0", "--cluster-yes"]
            done = subprocess.run(
                create,
                capture_output=True,
                text=True,
                timeout=CLUSTER_TIMEOUT,
                check=False,
            )
            if done.returncode != 0:
                raise RedisError(f"redis-cli --cluster create failed:\n{done.stdout}")
            cluster.wait_ok()
        except BaseException:
            cluster.close(kill=True)
            raise
        return cluster

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(HOST, n.port) for n in self.nodes]

    def node_by_port(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def node_id(self, node: RedisServer) -> str:
        return str(node.command("CLUSTER", "MYID"))

    @staticmethod
    def _cluster_slots(node: RedisServer) -> list[tuple[int, int, int]]:
        """[(first slot, last slot, owner port)] as ``node`` sees it (CLUSTER SLOTS)."""
        with node.client() as c:
            raw = c.execute_command("CLUSTER", "SLOTS")
        # Each entry: [start, end, [host, port, id, ...], replicas...]
        return sorted((int(e[0]), int(e[1]), int(e[2][1])) for e in raw)

    def _slot_owners(self, node: RedisServer) -> list[tuple[int, int, int]] | None:
        try:
            return self._cluster_slots(node)
        except redis.RedisError:
            return None

    def _ok_everywhere(self) -> bool:
        views = []
        for node in self.nodes:
            if not node.running:
                return False
            try:
                info = node.cli("CLUSTER", "INFO")
            except (RedisError, subprocess.TimeoutExpired):
                return False
            if "cluster_state:ok" not in info:
                return False
            views.append(self._slot_owners(node))
        # Every node must also agree on who owns what (gossip has converged).
        return all(v is not None for v in views) and all(v == views[0] for v in views)

    def wait_ok(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Wait until every node reports cluster_state:ok and all agree on the slots."""
        wait_for(self._ok_everywhere, timeout, "cluster_state:ok on every node")

    def keyslot(self, key: str) -> int:
        return int(self.nodes[0].cli("CLUSTER", "KEYSLOT", key))

    def node_for_slot(self, slot: int) -> RedisServer:
        """The master that owns ``slot``, according to the first running node."""
        for node in self.nodes:
            if node.running:
                for first, last, port in self._cluster_slots(node):
                    if first <= slot <= last:
                        return self.node_by_port(port)
                break
        raise RedisError(f"no node owns slot {slot}")

    def node_for_key(self, key: str) -> RedisServer:
        """The master owning the hash slot of ``key`` (a shard channel name works too:
        channels hash like keys, ``{tag}`` included)."""
        return self.node_for_slot(self.keyslot(key))

    def migrate_slot(
        self, slot: int, target: RedisServer, timeout: float = CLUSTER_TIMEOUT
    ) -> RedisServer:
        """Move ``slot`` (and its keys) to ``target`` with the CLUSTER SETSLOT / MIGRATE
        sequence; return the former owner. Waits until every node agrees."""
        source = self.node_for_slot(slot)
        if source is target:
            return source
        src_id, dst_id = self.node_id(source), self.node_id(target)
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            source.command("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)
        # Target first, then source, then the rest (as redis-cli --cluster does).
        for node in [target, source, *(n for n in self.nodes if n not in (source, target))]:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

        def moved() -> bool:
            return self._ok_everywhere() and self.node_for_slot(slot) is target

        wait_for(moved, timeout, f"slot {slot} to be owned by {target.address} everywhere")
        return source

    def restart_node(self, node: RedisServer, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with ``kill``) and start ``node`` again on the
        same port with its nodes.conf, then wait for cluster_state:ok everywhere.
        Its data is gone (no persistence); its slots stay its own."""
        if kill:
            node.kill()
        else:
            node.stop()
        node.start()
        self.wait_ok()

    def stop(self) -> None:
        """Stop every node (keeping their directories)."""
        for node in self.nodes:
            node.stop()

    def close(self, *, kill: bool = False) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.close(kill=kill)

    def __iter__(self) -> Iterator[RedisServer]:
        return iter(self.nodes)

    def __repr__(self) -> str:
        return f"<RedisCluster {self.url}>"

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------- RedisSentinelSet


class RedisSentinel(RedisServer):
    """A redis-server in sentinel mode (``--sentinel``), watching one master as
    ``service``. Its configuration file is its own (sentinels rewrite theirs)."""

    def __init__(self, service: str, master: RedisServer, down_after_ms: int) -> None:
        super().__init__()
        self.service = service
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\n"
            f"bind {HOST}\n"
            f"dir {self.dir}\n"
            "protected-mode no\n"
            f"sentinel monitor {service} {HOST} {master.port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.conf = conf

    def _command(self) -> list[str]:
        return [redis_server_binary(), str(self.conf), "--sentinel"]

    def master_port(self) -> int | None:
        """The master's port as this sentinel names it now (None: it knows none)."""
        reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(reply[1]) if reply else None


class RedisSentinelSet:
    """A master, one replica of it and one sentinel (quorum 1) watching them: the
    smallest high-availability setup that fails over. ``url`` is the bus URL."""

    def __init__(self, master: RedisServer, replica: RedisServer, sentinel: RedisSentinel):
        self.master, self.replica, self.sentinel = master, replica, sentinel

    @classmethod
    def launch(cls, service: str = "chat", down_after_ms: int = 1000) -> RedisSentinelSet:
        master = RedisServer.launch()
        servers: list[RedisServer] = [master]
        try:
            replica = RedisServer.launch("--replicaof", HOST, str(master.port))
            servers.append(replica)
            wait_for(
                lambda: "master_link_status:up" in replica.cli("INFO", "replication"),
                START_TIMEOUT,
                "the replica to be in sync",
            )
            sentinel = RedisSentinel(service, master, down_after_ms)
            servers.append(sentinel)
            sentinel.start()

            def replica_known() -> bool:
                # redis-py parses each replica into a dict (is_sdown, port, ...).
                replicas = sentinel.command("SENTINEL", "REPLICAS", service)
                return any(
                    int(entry["port"]) == replica.port and not entry.get("is_sdown")
                    for entry in replicas
                )

            wait_for(replica_known, CLUSTER_TIMEOUT, "the sentinel to know the replica")
        except BaseException:
            for server in servers:
                server.close(kill=True)
            raise
        return cls(master, replica, sentinel)

    @property
    def url(self) -> str:
        return f"redis+sentinel://{self.sentinel.address}/{self.sentinel.service}"

    def wait_failover(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Wait until the sentinel names the replica as the master, and it is one."""
        wait_for(
            lambda: (
                self.sentinel.master_port() == self.replica.port
                and "role:master" in self.replica.cli("INFO", "replication")
            ),
            timeout,
            "the sentinel to promote the replica",
        )

    def close(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            server.close(kill=True)

    def __enter__(self) -> RedisSentinelSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
