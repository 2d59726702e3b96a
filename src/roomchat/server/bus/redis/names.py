"""The user names of every instance, kept in Redis by scripts.py ``NAME_*``, for the
rules' SharedNames port (core/ports.py; core/names.py holds this process's names).

It reaches Redis only through the bus's command interface (commands.py ``Commands``):
every command goes to the registry's node (one hash tag, one slot) in the turn's
pipeline, and a claim's answer comes with Redis' reply.
"""

from __future__ import annotations

import logging
from typing import Any

from roomchat.protocol import name_key
from roomchat.server.bus.redis.commands import Commands
from roomchat.server.bus.redis.resp import ReplyError
from roomchat.server.core.ports import Answer, HeldNames

__all__ = ["RedisNames"]

log = logging.getLogger("roomchat.bus")


class RedisNames:
    """The user names of every instance, kept in Redis (scripts.py ``NAME_*``), for
    roomchat.server.core.names. Every command goes to the registry's node in the turn's
    pipeline; a claim's answer comes with Redis' reply."""

    def __init__(self, bus: Commands) -> None:
        self._bus = bus
        #: Set by the server: this process's registry (asserted again after an outage).
        self.local: HeldNames | None = None
        # KEYS of the NAME_* scripts but the last (held:<instance>): scripts.py.
        self._names = bus.registry_key("names")
        self._holds = bus.registry_key("holds")
        self.clashes = 0  # names found held elsewhere too when asserted after an outage

    def attach(self, local: HeldNames) -> None:
        self.local = local

    def _keys_of(self, instance: str) -> tuple[bytes, bytes, bytes]:
        return (self._names, self._holds, self._bus.registry_key("held:" + instance))

    def claim(self, name: str, how: str, answer: Answer) -> None:
        bus = self._bus
        if not bus.connected:
            answer(None)  # an outage: this instance decides alone
            return

        def reply(holder: Any) -> None:
            if isinstance(holder, Exception):
                if isinstance(holder, ReplyError):
                    bus.report_error(holder, f"claim of name {name!r}")
                answer(None)  # as in an outage; asserted again on reconnection
            else:
                answer(None if holder is None else holder.decode())

        keys = self._keys_of(bus.instance_id)
        bus.queue_registry(bus.script("name_claim", keys, name_key(name), name, how), reply)

    def hold(self, name: str) -> None:
        self._tell("name_claim", name, name_key(name), name, "hold")

    def release(self, name: str) -> None:
        self._tell("name_release", name, name_key(name))

    def _tell(self, script: str, name: str, *args: str) -> None:
        bus = self._bus
        if not bus.connected:
            return  # the registry is asserted again on reconnection

        def reply(answer: Any) -> None:
            if isinstance(answer, ReplyError):
                bus.report_error(answer, f"{script} of name {name!r}")

        bus.queue_registry(bus.script(script, self._keys_of(bus.instance_id), *args), reply)

    async def reassert(self) -> None:
        """After an outage: the registry holds exactly this instance's names."""
        args: list[str | int] = []
        for name, count in self.local.held() if self.local is not None else ():
            args += [name_key(name), name, count]
        clashes = int(await self._assert(self._bus.instance_id, args))
        if clashes:
            self.clashes += clashes
            log.warning(
                "redis bus: %d names were taken on another instance during the outage too "
                "(both keep them until their sessions end)",
                clashes,
            )

    async def purge(self, instance: str) -> None:
        """Drop every name ``instance`` (a dead one, or this one closing) held."""
        await self._assert(instance, [])

    async def _assert(self, instance: str, args: list[str | int]) -> Any:
        bus = self._bus
        return await bus.call_registry(bus.script("name_assert", self._keys_of(instance), *args))
