"""A stand-in server for measuring the load tool itself: ``python -m roomchat.stress.mirror``.

To know how many deliveries a second the load tool can drive and count, it must be run
against something that costs less than it does. This is the least of a v1 server that
the tool's steady mode needs (docs/protocol.md): ``login_successful`` with numbered
rooms and a 5-character user id, ``join_room`` answered by ``user_joined_room`` and the
room's ``room_participation`` "joined", and each ``send_message`` delivered to every
member of its room, the sender included. A read holding only a user's messages to the
one room it is in (the tool's batches) becomes the deliveries with one
``bytes.replace`` of the command's head by the event's, sent to each member: per-byte
work in C, per-read work in Python. Nothing else (no leave, no limits, no history).

It is not the server and proves nothing about it: it only gives the tool's own ceiling
(``benchmarks/run.py`` ceiling scenario, and benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import select
import socket
import sys

from roomchat.protocol import (
    BadLine,
    CommandDecoder,
    JoinRoom,
    LineTooLong,
    LoginSuccessful,
    RoomDetail,
    RoomParticipation,
    SendMessage,
    UserJoinedRoom,
    UserMessage,
    encode,
    encode_head,
)
from roomchat.stress.rawload import drop_written

__all__ = ["Mirror", "main"]

_READ = 1 << 20
#: A member this far behind (bytes not taken by its socket) stops the reading of every
#: sender in its rooms until it has taken them: memory stays bounded, as in the server.
_BEHIND = 4 << 20


class _Peer:
    __slots__ = ("decoder", "paused", "pending", "pending_bytes", "rest", "rooms", "sock", "user")

    def __init__(self, sock: socket.socket, user: str) -> None:
        self.sock = sock
        self.user = user
        self.rooms: list[str] = []
        self.decoder = CommandDecoder()
        self.pending: collections.deque[bytes | memoryview] = collections.deque()
        self.pending_bytes = 0  # what its socket did not take yet
        self.paused = False  # not read: a member of its room is behind
        self.rest = b""  # in one room: the start of a line not read to its end yet


class Mirror:
    """One epoll loop serving every connection (see the module's docstring)."""

    def __init__(self, host: str, port: int, rooms: int) -> None:
        self.listener = socket.create_server((host, port), backlog=4096)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.rooms = [f"room-{i}" for i in range(rooms)]
        self.members: dict[str, list[_Peer]] = {name: [] for name in self.rooms}
        self.peers: dict[int, _Peer] = {}
        self.epoll = select.epoll()
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        self.count = 0
        self._heads: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._login_rooms = tuple(RoomDetail(name, "") for name in self.rooms)

    def serve_forever(self) -> None:
        while True:
            for fd, mask in self.epoll.poll():
                if fd == self.listener.fileno():
                    self._accept()
                elif (peer := self.peers.get(fd)) is not None:
                    if mask & select.EPOLLOUT:
                        self._flush(peer)
                    if mask & ~select.EPOLLOUT:
                        self._read(peer)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.count += 1
            peer = _Peer(sock, f"u{self.count % 10_000:04d}")
            self.peers[sock.fileno()] = peer
            self.epoll.register(sock.fileno(), select.EPOLLIN)
            self._write(
                peer, encode(LoginSuccessful(f"s{self.count}", peer.user, self._login_rooms))
            )

    def _close(self, peer: _Peer) -> None:
        fd = peer.sock.fileno()
        self.peers.pop(fd, None)
        self.epoll.unregister(fd)
        peer.sock.close()
        for room in peer.rooms:
            self.members[room].remove(peer)

    def _read(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(peer)
            return
        if len(peer.rooms) != 1 or peer.decoder.buffered:
            self._slow(peer, data)
            return
        # In one room (the tool's steady shape): whole lines at a time, the rest kept.
        if peer.rest:
            data = peer.rest + data
        end = data.rfind(b"\n") + 1
        whole, peer.rest = data[:end], data[end:]
        room = peer.rooms[0]
        command, event = self._heads_of(room, peer.user)
        if whole.count(b"\n") != whole.count(command):  # not only its messages
            self._slow(peer, whole)
        elif whole:  # the fast path: every line one send_message to its room
            out = whole.replace(command, event)
            members = self.members[room]
            for member in members:
                self._write(member, out)
            if any(m.pending_bytes > _BEHIND for m in members):
                self._pause(peer)

    def _heads_of(self, room: str, user: str) -> tuple[bytes, bytes]:
        key = (room, user)
        if (heads := self._heads.get(key)) is None:
            heads = self._heads[key] = (
                encode_head(SendMessage(room, "")),
                encode_head(UserMessage(room, user, "")),
            )
        return heads

    def _slow(self, peer: _Peer, data: bytes) -> None:
        for command in peer.decoder.feed(data):
            if isinstance(command, (BadLine, LineTooLong)):
                continue
            if isinstance(command, JoinRoom) and command.room in self.members:
                if command.room in peer.rooms:
                    continue
                members = self.members[command.room]
                members.append(peer)
                peer.rooms.append(command.room)
                users = tuple(dict.fromkeys(m.user for m in members))
                self._write(peer, encode(UserJoinedRoom(command.room, users)))
                joined = encode(RoomParticipation(command.room, peer.user, "joined"))
                for member in members:
                    self._write(member, joined)
            elif isinstance(command, SendMessage) and command.room in peer.rooms:
                line = encode(UserMessage(command.room, peer.user, command.content))
                for member in self.members[command.room]:
                    self._write(member, line)

    def _write(self, peer: _Peer, data: bytes) -> None:
        if peer.pending:
            peer.pending.append(data)
            peer.pending_bytes += len(data)
            return
        try:
            written = peer.sock.send(data)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # its read will see the close
        if written < len(data):
            peer.pending.append(memoryview(data)[written:])
            peer.pending_bytes += len(data) - written
            mask = select.EPOLLOUT | (0 if peer.paused else select.EPOLLIN)
            self.epoll.modify(peer.sock.fileno(), mask)

    def _pause(self, peer: _Peer) -> None:
        peer.paused = True
        self.epoll.modify(peer.sock.fileno(), select.EPOLLOUT if peer.pending else 0)

    def _resume(self, caught_up: _Peer) -> None:
        """A member took its backlog: read again the senders of its rooms that wait."""
        for room in caught_up.rooms:
            for peer in self.members[room]:
                if peer.paused and all(
                    m.pending_bytes <= _BEHIND for r in peer.rooms for m in self.members[r]
                ):
                    peer.paused = False
                    mask = select.EPOLLIN | (select.EPOLLOUT if peer.pending else 0)
                    self.epoll.modify(peer.sock.fileno(), mask)

    def _flush(self, peer: _Peer) -> None:
        try:
            written = peer.sock.sendmsg(list(itertools.islice(peer.pending, 1024)))
        except OSError:  # full again, or closed (its read will see that)
            return
        peer.pending_bytes -= written
        drop_written(peer.pending, written)
        if not peer.pending:
            self.epoll.modify(peer.sock.fileno(), 0 if peer.paused else select.EPOLLIN)
        if peer.pending_bytes <= _BEHIND:
            self._resume(peer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rooms", type=int, default=24)
    args = parser.parse_args(argv)
    mirror = Mirror(args.host, args.port, args.rooms)
    # The same line as `roomchat serve`, for whoever waits for it (benchmarks/run.py).
    print(f"mirror listening on {args.host}:{mirror.port}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        mirror.serve_forever()


if __name__ == "__main__":
    main()
