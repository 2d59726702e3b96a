"""The Redis bus (docs/scaling.md), one module per job:

- :mod:`.url`: the bus URL (``redis://``, ``redis+cluster://``, ``redis+sentinel://``)
  -> :class:`RedisTarget`;
- :mod:`.resp`: one connection (RESP out, hiredis in, replies matched in order);
- :mod:`.nodes`: a node's connections and a cluster's slot map;
- :mod:`.bus`: :class:`RedisBus`, routing, the turn's writes, subscriptions, outages,
  leases;
- :mod:`.commands`: what presence, names and further room actions ask of the bus
  (``Commands``) and a room's keys by name (:class:`RoomKeys`);
- :mod:`.presence`, :mod:`.names`: the rules' Presence and SharedNames ports in Redis;
- :mod:`.scripts`: the Lua, one script per room action, atomic on the room's slot;
- :mod:`.stats`: the bus's counters and their /metrics names.
"""

from __future__ import annotations

from roomchat.server.bus.redis.bus import RedisBus
from roomchat.server.bus.redis.commands import Commands, RoomKeys
from roomchat.server.bus.redis.stats import BusStats
from roomchat.server.bus.redis.url import RedisTarget, parse_redis_url

__all__ = ["BusStats", "Commands", "RedisBus", "RedisTarget", "RoomKeys", "parse_redis_url"]
