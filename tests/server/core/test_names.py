"""The name registry (names.py): one namespace for names and random ids, uniqueness
ignoring ASCII case, the same spelling shared by proven sessions, and the shared
registry of several instances answering later."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from roomchat.server.core.names import NameRegistry
from roomchat.server.core.ports import Answer, HeldNames

Held = list[str | None]


def answers() -> tuple[Held, Answer]:
    """A list and the answer callback that appends to it."""
    got: Held = []
    return got, got.append


class FakeShared:
    """A SharedNames recording every call; claims wait until the test answers them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.pending: list[tuple[str, str, Answer]] = []
        self.local: HeldNames | None = None

    def claim(self, name: str, how: str, answer: Answer) -> None:
        self.calls.append(("claim", name, how))
        self.pending.append((name, how, answer))

    def hold(self, name: str) -> None:
        self.calls.append(("hold", name))

    def release(self, name: str) -> None:
        self.calls.append(("release", name))

    def attach(self, local: HeldNames) -> None:
        self.calls.append(("attach",))
        self.local = local

    def answer(self, holder: str | None) -> None:
        """Answer the oldest pending claim."""
        _, _, answer = self.pending.pop(0)
        answer(holder)


def drawing(*names: str) -> tuple[Callable[[], str], list[str]]:
    """A draw function handing out ``names`` in order, and the list of what it drew."""
    drawn: list[str] = []
    source: Iterator[str] = iter(names)

    def draw() -> str:
        name = next(source)
        drawn.append(name)
        return name

    return draw, drawn


# -- one process ---------------------------------------------------------------------


def test_a_free_name_is_granted_at_once_and_held() -> None:
    names = NameRegistry()
    got, answer = answers()
    names.request("Alice", False, answer)
    assert got == [None]
    assert names.holder("Alice") == "Alice"
    assert names.held() == [("Alice", 1)]
    assert len(names) == 1


def test_holder_ignores_case_and_answers_none_for_free_names() -> None:
    names = NameRegistry()
    names.request("Alice", False, answers()[1])
    assert names.holder("alice") == "Alice"
    assert names.holder("ALICE") == "Alice"
    assert names.holder("bob") is None


@pytest.mark.parametrize("proven", [False, True])
def test_another_spelling_is_taken_even_when_proven(proven: bool) -> None:
    names = NameRegistry()
    names.request("Alice", True, answers()[1])
    for other in ("alice", "ALICE", "aLiCe"):
        got, answer = answers()
        names.request(other, proven, answer)
        assert got == ["Alice"], other
    assert names.held() == [("Alice", 1)]


def test_the_same_spelling_unproven_is_taken() -> None:
    names = NameRegistry()
    names.request("Alice", True, answers()[1])
    got, answer = answers()
    names.request("Alice", False, answer)
    assert got == ["Alice"]
    assert names.held() == [("Alice", 1)]


def test_the_same_spelling_proven_shares_the_name_until_the_last_release() -> None:
    names = NameRegistry()
    names.request("Alice", False, answers()[1])
    got, answer = answers()
    names.request("Alice", True, answer)
    assert got == [None]
    assert names.held() == [("Alice", 2)]
    names.release("Alice")
    assert names.held() == [("Alice", 1)]
    assert names.holder("alice") == "Alice"
    names.release("alice")  # releasing ignores case too
    assert names.held() == []
    assert names.holder("Alice") is None
    assert len(names) == 0
    # Free again: anyone may take it, under any spelling.
    got, answer = answers()
    names.request("ALICE", False, answer)
    assert got == [None]
    assert names.holder("alice") == "ALICE"


def test_releasing_a_name_not_held_changes_nothing() -> None:
    names = NameRegistry()
    names.request("Alice", False, answers()[1])
    names.release("bob")
    names.forget("bob")
    assert names.held() == [("Alice", 1)]


