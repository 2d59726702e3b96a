"""roomchat's terminal client, built with Textual on top of :mod:`roomchat.client`."""

from __future__ import annotations

__all__: list[str] = []
