"""Where the Redis bus connects: ``redis://``, ``redis+cluster://`` and
``redis+sentinel://`` URLs.

Its own module because the worker supervisor (ops/workers.py) checks a bus URL without
starting a bus, and because the parser is the one place the URL forms are defined
(docs/scaling.md lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from roomchat.server.core.ports import BusError

__all__ = ["RedisTarget", "parse_redis_url"]


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed bus URL: one server (with a database), a cluster's seed nodes, or the
    sentinels that know a master by ``service`` (its name in their configuration)."""

    cluster: bool
    hosts: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None
    #: The master's name in the sentinels' configuration (redis+sentinel://), else None.
    service: str | None = None
    #: The sentinels' own password (``?sentinel_password=``), if they require one.
    sentinel_password: str | None = None

    @property
    def display(self) -> str:
        """The URL without credentials (for logs: a password never reaches them)."""
        nodes = ",".join(f"{host}:{port}" for host, port in self.hosts)
        if self.service is not None:
            return f"redis+sentinel://{nodes}/{self.service}" + (f"/{self.db}" if self.db else "")
        return f"{'redis+cluster' if self.cluster else 'redis'}://{nodes}" + (
            f"/{self.db}" if self.db else ""
        )


def parse_redis_url(url: str) -> RedisTarget:
    """``redis://[[user]:password@]HOST[:PORT][/DB]``,
    ``redis+cluster://[[user]:password@]HOST:PORT[,HOST:PORT...]`` or
    ``redis+sentinel://[[user]:password@]HOST[:PORT][,HOST:PORT...]/SERVICE[/DB]
    [?sentinel_password=...]`` (the credentials are the master's; sentinels listen on
    26379 unless told)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "redis+cluster", "redis+sentinel"):
        raise BusError(f"bus URL {url!r}: expected redis://, redis+cluster:// or redis+sentinel://")
    sentinel = scheme == "redis+sentinel"
    netloc = parts.netloc
    credentials, _, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if credentials:
        user, sep, secret = credentials.partition(":")
        username, password = (
            (unquote(user) or None, unquote(secret)) if sep else (None, unquote(user))
        )
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, sep, port_text = item.strip().rpartition(":")
        if not sep:
            host, port_text = port_text, "26379" if sentinel else "6379"
        host = host.strip("[]")
        if not host:
            raise BusError(f"bus URL {url!r}: no host")
        try:
            port = int(port_text)
        except ValueError:
            raise BusError(f"bus URL {url!r}: port {port_text!r} is not a number") from None
        if not 0 < port < 65536:
            raise BusError(f"bus URL {url!r}: port {port} out of range")
        hosts.append((host, port))
    cluster = scheme == "redis+cluster"
    if not cluster and not sentinel and len(hosts) != 1:
        raise BusError(f"bus URL {url!r}: one host for redis://, several need redis+cluster://")
    path = parts.path.strip("/")
    service: str | None = None
    sentinel_password: str | None = None
    if sentinel:
        service, _, path = path.partition("/")
        if not service:
            raise BusError(f"bus URL {url!r}: name the master: redis+sentinel://HOST/SERVICE")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"sentinel_password"}
        if unknown:
            raise BusError(f"bus URL {url!r}: unknown option {sorted(unknown)[0]!r}")
        if "sentinel_password" in query:
            sentinel_password = query["sentinel_password"][-1]
    elif parts.query:
        raise BusError(f"bus URL {url!r}: options (?...) are for redis+sentinel:// only")
    db = 0
    if path:
        if cluster:
            raise BusError(f"bus URL {url!r}: a Redis Cluster has no databases")
        try:
            db = int(path)
        except ValueError:
            raise BusError(f"bus URL {url!r}: database {path!r} is not a number") from None
    return RedisTarget(cluster, tuple(hosts), db, username, password, service, sentinel_password)