def test_claim_new_holds_only_a_free_name() -> None:
    names = NameRegistry()
    assert names.claim_new("abcde")
    assert not names.claim_new("abcde")
    assert not names.claim_new("ABCDE")
    assert names.held() == [("abcde", 1)]  # the refused claims counted nothing
    # A random id and a chosen name share one namespace.
    got, answer = answers()
    names.request("AbCdE", True, answer)
    assert got == ["abcde"]


def test_a_chosen_name_blocks_a_random_id() -> None:
    names = NameRegistry()
    names.request("Bob", False, answers()[1])
    assert not names.claim_new("bob")
    assert names.held() == [("Bob", 1)]


def test_draw_new_draws_until_a_free_id_and_holds_it() -> None:
    names = NameRegistry()
    assert names.claim_new("abcde")
    draw, drawn = drawing("ABCDE", "abcde", "xyz12", "never")
    assert names.draw_new(draw) == "xyz12"
    assert drawn == ["ABCDE", "abcde", "xyz12"]
    assert sorted(names.held()) == [("abcde", 1), ("xyz12", 1)]


def test_draw_new_takes_the_first_draw_when_free() -> None:
    names = NameRegistry()
    draw, drawn = drawing("first", "second")
    assert names.draw_new(draw) == "first"
    assert drawn == ["first"]


def test_confirm_new_without_a_shared_registry_answers_at_once() -> None:
    names = NameRegistry()
    assert names.claim_new("abcde")
    got, answer = answers()
    names.confirm_new("abcde", answer)
    assert got == [None]
    assert names.held() == [("abcde", 1)]  # confirming counts no second hold


def test_forget_drops_one_hold() -> None:
    names = NameRegistry()
    names.request("Alice", False, answers()[1])
    names.request("Alice", True, answers()[1])
    names.forget("Alice")
    assert names.held() == [("Alice", 1)]
    names.forget("ALICE")
    assert names.held() == []


def test_held_lists_every_name_with_its_count() -> None:
    names = NameRegistry()
    names.request("Alice", False, answers()[1])
    names.request("Alice", True, answers()[1])
    names.request("bob", False, answers()[1])
    assert names.claim_new("r4nd0")
    assert sorted(names.held()) == [("Alice", 2), ("bob", 1), ("r4nd0", 1)]
    assert len(names) == 3


# -- with a shared registry ----------------------------------------------------------


def test_the_shared_registry_is_attached_to_this_one() -> None:
    shared = FakeShared()
    names = NameRegistry(shared)
    assert names.shared is shared
    assert shared.calls == [("attach",)]
    assert shared.local is names


@pytest.mark.parametrize(("proven", "how"), [(False, "name"), (True, "proven")])
def test_a_name_free_here_is_asked_of_the_shared_registry(proven: bool, how: str) -> None:
    shared = FakeShared()
    names = NameRegistry(shared)
    got, answer = answers()
    names.request("Alice", proven, answer)
    assert shared.calls[1:] == [("claim", "Alice", how)]
    assert got == []  # no answer until the shared registry's
    assert names.holder("Alice") is None
    shared.answer(None)
    assert got == [None]
    assert names.held() == [("Alice", 1)]


def test_a_name_another_instance_holds_is_refused_and_not_held() -> None:
    shared = FakeShared()
    names = NameRegistry(shared)
    got, answer = answers()
    names.request("alice", True, answer)
    shared.answer("Alice")
    assert got == ["Alice"]
    assert names.held() == []
    assert names.holder("alice") is None


def test_a_name_held_here_is_decided_here() -> None:
    shared = FakeShared()
    names = NameRegistry(shared)
    names.request("Alice", True, answers()[1])
    shared.answer(None)
    del shared.calls[:]

    # Another spelling, or unproven: refused at once, the shared registry not asked.
    for name, proven in (("alice", True), ("Alice", False)):
        got, answer = answers()
        names.request(name, proven, answer)
        assert got == ["Alice"]
    assert shared.calls == []

    # The same user again: granted at once, and the hold counted there too.
    got, answer = answers()
    names.request("Alice", True, answer)
    assert got == [None]
    assert shared.calls == [("hold", "Alice")]
    assert shared.pending == []
    assert names.held() == [("Alice", 2)]


