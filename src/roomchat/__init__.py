"""roomchat: a room-based chat server, its client library, terminal UI and load tool.

Wire-compatible with rust-chat-server (protocol v1, see docs/protocol.md).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
