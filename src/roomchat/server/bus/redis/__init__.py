"""The Redis bus (docs/scaling.md)."""

from __future__ import annotations

from roomchat.server.bus.redis.bus import RedisBus, parse_redis_url

__all__ = ["RedisBus", "parse_redis_url"]
