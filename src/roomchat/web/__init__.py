"""The web client: static files served by ``roomchat serve --ws`` (server/shells/ws.py)."""
