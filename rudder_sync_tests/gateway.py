"""A stand-in for RudderStack's gateway (rudder-server), served over real HTTP on 127.0.0.1.

It answers like rudder-server v1.83 does (reference/rudder-gateway-cases.json), so that the
delivery client is tested over real sockets with real gzip, status codes and exact error bodies,
and it lets a test script failures for the next requests: a status, a cut connection, a delay,
or a rate limit of N events per window answered with 429 like a workspace over its plan.
Every accepted event is also checked against the OpenAPI schemas of the real API.
"""

import base64
import binascii
import contextlib
import re
import socket
import ssl
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import jsonschema
import orjson
import yaml

DEFAULT_WRITE_KEY = "test-write-key"
DISABLED_WRITE_KEY = "disabled-write-key"
MAX_REQUEST_BYTES = 4000 * 1024  # Gateway.maxReqSizeInKB default
SPEC_PATH = Path(__file__).parent / "reference" / "rudder-server-gateway-openapi.yaml"

# Endpoint -> event type it sets (None: /v1/batch, where each event carries its own).
ENDPOINTS: dict[str, str | None] = {
    "/v1/batch": None,
    "/v1/track": "track",
    "/v1/identify": "identify",
}
SCHEMA_BY_TYPE = {
    "track": "TrackPayload",
    "identify": "IdentifyPayload",
    "page": "PagePayload",
    "screen": "ScreenPayload",
    "group": "GroupPayload",
    "alias": "AliasPayload",
}
NO_IDS = "request neither has anonymousId nor userId"
# Bodies of http.Error in rudder-server, for scripted failures given without a body.
DEFAULT_BODIES = {
    429: "max requests limit reached",
    500: "internal server error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "gateway timeout",
}
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the gateway saw it; ``status`` is 0 when the connection was cut."""

    index: int
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    wire_size: int
    body_size: int | None  # after gunzip (at most limit + 1); None when it was not read
    body: bytes | None  # after gunzip, when keep_bodies
    status: int
    answer: bytes


@dataclass
class _Fault:
    """A scripted answer for one coming request."""

    kind: str  # "status", "cut" or "delay"
    status: int = 0
    body: str = ""
    retry_after: str | None = None
    after_storing: bool = False
    seconds: float = 0.0


class _Answer(Exception):
    """Stop processing and answer this; ``message`` is written like Go's http.Error."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Cut(Exception):
    """Close the connection without answering."""


