"""Which WebSocket library for ``--ws``: server CPU per delivered event, measured.

The server side is roomchat itself (the same Session, rooms, outbox and coalescing) with
each candidate as its WebSocket shell, in a subprocess pinned to CPU 0; the load is a
minimal raw-socket WebSocket client (hand-parsed frames, so that it costs little) pinned
to CPU 1. Server CPU comes from /proc (user + system), deliveries from the clients.

Shells:

- ``tcp``: no WebSocket at all: the same clients over plain TCP lines (the baseline
  the WebSocket shells are compared with, in the same run);
- ``websockets``: roomchat's server/shells/ws.py as it is: websockets 17's sans-I/O
  ``ServerProtocol`` for the handshake, control frames, fragments and errors; plain
  complete text frames read by roomchat's fast path; outgoing events framed by roomchat,
  all of a turn's events for a session in one write;
- ``websockets-parser``: the same, but every incoming frame through websockets' parser
  (``receive_data`` + ``events_received``);
- ``websockets-send_text``: the same, but every outgoing event through
  ``ServerProtocol.send_text`` + ``data_to_send`` (the library's own framing);
- ``picows``: a picows 2.x ``WSListener`` around the same Session, every event through
  ``WSTransport.send`` (the library's framing, one call per event);
- ``picows-batched``: the same, but a turn's events framed by roomchat and written with
  one ``underlying_transport.write``.

Shapes: ``fanout`` (``--members`` clients, 100 by default, in one room; one of them sends
RATE messages/s, each delivered to all) and ``seed`` (48 clients, 24 rooms of 2, each sending 200
messages/s: the seed benchmark's shape).

    .venv/bin/python benchmarks/ws_libs.py                     # everything (~3 minutes)
    .venv/bin/python benchmarks/ws_libs.py --shells websockets,picows --windows 3000

picows is not a roomchat dependency: ``pip install picows`` to include it (it is skipped
otherwise). Also prints what permessage-deflate would cost per delivery (measured with
zlib as the extension uses it: one compressor per connection, context takeover).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
SHELLS = (
    "tcp",
    "websockets",
    "websockets-parser",
    "websockets-send_text",
    "picows",
    "picows-batched",
)


# -- the server side (runs in the pinned subprocess) ---------------------------------------
def serve(shell: str, window_us: int) -> None:
    import uvloop

    uvloop.run(_serve(shell, window_us))


async def _serve(shell: str, window_us: int) -> None:
    from roomchat.server import ChatServer, ServerConfig

    ws = "127.0.0.1:0" if shell.startswith("websockets") else ""
    config = ServerConfig(host="127.0.0.1", port=0, ws=ws, coalesce_window=window_us / 1e6)
    if shell == "websockets-send_text":
        _library_framing()
    if shell == "websockets-parser":
        from roomchat.server.shells.ws import WebConnection

        WebConnection.FAST_INPUT = False
    server = await ChatServer.start(config)
    if shell == "tcp":
        port = server.port
    elif server.web is not None:
        port = server.web.port
    else:
        port = await _picows_listen(server, batched=shell == "picows-batched")
    print(f"READY {port}", flush=True)
    await asyncio.get_running_loop().create_future()  # until killed


def _library_framing() -> None:
    from websockets.protocol import State

    from roomchat.server.shells import ws as web

    def write(self: Any, data: bytes) -> None:
        ws = self._ws
        if self.transport is not None and ws.state is State.OPEN:
            for line in data.split(b"\r\n")[:-1]:
                ws.send_text(line)
            self._send_pending()

    web.WebConnection._write = write  # type: ignore[method-assign]


async def _picows_listen(server: Any, *, batched: bool) -> int:
    from picows import WSListener, WSMsgType, ws_create_server

    from roomchat.server.core.session import Session, new_session_id, new_user_id
    from roomchat.server.shells.ws import frame_events

    shell = server.shell

    class Shell(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: Any) -> None:
            self.transport = transport
            self.raw = transport.underlying_transport
            self.raw.set_write_buffer_limits(high=shell.max_pending_output)
            write = self.write_batched if batched else self.write
            mailbox = shell.outbox.open(new_user_id(), new_session_id(), write)
            self.session = Session(shell.context, mailbox, self, name="picows")
            self.session.start(shell.context.rooms.details)

        def write(self, data: bytes) -> None:
            if self.raw.is_closing():
                return
            send = self.transport.send
            for line in data.split(b"\r\n")[:-1]:
                send(WSMsgType.TEXT, line)

        def write_batched(self, data: bytes) -> None:
            if not self.raw.is_closing():
                self.raw.write(frame_events(data))

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                self.session.receive_data(frame.get_payload_as_bytes() + b"\n")
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: Any) -> None:
            self.session.connection_lost()

        def pause_reading(self) -> None:
            self.raw.pause_reading()

        def resume_reading(self) -> None:
            self.raw.resume_reading()

        def close(self, reason: str) -> None:
            self.transport.send_close()
            self.transport.disconnect()

        def abort(self, reason: str) -> None:
            self.transport.disconnect(graceful=False)

    listener = await ws_create_server(lambda request: Shell(), "127.0.0.1", 0)
    port: int = listener.sockets[0].getsockname()[1]
    return port


# -- the load (this process, pinned to the other CPU) ---------------------------------------
class Client(asyncio.Protocol):
    """A WebSocket client that parses frame headers by hand and counts text frames (or,
    with ``tcp``, a plain protocol-v1 client counting lines). A sampling client also
    takes each message's latency from the send time its content starts with."""

    def __init__(self, port: int, *, tcp: bool = False, sample: bool = False) -> None:
        self.port = port
        self.tcp = tcp
        self.sample = sample
        self.latencies: list[int] | None = None  # ns, while measuring
        self.buffer = bytearray()
        self.open = tcp
        self.frames = 0
        self.user = ""
        self.ready = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.joined = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.tcp:
            return
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def _event(self, payload: bytes) -> None:
        if not self.ready.done() or not self.joined.done():
            event = json.loads(payload)
            if event["_et"] == "login_successful":
                self.user = event["u"]
                self.ready.set_result(None)
            elif event["_et"] == "user_joined_room":
                self.joined.set_result(None)
        elif self.latencies is not None:
            start = payload.find(b'"c":"')
            if start > 0:
                end = payload.find(b" ", start)
                self.latencies.append(time.monotonic_ns() - int(payload[start + 5 : end]))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.tcp:
            lines = buffer.split(b"\n")
            buffer[:] = lines.pop()
            self.frames += len(lines)
            if self.sample or not self.joined.done():
                for line in lines:
                    self._event(line)
            return
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            assert buffer.startswith(b"HTTP/1.1 101"), bytes(buffer[:100])
            del buffer[: end + 4]
            self.open = True
        pos = 0
        size = len(buffer)
        frames = 0
        while size - pos >= 2:
            length = buffer[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                head = 10
            if size - pos < head + length:
                break
            if self.sample or not self.joined.done():
                self._event(bytes(buffer[pos + head : pos + head + length]))
            frames += 1
            pos += head + length
        del buffer[:pos]
        self.frames += frames

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        if self.tcp:
            self.transport.write(payload + b"\n")
            return
        # Clients must mask; a zero key leaves the payload as it is.
        n = len(payload)
        if n < 126:
            header = bytes((0x81, 0x80 | n))
        else:
            header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
        assert self.transport is not None
        self.transport.write(header + b"\0\0\0\0" + payload)


@dataclass
class Result:
    shell: str
    shape: str
    window_us: int
    deliveries_per_s: float
    cpu_percent: float
    us_per_delivery: float
    p50_ms: float
    p99_ms: float


def room_of(shape: str, client: int) -> str:
    """fanout: everyone in the first room; seed: the 24 packaged rooms, 2 clients each."""
    from roomchat.server import load_rooms

    names = [room.name for room in load_rooms()]
    return names[0] if shape == "fanout" else names[client // 2 % len(names)]


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def load(
    pid: int,
    port: int,
    shape: str,
    rate: int,
    warmup: float,
    seconds: float,
    tcp: bool,
    members: int = 100,
) -> tuple[float, float, list[int]]:
    """(deliveries/s, server CPU share, latencies in ns) over the measured window; one
    client in ten takes latencies."""
    loop = asyncio.get_running_loop()
    count, senders_rate = (members, {0: rate}) if shape == "fanout" else (48, {})
    clients: list[Client] = []
    for n in range(count):
        sample = n % 10 == 0
        _, client = await loop.create_connection(
            lambda sample=sample: Client(port, tcp=tcp, sample=sample), "127.0.0.1", port
        )
        clients.append(client)
    await asyncio.gather(*(c.ready for c in clients))
    for index, client in enumerate(clients):
        client.send(json.dumps({"_ct": "join_room", "r": room_of(shape, index)}).encode())
    await asyncio.gather(*(c.joined for c in clients))
    if shape == "seed":
        senders_rate = {i: 200 for i in range(count)}
    rooms = {i: room_of(shape, i) for i in senders_rate}
    payload = "x" * 40
    stop_at = loop.time() + warmup + seconds
    measure_at = loop.time() + warmup
    start_frames = start_cpu = 0.0
    measuring = False
    sent = dict.fromkeys(senders_rate, 0)
    began = loop.time()
    while (now := loop.time()) < stop_at:
        if not measuring and now >= measure_at:
            measuring = True
            start_frames = sum(c.frames for c in clients)
            start_cpu = proc_cpu(pid)
            measure_began = now
            for client in clients:
                if client.sample:
                    client.latencies = []
        for index, per_second in senders_rate.items():
            due = int((now - began) * per_second)
            client = clients[index]
            while sent[index] < due:
                n = sent[index]
                client.send(
                    b'{"_ct":"send_message","r":"%s","c":"%d %d %s"}'
                    % (rooms[index].encode(), time.monotonic_ns(), n, payload.encode())
                )
                sent[index] = n + 1
        await asyncio.sleep(0.002)
    frames = sum(c.frames for c in clients) - start_frames
    cpu = proc_cpu(pid) - start_cpu
    elapsed = loop.time() - measure_began
    latencies = sorted(x for c in clients if c.latencies for x in c.latencies)
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    return frames / elapsed, cpu / elapsed, latencies


def run_one(shell: str, shape: str, window_us: int, opts: argparse.Namespace) -> Result:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    argv = [sys.executable, __file__, "--serve", shell, "--windows", str(window_us)]
    proc = subprocess.Popen(
        ["taskset", "-c", opts.server_cpu, *argv], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        port = int(line.split()[1])
        rate = opts.rate if shape == "fanout" else 0
        import uvloop

        per_s, cpu_share, lat = uvloop.run(
            load(
                proc.pid,
                port,
                shape,
                rate,
                opts.warmup,
                opts.seconds,
                shell == "tcp",
                opts.members,
            )
        )
    finally:
        proc.kill()
        proc.wait()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6, 3) if lat else 0.0

    return Result(
        shell,
        shape,
        window_us,
        per_s,
        cpu_share * 100,
        cpu_share / per_s * 1e6,
        pct(0.5),
        pct(0.99),
    )


def deflate_cost() -> tuple[float, float]:
    """µs per delivery: roomchat's framing of a typical event, and permessage-deflate's
    compression of it (per connection: the event is compressed once per recipient)."""
    from roomchat.server.shells.ws import frame_events

    event = b'{"_et":"user_message","r":"general","u":"x3Ab_","c":"1234 ' + b"x" * 40 + b'"}'
    lines = event + b"\r\n"
    n = 200_000
    t = time.perf_counter()
    for _ in range(n):
        frame_events(lines)
    framing = (time.perf_counter() - t) / n * 1e6
    compressors = [zlib.compressobj(6, zlib.DEFLATED, -15) for _ in range(100)]
    t = time.perf_counter()
    for i in range(n):
        c = compressors[i % 100]
        c.compress(event)
        c.flush(zlib.Z_SYNC_FLUSH)
    deflate = (time.perf_counter() - t) / n * 1e6
    return framing, deflate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--shells", default=",".join(SHELLS))
    parser.add_argument("--shapes", default="fanout,seed")
    parser.add_argument("--windows", default="0,3000", help="coalescing windows, µs")
    parser.add_argument("--rate", type=int, default=300, help="fanout: messages/s")
    parser.add_argument("--members", type=int, default=100, help="fanout: clients in the room")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--load-cpu", default="1")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat, interleaving the shells; report medians"
    )
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    if opts.serve:
        serve(opts.serve, int(opts.windows))
        return
    os.sched_setaffinity(0, {int(c) for c in opts.load_cpu.split(",")})
    shells = [s for s in opts.shells.split(",") if s]
    try:
        import picows  # noqa: F401
    except ImportError:
        print("picows not installed: skipping its shells (pip install picows)", file=sys.stderr)
        shells = [s for s in shells if not s.startswith("picows")]
    results: list[Result] = []
    for window in (int(w) for w in opts.windows.split(",")):
        for shape in opts.shapes.split(","):
            runs: dict[str, list[Result]] = {shell: [] for shell in shells}
            for _ in range(opts.rounds):  # interleaved: drift in the machine's load hits all
                for shell in shells:
                    result = run_one(shell, shape, window, opts)
                    runs[shell].append(result)
                    print(
                        f"{shape:7} window {window:5} µs  {shell:21} "
                        f"{result.deliveries_per_s:9.0f} deliveries/s  "
                        f"server CPU {result.cpu_percent:5.1f} %  "
                        f"{result.us_per_delivery:6.2f} µs/delivery  "
                        f"p50 {result.p50_ms} ms  p99 {result.p99_ms} ms",
                        flush=True,
                    )
            for shell, shell_runs in runs.items():
                shell_runs.sort(key=lambda r: r.us_per_delivery)
                median = shell_runs[len(shell_runs) // 2]
                results.append(median)
                spread = ", ".join(f"{r.us_per_delivery:.2f}" for r in shell_runs)
                print(
                    f"MEDIAN {shape:7} window {window:5} µs  {shell:21} "
                    f"{median.us_per_delivery:6.2f} µs/delivery  (runs: {spread})",
                    flush=True,
                )
    framing, deflate = deflate_cost()
    print(
        f"per delivery of a 90-byte event: roomchat framing {framing:.2f} µs, "
        f"permessage-deflate compression {deflate:.2f} µs (+ decompression in the browser)"
    )
    if opts.json:
        print(json.dumps([r.__dict__ for r in results]))


if __name__ == "__main__":
    main()
