"""A fast local stand-in for RudderStack's gateway, for the delivery benchmarks.

A bare ASGI app on uvicorn (uvloop + httptools, one worker, its own process so that it never
shares the GIL with the client being measured). ``POST /v1/batch`` checks Basic auth (the write key
as user, empty password), gunzips, enforces the 4,000 KB body limit (413), parses the JSON with
orjson, checks that every event has a messageId and a userId or anonymousId (400 otherwise),
counts events and distinct messageIds, and answers 200 ``OK`` like rudder-server.

``GET /stats`` returns the counters as JSON; ``POST /reset`` zeroes them.

    .venv/bin/python -m bench.gateway --port 8089 --write-key bench-key
"""

from __future__ import annotations

import argparse
import base64
import time
import zlib
from typing import Any

import orjson

MAX_BODY = 4000 * 1024


class Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.rejected_requests = 0
        self.events = 0
        self.message_ids: set[str] = set()
        self.bytes_wire = 0
        self.bytes_body = 0
        self.max_body = 0
        self.first_request: float | None = None
        self.last_request: float | None = None
        self.event_names: dict[str, int] = {}

    def as_json(self) -> bytes:
        span = (
            (self.last_request - self.first_request)
            if self.first_request is not None and self.last_request is not None
            else 0.0
        )
        return orjson.dumps(
            {
                "requests": self.requests,
                "rejected_requests": self.rejected_requests,
                "events": self.events,
                "distinct_message_ids": len(self.message_ids),
                "bytes_wire": self.bytes_wire,
                "bytes_body": self.bytes_body,
                "max_body": self.max_body,
                "first_request": self.first_request,
                "last_request": self.last_request,
                "span_seconds": span,
                "event_names": self.event_names,
            }
        )


def make_app(write_key: str) -> Any:
    expected = b"Basic " + base64.b64encode(f"{write_key}:".encode())
    counters = Counters()

    async def respond(send: Any, status: int, body: bytes, kind: bytes = b"text/plain") -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if method == "GET" and path == "/stats":
            await respond(send, 200, counters.as_json(), b"application/json")
            return
        if method == "POST" and path == "/reset":
            counters.reset()
            await respond(send, 200, b"OK")
            return
        if method != "POST" or path != "/v1/batch":
            await respond(send, 404, b"404 page not found")
            return
        headers = dict(scope["headers"])
        if headers.get(b"authorization") != expected:
            counters.rejected_requests += 1
            await respond(send, 401, b"Failed to read writeKey from header")
            return
        raw = b"".join(chunks)
        now = time.time()
        if counters.first_request is None:
            counters.first_request = now
        counters.last_request = now
        body = zlib.decompress(raw, 31) if headers.get(b"content-encoding") == b"gzip" else raw
        if len(body) > MAX_BODY:
            counters.rejected_requests += 1
            await respond(send, 413, b"Request size too large")
            return
        try:
            batch = orjson.loads(body)["batch"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            counters.rejected_requests += 1
            await respond(send, 400, b"Invalid request body")
            return
        ids = []
        names = counters.event_names
        for event in batch:
            if not (event.get("userId") or event.get("anonymousId")) or not event.get("messageId"):
                counters.rejected_requests += 1
                await respond(send, 400, b"request neither has anonymousId nor userId")
                return
            ids.append(event["messageId"])
            name = event.get("event", event.get("type", "?"))
            names[name] = names.get(name, 0) + 1
        counters.message_ids.update(ids)
        counters.requests += 1
        counters.events += len(batch)
        counters.bytes_wire += len(raw)
        counters.bytes_body += len(body)
        counters.max_body = max(counters.max_body, len(body))
        counters.last_request = time.time()
        await respond(send, 200, b"OK")

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--write-key", default="bench-write-key")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.write_key),
        host="127.0.0.1",
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


class RunningGateway:
    """Start the gateway in its own process, wait until it answers; stop it on exit."""

    def __init__(self, write_key: str = "bench-write-key") -> None:
        self.write_key = write_key
        self.process: Any = None
        self.url = ""

    def __enter__(self) -> RunningGateway:
        import subprocess
        import sys

        from .common import REPO, free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.gateway",
                "--port",
                str(port),
                "--write-key",
                self.write_key,
            ],
            cwd=REPO,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.process.kill()
                    raise RuntimeError("the bench gateway did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except Exception:  # noqa: BLE001
                self.process.kill()

    def _call(self, method: str, path: str) -> bytes:
        import urllib.request

        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.read()

    def stats(self) -> dict[str, Any]:
        return orjson.loads(self._call("GET", "/stats"))

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the gateway process has used so far."""
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def reset(self) -> None:
        self._call("POST", "/reset")


if __name__ == "__main__":
    main()
