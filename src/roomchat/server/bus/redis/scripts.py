"""The Lua scripts that keep a room's presence in Redis (run with EVALSHA).

Each runs atomically on the shard that owns the room's hash slot, so updating who is in
the room and publishing the announcement is one step: no instance can see an
announcement before the state, or two announcements in another order.

A room's keys (``KEYS``), all under one hash tag (commands.py ``RoomKeys``, whose
``script_keys`` are these in this order):

1. ``sessions`` (``s`` hash): session key -> "<instance id>\\n<user id>"
2. ``users`` (``u`` hash): user id -> number of its sessions in the room
3. ``order`` (``o`` sorted set): user id -> arrival number (``user_joined_room`` lists
   arrival order)
4. ``arrivals`` (``n``): counter of arrivals
5. ``left`` (``l`` hash): user id -> its encoded "left" event (the wire format is
   written by the protocol module, never here)
6. ``channel``: the room's channel
7. ``counter`` (``q``): the room's latest message sequence number (v2)
8. ``recent`` (``m`` list): the room's last runs of messages, each the channel's
   ``M<ts>\\n<lines>`` payload, newest last; the newest ends at the counter's number
   (commands.py ``numbered_runs`` counts back from it). Trimmed to about ``--history``
   runs by the posting instances (v2 history, and what a catch-up reads)
9. ``epoch`` (``e``): the epoch of the counter's numbering, set by the first JOIN or
   CATCH_UP that finds it missing (a new room, or a Redis that lost its data), or that
   finds the counter behind what the instance delivered (a failover that lost writes):
   the candidate the instance passes, with Redis's time, so it is new each time
10. ``changes`` (``x`` hash): q -> the ``message_edited`` / ``message_deleted`` event of
   a message edited or deleted (CHANGE), read by JOIN with the history; an admin's
   purge (FORGET) deletes the recent runs and the changes

Posting a run of messages is no script: it is a transaction (MULTI/EXEC) of ``INCRBY``
of the counter by the run's length, ``RPUSH`` of the run to ``recent`` and ``PUBLISH``
of the same bytes, and every few runs an ``LTRIM`` (bus.py ``publisher``; all of a
turn's consecutive posts on one node share one transaction, a room's merged into one
run). A script would cost Redis
four times the instructions per message (redis.call's own cost: benchmarks/README.md),
and the number need not travel: since the counter moves only in these transactions,
each atomic with its publish, every instance numbers the runs it receives by counting
on from the last *sync point* in the channel, a marker that carries the counter.

What goes through the channel, told apart by its first byte (the constants below, which
bus.py reads them with): an encoded event (:data:`EVENT`, ``{``) for every member;
``J<seq> <epoch> <session key>\\n<"joined" event or nothing>`` (:data:`MARKER`), a
join's marker (rooms.py) and a sync point; ``C<seq> <epoch> <instance id>``
(:data:`SYNCED`), a catch-up's sync point (CATCH_UP); ``O<instance id>\\n<event>``
(:data:`REASSERTED`), an announcement re-asserted after an outage, which the instance
that made it skips (its own members saw it already); ``M<ts>\\n<v1 user_message
lines>`` (:data:`MESSAGE`), a run of messages, numbered on from the last sync point:
every instance builds the v2 bytes from it with the protocol module; ``V<event>``
(:data:`RELAYED`), an edit, a deletion or typing for the v2 members; ``P``
(:data:`PURGED`), the room's history purged (FORGET).
"""

from __future__ import annotations

__all__ = [
    "COMMUNITY",
    "EVENT",
    "MARKER",
    "MESSAGE",
    "PURGED",
    "REASSERTED",
    "RELAYED",
    "SCRIPTS",
    "SYNCED",
]

#: The first byte of what a room's channel carries. The Lua below writes MARKER and
#: SYNCED itself, bus.py MESSAGE; events come encoded from the protocol module,
#: REASSERTED from ASSERT's caller (presence.py).
EVENT = b"{"
MARKER = b"J"
SYNCED = b"C"
REASSERTED = b"O"
MESSAGE = b"M"
#: A v2-only event for the room's v2 members (an edit, a deletion, typing): V<event>.
RELAYED = b"V"
#: An admin purged the room's history: every instance drops what it holds for joins.
PURGED = b"P"
#: A community change on the community's channel (community.py): D<json>.
COMMUNITY = b"D"

