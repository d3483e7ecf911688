"""A slower network link between rudder_sync and its warehouse, for the benchmarks.

On one machine every byte crosses the loopback at memory speed, which hides what a warehouse in
another network costs. This TCP proxy forwards a port to the warehouse through a link of a given
bandwidth (each direction shared by all connections, as one pipe) and round-trip time: a chunk
is sent once the link is free, takes len / bandwidth to cross and arrives half an RTT later. At
most WINDOW bytes are in flight per connection and direction, so a fast sender waits as it would
for TCP acknowledgements. It runs in its own process so that it never shares a GIL with the
process measured.

    .venv/bin/python -m bench.link --port 15432 --target 127.0.0.1:5432 --mbit 100 --rtt-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

CHUNK = 64 * 1024
WINDOW = 4 * 1024 * 1024


@dataclass(frozen=True)
class LinkSpec:
    """Bandwidth in Mbit/s and round-trip time in ms; `100:10` on the command line."""

    mbit: float
    rtt_ms: float

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        mbit, _, rtt = text.partition(":")
        return cls(float(mbit), float(rtt or 0))

    def __str__(self) -> str:
        return f"{self.mbit:g} Mbit/s, {self.rtt_ms:g} ms RTT"


class Direction:
    """One direction of the link: when it is next free."""

    def __init__(self, spec: LinkSpec) -> None:
        self.bytes_per_second = spec.mbit * 1e6 / 8
        self.one_way = spec.rtt_ms / 2000
        self.free_at = 0.0

    def arrival(self, size: int, now: float) -> float:
        start = max(now, self.free_at)
        self.free_at = start + size / self.bytes_per_second
        return self.free_at + self.one_way


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: Direction) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    in_flight = asyncio.Semaphore(WINDOW // CHUNK)

    async def send() -> None:
        while True:
            at, data = await queue.get()
            if not data:
                break
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
            in_flight.release()
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(CHUNK):
            await in_flight.acquire()
            queue.put_nowait((way.arrival(len(data), loop.time()), data))
    except ConnectionError:
        pass
    queue.put_nowait((0.0, b""))
    await sender


async def serve(port: int, host: str, target_port: int, spec: LinkSpec) -> None:
    up, down = Direction(spec), Direction(spec)

    async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, target_port)
        await asyncio.gather(
            _pump(client_r, server_w, up), _pump(server_r, client_w, down), return_exceptions=True
        )

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class ThrottledLink:
    """Run the proxy in its own process; `port` forwards to host:target_port through the link."""

    def __init__(self, host: str, target_port: int, spec: LinkSpec) -> None:
        self.host, self.target_port, self.spec = host, target_port, spec
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ThrottledLink:
        from .common import REPO, free_port

        self.port = free_port()
        command = [sys.executable, "-m", "bench.link", "--port", str(self.port)]
        command += ["--target", f"{self.host}:{self.target_port}"]
        command += ["--mbit", str(self.spec.mbit), "--rtt-ms", str(self.spec.rtt_ms)]
        self.process = subprocess.Popen(command, cwd=REPO)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.process.kill()
                    raise RuntimeError("the link proxy did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def cpu_seconds(self) -> float:
        import psutil

        if self.process is None:
            return 0.0
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--mbit", type=float, required=True)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, host, int(port), LinkSpec(args.mbit, args.rtt_ms)))


if __name__ == "__main__":
    main()
