from __future__ import annotations

from roomchat.cli import main

main()