# ARGV: session key, instance id, user id, publish verb, "joined" event, "left" event,
# then the history wanted (v2): mode ('' none, 'h' the last N, 'a' after a number), N
# (at most the history size), after, then the instance's epoch candidate. Returns {users
# in arrival order, the room's latest sequence number, the recent runs oldest first, the
# epoch, the changes (HGETALL) when history was asked for} - the history taken atomically
# with the marker, so it ends exactly where the joiner's live messages begin. The marker
# carries the number and the epoch: a sync point for every instance's count.
JOIN = """
local marker = ''
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2] .. '\\n' .. ARGV[3]) == 1
   and redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[3])
  redis.call('HSET', KEYS[5], ARGV[3], ARGV[6])
  marker = ARGV[5]
end
local seq = redis.call('GET', KEYS[7]) or '0'
local epoch = redis.call('GET', KEYS[9])
if not epoch then
  local now = redis.call('TIME')
  epoch = (ARGV[10] or '') .. now[1] .. now[2]
  redis.call('SET', KEYS[9], epoch)
end
redis.call(ARGV[4], KEYS[6], 'J' .. seq .. ' ' .. epoch .. ' ' .. ARGV[1] .. '\\n' .. marker)
local entries = {}
if ARGV[7] ~= '' and tonumber(ARGV[8]) > 0 then
  -- Runs of messages: the one holding after + 1 may start before it (the room picks).
  entries = redis.call('LRANGE', KEYS[8], -tonumber(ARGV[8]), -1)
end
local changes = {}
if ARGV[7] ~= '' then
  changes = redis.call('HGETALL', KEYS[10])
end
return {redis.call('ZRANGE', KEYS[3], 0, -1), tonumber(seq), entries, epoch, changes}
"""

# An admin's purge of the room's history (FORGET): the recent runs and the changes go, the
# numbering and its epoch stay, and every instance hears P. KEYS: the room's; ARGV:
# publish verb.
FORGET = """
redis.call('DEL', KEYS[8], KEYS[10])
redis.call(ARGV[1], KEYS[6], 'P')
return 1
"""

# After an outage, what the instance missed of a room (CATCH_UP): the epoch of the
# room's numbering, its latest number and its recent runs (at most ARGV[4], oldest
# first), with a sync point (C) in the channel at that place: what the channel brought
# before it is in these runs. A missing epoch (a Redis that lost its data), or a counter
# behind ARGV[5], the last number the instance delivered in epoch ARGV[6] (a failover to
# a replica that had not got the latest writes), starts a new epoch: numbers already
# given out are never given again in one epoch (in the second case the recent runs
# and changes, numbered in the epoch that ends, go). KEYS: the room's. ARGV: instance id,
# publish verb, epoch candidate, count, last delivered, its epoch.
CATCH_UP = """
local seq = tonumber(redis.call('GET', KEYS[7]) or '0')
local epoch = redis.call('GET', KEYS[9])
local behind = epoch and epoch == ARGV[6] and seq < tonumber(ARGV[5])
if behind then  -- what it keeps was numbered in the epoch that ends here
  redis.call('DEL', KEYS[8], KEYS[10])
end
if not epoch or behind then
  local now = redis.call('TIME')
  epoch = ARGV[3] .. now[1] .. now[2]
  redis.call('SET', KEYS[9], epoch)
end
redis.call(ARGV[2], KEYS[6], 'C' .. seq .. ' ' .. epoch .. ' ' .. ARGV[1])
local entries = {}
if tonumber(ARGV[4]) > 0 then
  entries = redis.call('LRANGE', KEYS[8], -tonumber(ARGV[4]), -1)
end
return {epoch, seq, entries}
"""

# An edit or a deletion of message ARGV[2] (v2): kept for joins' history, then relayed
# to the room's v2 members behind its messages. KEYS: the room's script_keys. ARGV:
# publish verb, q, the event. Changes of messages long past the history are dropped.
CHANGE = """
redis.call('HSET', KEYS[10], ARGV[2], ARGV[3])
if redis.call('HLEN', KEYS[10]) > 1000 then
  local oldest = tonumber(ARGV[2]) - 1000
  for _, q in ipairs(redis.call('HKEYS', KEYS[10])) do
    if tonumber(q) < oldest then
      redis.call('HDEL', KEYS[10], q)
    end
  end
end
redis.call(ARGV[1], KEYS[6], 'V' .. ARGV[3])
return 1
"""

# ARGV: session key, user id, publish verb. Returns 1 if the session was there.
LEAVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  local left = redis.call('HGET', KEYS[5], ARGV[2])
  redis.call('HDEL', KEYS[5], ARGV[2])
  if left then
    redis.call(ARGV[3], KEYS[6], left)
  end
