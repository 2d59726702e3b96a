"""The base of every protocol message: the tag fields and the shared field types."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

__all__ = ["MAX_ID_LENGTH", "CommandBase", "Count", "EventBase", "Id"]

#: Longest client-chosen command ``id`` (characters).
MAX_ID_LENGTH: Final = 64

# A client-chosen correlation id, echoed in the error, pong or welcome it causes.
Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]
Count = Annotated[int, msgspec.Meta(ge=0)]

# gc=False: these structs never hold reference cycles, so the garbage collector need
# not track them (cheaper to create, and they are created per message).


# omit_defaults=True: v2's optional fields (all defaulting to None) are left out when
# unset, which keeps every v1 message byte-identical to v1.


class CommandBase(msgspec.Struct, frozen=True, gc=False, tag_field="_ct", omit_defaults=True):
    pass


class EventBase(msgspec.Struct, frozen=True, gc=False, tag_field="_et", omit_defaults=True):
    pass
