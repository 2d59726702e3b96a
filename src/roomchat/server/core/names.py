"""Who holds which user name (docs/protocol.md, "Names").

Names and v1's random user ids share one namespace: every session holds its user id
here from its login on (a random one first; a v2 ``hello`` may trade it for a chosen
name), and gives it back when it ends. Uniqueness ignores ASCII case (``name_key``); the
first session to take a name fixes its spelling, and further sessions of the same user
(the same spelling, proven with a token: session.py checks the token) share it.

:class:`NameRegistry` is this process's registry. With several instances (the Redis
bus) it also has a :class:`SharedNames`, the names of every instance (bus/redis/names.py):

- a chosen name that no session of this process holds is asked of the shared registry,
  and the answer comes later (the session waits, reading nothing, as for a join);
- so is a random id (the login waits for it): if another instance's user has it, the
  session draws another;
- the shared registry counts each instance's sessions per name: every hold is counted
  there and every session's end given back, so a crashed instance's names can be freed
  by the others (its lease) and an outage's can be asserted again.
"""

from __future__ import annotations

from collections.abc import Callable

from roomchat.protocol import name_key
from roomchat.server.core.ports import Answer, SharedNames

__all__ = ["NameRegistry"]


class NameRegistry:
    __slots__ = ("_held", "shared")

    def __init__(self, shared: SharedNames | None = None) -> None:
        # name key -> [spelling, number of this process's sessions holding it]
        self._held: dict[str, list[str | int]] = {}
        self.shared = shared
        if shared is not None:
            shared.attach(self)

    def __len__(self) -> int:
        return len(self._held)

    def holder(self, name: str) -> str | None:
        """The spelling under which ``name`` (ignoring case) is held here, or None."""
        held = self._held.get(name_key(name))
        return None if held is None else str(held[0])

    def request(self, name: str, proven: bool, answer: Answer) -> None:
        """Claim ``name`` for a session: ``answer(None)`` when it is the session's
        (held from then on), ``answer(spelling)`` when another user holds it. At once
        when this process decides, after a round trip when the shared registry does."""
        key = name_key(name)
        held = self._held.get(key)
        if held is not None:
            if held[0] != name or not proven:
                answer(str(held[0]))
                return
            held[1] = int(held[1]) + 1  # one more session of the same user
            if self.shared is not None:
                self.shared.hold(name)
            answer(None)
            return
        if self.shared is None:
            self._held[key] = [name, 1]
            answer(None)
            return

        def shared_answer(holder: str | None) -> None:
            if holder is None:
                self._take(key, name)
            answer(holder)

        self.shared.claim(name, "proven" if proven else "name", shared_answer)

    def _take(self, key: str, name: str) -> None:
        # The shared registry counted this hold: so does this process (another session
        # may have taken the name here while the claim was under way).
        held = self._held.get(key)
        if held is None:
            self._held[key] = [name, 1]
        else:
            held[1] = int(held[1]) + 1

    def claim_new(self, name: str) -> bool:
        """Hold ``name`` here only if nobody here does (a fresh random id); whether it
        was free. With a shared registry, :meth:`confirm_new` asks the others."""
        key = name_key(name)
        if key in self._held:
            return False
        self._held[key] = [name, 1]
        return True

    def draw_new(self, draw: Callable[[], str]) -> str:
        """A random id from ``draw`` that nobody here holds, held from now on."""
        name = draw()
        while not self.claim_new(name):
            name = draw()
        return name

    def confirm_new(self, name: str, answer: Answer) -> None:
        """Claim a random id taken with :meth:`claim_new` from the shared registry:
        ``answer(None)``, or the holder's spelling (then :meth:`forget` it)."""
        if self.shared is None:
            answer(None)
        else:
            self.shared.claim(name, "new", answer)

    def forget(self, name: str) -> None:
        """Drop a hold here that the shared registry refused (nothing to give back)."""
        self._drop(name)

    def release(self, name: str) -> None:
        """One session holding ``name`` has ended."""
        if self._drop(name) and self.shared is not None:
            self.shared.release(name)

    def _drop(self, name: str) -> bool:
        """One hold fewer here; whether there was one."""
        key = name_key(name)
        held = self._held.get(key)
        if held is None:
            return False
        count = int(held[1]) - 1
        if count > 0:
            held[1] = count
        else:
            del self._held[key]
        return True

    def held(self) -> list[tuple[str, int]]:
        """Every name this process holds and by how many of its sessions (to assert
        them again after an outage)."""
        return [(str(spelling), int(count)) for spelling, count in self._held.values()]