class TestGateway:
    """RudderStack's gateway on 127.0.0.1 (any free port unless given); use as a context manager.

    A fixed port brings a data plane back where it was; another host or a TLS context serves the
    transport-security tests.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        write_key: str = DEFAULT_WRITE_KEY,
        disabled_write_key: str = DISABLED_WRITE_KEY,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        validate_schema: bool = True,
        keep_bodies: bool = True,
        port: int = 0,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port, self.host, self.tls = port, host, tls
        self.write_key = write_key
        self.disabled_write_key = disabled_write_key
        self.max_request_bytes = max_request_bytes
        self.validate_schema = validate_schema
        self.keep_bodies = keep_bodies
        self._lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        self._rejections: list[tuple[Callable[[dict[str, Any]], bool], str]] = []
        self._stored: list[dict[str, Any]] = []
        self._requests: list[RecordedRequest] = []
        self._schema_errors: list[str] = []
        self._request_count = 0
        self._rate: tuple[int, float] | None = None  # (events, window seconds)
        self._rate_window = -1
        self._rate_used = 0
        self._impostor: _Answer | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        self._server = _Server((self.host, self.port), _Handler)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._server.gateway = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="test-gateway",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL (the data plane URL), e.g. http://127.0.0.1:54321; kept after a stop."""
        if self.port == 0:
            raise RuntimeError("the test gateway is not started")
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    # -- what was received -------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """Stored events as the gateway keeps them (messageId filled in, type set)."""
        with self._lock:
            return [entry["event"] for entry in self._stored]

    @property
    def stored(self) -> list[dict[str, Any]]:
        """Stored events with where they came from: {"request": index, "path", "event"}."""
        with self._lock:
            return list(self._stored)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def schema_errors(self) -> list[str]:
        """OpenAPI schema violations of accepted events; tests assert it stays empty."""
        with self._lock:
            return list(self._schema_errors)

    # -- fault injection ---------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        times: int = 1,
        retry_after: float | str | None = None,
        body: str | None = None,
    ) -> None:
        """Answer the next ``times`` POSTs with ``status``; ``body`` is sent as "body\\n"."""
        message = DEFAULT_BODIES.get(status, "") if body is None else body
        after = None if retry_after is None else str(retry_after)
        self._queue(_Fault("status", status=status, body=message, retry_after=after), times)

    def cut_next(self, times: int = 1, after_storing: bool = False) -> None:
        """Close the next connections without answering; after_storing keeps the events first."""
        self._queue(_Fault("cut", after_storing=after_storing), times)

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """Sleep before handling the next requests (which are then handled normally)."""
        self._queue(_Fault("delay", seconds=seconds), times)

    def reject_events_where(
        self, predicate: Callable[[dict[str, Any]], bool], message: str = NO_IDS
    ) -> None:
        """Answer 400 ``message`` to any request holding an event that matches, as for bad IDs."""
        with self._lock:
            self._rejections.append((predicate, message))

    def rate_limit(self, events: int, window_seconds: float = 1.0) -> None:
        """Accept at most ``events`` events per fixed window; a request that would go beyond is
        answered 429 "max requests limit reached" as a whole, without Retry-After, like a
        RudderStack workspace over its plan's limit. A request larger than ``events`` never
        passes."""
        with self._lock:
            self._rate = (events, window_seconds)
            self._rate_window, self._rate_used = -1, 0

    def impersonate(
        self, status: int, body: str, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        """Answer every POST with ``status`` and exactly ``body``, storing nothing: a server
        that is not a RudderStack data plane (a web server's page, a health check, another API)
        where the data plane URL points."""
        with self._lock:
            self._impostor = _Answer(status, body, {"Content-Type": content_type})

    def clear_faults(self) -> None:
        """Forget scripted answers, rejection rules, the rate limit and an impersonation: a
        healthy gateway again."""
        with self._lock:
            self._faults.clear()
            self._rejections.clear()
            self._rate = None
            self._impostor = None

    def _queue(self, fault: _Fault, times: int) -> None:
        with self._lock:
            self._faults.extend([fault] * times)

    def _next_fault(self) -> tuple[int, _Fault | None]:
        with self._lock:
            index = self._request_count
            self._request_count += 1
            return index, (self._faults.popleft() if self._faults else None)

    # -- request handling --------------------------------------------------------------------

    def handle_post(self, handler: "_Handler") -> None:
        """Answer one POST like rudder-server: route, auth, body, JSON, events; store on success."""
        wire = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        with self._lock:
            impostor, index = self._impostor, self._request_count
            if impostor is not None:
                self._request_count += 1
        if impostor is not None:  # scripted faults stay queued for the gateway's return
            payload = impostor.message.encode()
            self._record(index, handler, wire, None, impostor.status, payload)
            _reply(handler, impostor, payload)
            return
        index, fault = self._next_fault()
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
            fault = None
        body: bytes | None = None
        try:
            if fault is not None:
                body = self._peek(handler, wire)
            if fault is not None and fault.kind == "status":
                extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                raise _Answer(fault.status, fault.body, extra)
            if fault is not None and not fault.after_storing:
                raise _Cut
            path = handler.path.split("?", 1)[0]
            if path not in ENDPOINTS:
                raise _Answer(404, "404 page not found")
            self._authenticate(handler.headers.get("Authorization"))
            body = self._decode(handler, wire)
            if len(body) > self.max_request_bytes:
                raise _Answer(413, "request size exceeds max limit")
            events = self._accept(path, body)
            self._spend_rate(len(events))
            self._store(index, path, events)
            if fault is not None:
                raise _Cut
            answer = _Answer(200, "ok")
        except _Answer as error:
            answer = error
        except _Cut:
            handler.close_connection = True
            self._record(index, handler, wire, body, 0, b"")
            return
        payload = _render(answer)
        # Recorded before the client can see the answer, so a test never reads a stale list.
        self._record(index, handler, wire, body, answer.status, payload)
        _reply(handler, answer, payload)

    def _peek(self, handler: "_Handler", wire: bytes) -> bytes | None:
        """The body of a request answered by a fault, so that tests can compare re-sends."""
        try:
            return self._decode(handler, wire)
        except _Answer:
            return None

    def _decode(self, handler: "_Handler", wire: bytes) -> bytes:
        """The body after gunzip (cut at max_request_bytes + 1, enough to answer 413)."""
        if (handler.headers.get("Content-Encoding") or "").strip().lower() != "gzip":
            return wire
        return _gunzip(wire, self.max_request_bytes)

    def _authenticate(self, header: str | None) -> None:
        """Go's r.BasicAuth(): the user is the write key, the password is ignored."""
        key = _basic_auth_user(header)
        if not key:
            raise _Answer(401, "failed to read writekey from header")
        if key == self.disabled_write_key:
            raise _Answer(404, "source is disabled")
        if key != self.write_key:
            raise _Answer(401, "invalid write key")

    def _accept(self, path: str, body: bytes) -> list[dict[str, Any]]:
        """The events of a request, or the gateway's 400 for the whole request."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Answer(400, "invalid json") from None
        kind = ENDPOINTS[path]
        if kind is None:
            batch = payload.get("batch") if isinstance(payload, dict) else None
            if not isinstance(batch, list) or not batch:
                raise _Answer(400, "empty batch payload")
            events = batch
        else:
            events = [payload]
        for event in events:
            self._check_event(event)
        for event in events:
            if kind is not None:
                event["type"] = kind
            message_id = event.get("messageId")
            if not isinstance(message_id, str) or not message_id:
                event["messageId"] = str(uuid.uuid4())
        return events

    def _check_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise _Answer(400, "event is not a valid rudder event")
        if not (_has_id(event.get("userId")) or _has_id(event.get("anonymousId"))):
            raise _Answer(400, NO_IDS)
        with self._lock:
            rejections = list(self._rejections)
        for predicate, message in rejections:
            if predicate(event):
                raise _Answer(400, message)

    def _spend_rate(self, count: int) -> None:
        """Count the events against the window's limit, or answer 429 when they do not fit."""
        with self._lock:
            if self._rate is None:
                return
            limit, seconds = self._rate
            window = int(time.monotonic() // seconds)
            if window != self._rate_window:
                self._rate_window, self._rate_used = window, 0
            if self._rate_used + count > limit:
                raise _Answer(429, DEFAULT_BODIES[429])
            self._rate_used += count

    def _store(self, index: int, path: str, events: list[dict[str, Any]]) -> None:
        errors = _schema_errors(index, events) if self.validate_schema else []
        with self._lock:
            self._stored.extend({"request": index, "path": path, "event": e} for e in events)
            self._schema_errors.extend(errors)

    def _record(
        self,
        index: int,
        handler: "_Handler",
        wire: bytes,
        body: bytes | None,
        status: int,
        answer: bytes,
    ) -> None:
        request = RecordedRequest(
            index=index,
            method=handler.command,
            path=handler.path,
            headers={name.lower(): value for name, value in handler.headers.items()},
            wire_size=len(wire),
            body_size=None if body is None else len(body),
            body=body if self.keep_bodies else None,
            status=status,
            answer=answer,
        )
        with self._lock:
            self._requests.append(request)


class _Server(ThreadingHTTPServer):
    """Threaded server that can also drop its keep-alive connections when stopped."""

    daemon_threads = True
    gateway: TestGateway

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[Any] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: Any, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout, stop) is part of the tests, not an error to print."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real gateway
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Answers are written in two parts (head, body): without this, Nagle + delayed ACK
        # add 40 ms to every request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, alive=True)

    def finish(self) -> None:
        self.server.track(self.connection, alive=False)
        super().finish()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.server.gateway.handle_post(self)

    def do_GET(self) -> None:  # noqa: N802
        """chi answers 405 with an empty body for a method the route does not have."""
        _reply(self, _Answer(405, "", {"Allow": "POST"}), b"")

    do_PUT = do_DELETE = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: pytest shows failures, not access logs."""


def _render(answer: _Answer) -> bytes:
    """Errors are written like Go's http.Error ("message\\n"), success as the bare body."""
    return (answer.message if answer.status == 200 else answer.message + "\n").encode()


def _reply(handler: BaseHTTPRequestHandler, answer: _Answer, payload: bytes) -> None:
    handler.send_response(answer.status)
    headers = {"Content-Type": "text/plain; charset=utf-8", **answer.headers}
    if answer.status >= 400:
        headers.setdefault("X-Content-Type-Options", "nosniff")
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def _basic_auth_user(header: str | None) -> str:
    """The user part of a Basic Authorization header, "" when there is none or it is garbled."""
    if not header or header[:6].lower() != "basic ":
        return ""
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
    user, colon, _ = decoded.partition(":")
    return user if colon else ""


def _gunzip(wire: bytes, limit: int) -> bytes:
    """Decompress at most limit + 1 bytes (enough to answer 413), 500 on anything not gzip."""
    decompressor = zlib.decompressobj(31)
    try:
        body = decompressor.decompress(wire, limit + 1)
    except zlib.error:
        raise _Answer(500, "failed to read body from request") from None
    if len(body) <= limit and not decompressor.eof:
        raise _Answer(500, "failed to read body from request")
    return body


def _has_id(value: Any) -> bool:
    """gjson String() + TrimSpace: null and blank strings are missing, other values count."""
    if value is None:
        return False
    return not isinstance(value, str) or bool(value.strip())


# -- OpenAPI schema checks ------------------------------------------------------------------


@cache
def _validators() -> dict[str, jsonschema.protocols.Validator]:
    """One validator per payload schema of the spec, with in-document $refs resolvable."""
    components = yaml.safe_load(SPEC_PATH.read_text())["components"]
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(
        lambda value: not isinstance(value, str) or bool(_RFC3339.match(value))
    )
    names = [*SCHEMA_BY_TYPE.values(), "BatchPayload"]
    return {
        name: jsonschema.Draft4Validator(
            {"$ref": f"#/components/schemas/{name}", "components": components},
            format_checker=checker,
        )
        for name in names
    }


def _schema_errors(index: int, events: list[dict[str, Any]]) -> list[str]:
    """Violations of BatchPayload and of each event's own payload schema, picked by type."""
    validators = _validators()
    errors = [
        f"request {index}: {_describe(error)}"
        for error in validators["BatchPayload"].iter_errors({"batch": events})
    ]
    for position, event in enumerate(events):
        name = SCHEMA_BY_TYPE.get(event.get("type"))  # type: ignore[arg-type]
        where = f"request {index} event {position}"
        if name is None:
            errors.append(f"{where}: unknown or missing type {event.get('type')!r}")
            continue
        for error in validators[name].iter_errors(event):
            errors.append(f"{where} ({name}): {_describe(error)}")
    return errors


def _describe(error: jsonschema.ValidationError) -> str:
    location = "/".join(str(part) for part in error.absolute_path) or "(root)"
    return f"{location}: {error.message}"