end
return 1
"""

# Make the room hold exactly the given sessions of one instance.
# ARGV: instance id, publish verb, prefix for announcements ('' or 'O<instance>\n'),
# then for each session to keep: session key, user id, "joined" event, "left" event.
# With no sessions it purges the instance (a dead one). Returns the sessions removed.
ASSERT = """
local instance, verb, prefix = ARGV[1], ARGV[2], ARGV[3]
local keep = {}
for i = 4, #ARGV, 4 do
  keep[ARGV[i]] = true
end
local removed = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local value = all[i + 1]
  local cut = string.find(value, '\\n', 1, true)
  if cut and string.sub(value, 1, cut - 1) == instance and not keep[all[i]] then
    local user = string.sub(value, cut + 1)
    redis.call('HDEL', KEYS[1], all[i])
    removed = removed + 1
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('ZREM', KEYS[3], user)
      local left = redis.call('HGET', KEYS[5], user)
      redis.call('HDEL', KEYS[5], user)
      if left then
        redis.call(verb, KEYS[6], prefix .. left)
      end
    end
  end
end
for i = 4, #ARGV, 4 do
  local user = ARGV[i + 1]
  if redis.call('HSETNX', KEYS[1], ARGV[i], instance .. '\\n' .. user) == 1
     and redis.call('HINCRBY', KEYS[2], user, 1) == 1 then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), user)
    redis.call('HSET', KEYS[5], user, ARGV[i + 3])
    redis.call(verb, KEYS[6], prefix .. ARGV[i + 2])
  end
end
return removed
"""

# -- user names, shared by every instance (roomchat.server.core.names) ----------------------
# KEYS, all under the registry's hash tag (one slot): 1. ``names`` hash: name key (lower
# case) -> spelling; 2. ``holds`` hash: name key -> sessions holding it, all instances;
# 3. ``held:<instance>`` hash: name key -> that instance's sessions holding it.

# ARGV: name key, spelling, how: 'new' (a random id: any holder is another user),
# 'name' (free only), 'proven' (free or held under this spelling: the same user),
# 'hold' (this instance holds it already). Returns nil when held, else the spelling of
# the user who holds it.
NAME_CLAIM = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and ARGV[3] ~= 'hold' and (ARGV[3] ~= 'proven' or current ~= ARGV[2]) then
  return current
end
if not current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return false
"""

# One session of the instance holding the name (ARGV[1], its key) ended. A release
# this instance does not hold (its claim was refused, or purged) changes nothing.
NAME_RELEASE = """
local mine = redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
if mine <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[1])
  if mine < 0 then
    return 0
  end
end
if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"""

# Make the registry hold exactly the given names for one instance: drop every hold it
# had, then hold each (name key, spelling, sessions) in ARGV. No ARGV: purge a dead
# instance. Returns how many of the given names another instance holds too (taken
# there during an outage of this one).
NAME_ASSERT = """
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  if redis.call('HINCRBY', KEYS[2], all[i], -tonumber(all[i + 1])) <= 0 then
    redis.call('HDEL', KEYS[2], all[i])
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('DEL', KEYS[3])
local clashes = 0
for i = 1, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 0 then
    clashes = clashes + 1
  end
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 2])
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 2])
end
return clashes
"""

# The community (community.py). MODERATE, on the room's slot (the server's: the
# registry's): KEYS policy (JSON), version, audit list; ARGV the version the action was
# decided on, the policy after it, its audit entry, the audit list's length. Stored only
# if nobody changed the room meanwhile (else 0: the instance reads it again and decides
# once more); returns the new version.
MODERATE = """
local version = tonumber(redis.call('GET', KEYS[2]) or '0')
if version ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
return redis.call('INCR', KEYS[2])
"""

# DM, on the registry's slot: KEYS the rooms hash, the DM's open sides (a set); ARGV the
# room's key, its info (JSON, kept if the room exists), the user, 1 (open) or 0 (close).
# Returns the sides open after it.
DM = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == '1' then
  redis.call('SADD', KEYS[2], ARGV[3])
else
  redis.call('SREM', KEYS[2], ARGV[3])
end
return redis.call('SMEMBERS', KEYS[2])
"""

SCRIPTS = {
    "join": JOIN,
    "leave": LEAVE,
    "assert": ASSERT,
    "change": CHANGE,
    "forget": FORGET,
    "catch_up": CATCH_UP,
    "name_claim": NAME_CLAIM,
    "name_release": NAME_RELEASE,
    "name_assert": NAME_ASSERT,
    "moderate": MODERATE,
    "dm": DM,
}