def test_every_release_is_given_back_to_the_shared_registry() -> None:
    shared = FakeShared()
    names = NameRegistry(shared)
    names.request("Alice", True, answers()[1])
    shared.answer(None)
    names.request("Alice", True, answers()[1])
    del shared.calls[:]
    names.release("Alice")
    names.release("alice")
    assert shared.calls == [("release", "Alice"), ("release", "alice")]
    assert names.held() == []
    # Nothing held: nothing given back.
    names.release("Alice")
    assert shared.calls == [("release", "Alice"), ("release", "alice")]


def test_forget_gives_nothing_back() -> None:
    shared = FakeShared()
    names = NameRegistry(shared)
    assert names.claim_new("abcde")
    names.forget("abcde")
    assert names.held() == []
    assert shared.calls == [("attach",)]


def test_confirm_new_asks_the_shared_registry_for_a_random_id() -> None:
    shared = FakeShared()
    names = NameRegistry(shared)
    assert names.claim_new("abcde")
    assert shared.calls == [("attach",)]  # claim_new alone asks nobody
    got, answer = answers()
    names.confirm_new("abcde", answer)
    assert shared.calls[1:] == [("claim", "abcde", "new")]
    assert got == []
    shared.answer(None)
    assert got == [None]
    assert names.held() == [("abcde", 1)]  # the answer counts no second hold


def test_a_random_id_held_elsewhere_is_forgotten_and_drawn_again() -> None:
    shared = FakeShared()
    names = NameRegistry(shared)
    assert names.claim_new("abcde")
    got, answer = answers()
    names.confirm_new("abcde", answer)
    shared.answer("ABCDE")
    assert got == ["ABCDE"]
    assert names.held() == [("abcde", 1)]  # until the session forgets it
    names.forget("abcde")
    draw, _ = drawing("fghij")
    assert names.draw_new(draw) == "fghij"
    names.confirm_new("fghij", answer)
    shared.answer(None)
    assert got == ["ABCDE", None]
    assert names.held() == [("fghij", 1)]
    assert [call for call in shared.calls if call[0] == "release"] == []


def test_two_claims_under_way_for_one_name_are_both_counted() -> None:
    # Two sessions of one user ask for the name before the first answer: neither finds
    # it held here, both claims go to the shared registry, and each grant is a hold.
    shared = FakeShared()
    names = NameRegistry(shared)
    first, answer_first = answers()
    second, answer_second = answers()
    names.request("Alice", True, answer_first)
    names.request("Alice", True, answer_second)
    assert [call for call in shared.calls if call[0] == "claim"] == [
        ("claim", "Alice", "proven"),
        ("claim", "Alice", "proven"),
    ]
    shared.answer(None)
    assert (first, second) == ([None], [])
    assert names.held() == [("Alice", 1)]
    shared.answer(None)
    assert (first, second) == ([None], [None])
    assert names.held() == [("Alice", 2)]
    names.release("Alice")
    names.release("Alice")
    assert names.held() == []


def test_a_grant_after_a_local_session_took_the_name_adds_a_hold() -> None:
    # The claim is under way when another session here takes the name (a random id
    # drawn with claim_new): the grant adds to that hold, keeping its spelling.
    shared = FakeShared()
    names = NameRegistry(shared)
    got, answer = answers()
    names.request("abcde", True, answer)
    assert names.claim_new("ABCDE")
    shared.answer(None)
    assert got == [None]
    assert names.held() == [("ABCDE", 2)]
    names.release("abcde")
    assert names.held() == [("ABCDE", 1)]


def test_a_refusal_after_a_local_session_took_the_name_leaves_its_hold() -> None:
    shared = FakeShared()
    names = NameRegistry(shared)
    got, answer = answers()
    names.request("Alice", False, answer)
    assert names.claim_new("alice")
    shared.answer("ALICE")
    assert got == ["ALICE"]
    assert names.held() == [("alice", 1)]
