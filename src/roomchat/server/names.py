"""Who holds which user name on this server (docs/protocol.md, "Names").

Names and v1's random user ids share one namespace: every session holds its user id
here from its login on (a random one first; a v2 ``hello`` may trade it for a chosen
name), and gives it back when it ends. Uniqueness ignores ASCII case (``name_key``); the
first session to take a name fixes its spelling, and further sessions of the same user
(the same spelling, with a valid token: session.py decides) share it.

In-process only: with the Redis bus each instance keeps its own registry, so two
instances may hand the same name to two users (docs/architecture.md says so).
"""

from __future__ import annotations

from roomchat.protocol import name_key

__all__ = ["NameRegistry"]


class NameRegistry:
    __slots__ = ("_held",)

    def __init__(self) -> None:
        # name key -> [spelling, number of sessions holding it]
        self._held: dict[str, list[str | int]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def holder(self, name: str) -> str | None:
        """The spelling under which ``name`` (ignoring case) is held, or None."""
        held = self._held.get(name_key(name))
        return None if held is None else str(held[0])

    def claim(self, name: str) -> bool:
        """Hold ``name`` for one more session: False if it is free (then claimed), True
        if the same spelling was held already (one more session of that user)."""
        key = name_key(name)
        held = self._held.get(key)
        if held is None:
            self._held[key] = [name, 1]
            return False
        held[1] = int(held[1]) + 1
        return True

    def claim_new(self, name: str) -> bool:
        """Hold ``name`` only if nobody does (a fresh random id); whether it was free."""
        key = name_key(name)
        if key in self._held:
            return False
        self._held[key] = [name, 1]
        return True

    def release(self, name: str) -> None:
        key = name_key(name)
        held = self._held.get(key)
        if held is None:
            return
        count = int(held[1]) - 1
        if count > 0:
            held[1] = count
        else:
            del self._held[key]
