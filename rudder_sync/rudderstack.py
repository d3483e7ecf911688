"""Delivery of already-serialized events to a RudderStack data plane (``POST /v1/batch``).

This is the only module of rudder_sync that speaks HTTP. It packs events into request bodies
close to the gateway's size limit, sends them from a few worker threads over one keep-alive
client, retries what is worth retrying, isolates events the gateway refuses, and hands every
event back to the caller in a :class:`BatchOutcome`, in input order, so that the caller can
commit its own state after each outcome. Under a rate limit it paces itself
(max_events_per_second) and adapts to 429s; until the data plane first answers, a connection
that cannot be opened is taken for a wrong URL and fails fast.

Bodies are built by byte concatenation of the caller's event JSON: nothing is re-serialized
and no ``sentAt`` is added, so a re-sent event is byte-identical to the first attempt (what
RudderStack's messageId de-duplication relies on). Events travel as Arrow columns
(:class:`EventColumns`), packed and joined into bodies by Arrow, so a million events cost no
million Python objects; single :class:`OutgoingEvent` objects are accepted too.
"""

import base64
import email.utils
import functools
import ipaddress
import logging
import math
import operator
import os
import random
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeAlias, overload

import dagster as dg
import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from isal import isal_zlib
from pydantic import Field

from . import __version__
from .errors import (
    RudderstackAuthError,
    RudderstackConfigError,
    RudderstackError,
    RudderstackRefusedError,
    RudderstackUnavailableError,
    RudderstackUnreachableError,
)

BATCH_PATH = "/v1/batch"
_PREFIX = b'{"batch":['
_SUFFIX = b"]}"
_OVERHEAD = len(_PREFIX) + len(_SUFFIX)
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# gzip by ISA-L (isal): on the benchmark's event JSON its level 1 compresses 1.6 GB/s for 8.9x,
# where zlib's level 1 does 320 MB/s for 8.3x (and zlib's level 6, 150 MB/s for 10.5x).
_GZIP_LEVEL = 1
_PROGRESS_INTERVAL_SECONDS = 5.0
_MAX_BODY_IN_MESSAGE = 200
# What rudder-server's gateway answers to an accepted request: 200 with "OK" (older versions)
# or "ok" (v1.83, reference/rudder-gateway-cases.json). Any other 2xx is not its answer.
_GATEWAY_OK = "ok"
# The gateway refuses (400) every event, or nearly every one for one reason, once this many
# events were refused one by one: stop bisecting, it is not the rows (see _Refusals).
_SYSTEMATIC_REFUSALS = 20
_SYSTEMATIC_SHARE = 0.9
# Rate limits (429 without Retry-After), AIMD on the rate (see _Throttle). A 429 cuts the pace
# to this share of the events accepted over the last _THROTTLE_MEASURE_SECONDS...
_THROTTLE_CUT = 0.9
_THROTTLE_MEASURE_SECONDS = 2.0
# (over at least this span: a shorter one takes a window's burst for its rate)
_THROTTLE_MEASURE_FLOOR = 0.5
# ...acceptances grow it by this share of the cut rate per second...
_THROTTLE_GROWTH = 0.1
# ...and a request carries at most this many seconds' worth of it, so that a limit counted in
# windows is filled to within a small request.
_THROTTLE_REQUEST_SECONDS = 0.125
# A 429 while nothing got through lately cuts the events per request to this fraction.
_THROTTLE_SHRINK = 8
# A request refused this many times in a row, and larger than requests now are, is split; until
# then it is sent again as it was (a scattered 429 is no reason to change the request).
_SPLIT_AFTER_429S = 3
# Longest wait between 429s in a row while nothing gets through (a used-up window is waited out
# at this pace, so that little of the next one is lost).
_THROTTLE_BACKOFF_MAX = 4.0

# The caller's ID of the change an event carries (rudder_sync's pending change ID).
ChangeId: TypeAlias = int


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """One event to deliver; ``body`` is its JSON object, sent byte-for-byte.

    ``ref`` tells the caller which of its changes the event carries; it comes back in outcomes.
    """

    ref: ChangeId
    message_id: str
    body: bytes


class EventColumns(Sequence[OutgoingEvent]):
    """A run of events as three Arrow arrays of one length: refs (int64), messageIds (string)
    and bodies (binary, each an event's JSON object, sent byte-for-byte).

    What the events step reads from the state, and what outcomes hand back: packing, joining
    bodies and committing work on the arrays. As a sequence it yields `OutgoingEvent`s, for
    the rare event looked at one by one (a rejection, a dry run, a test).
    """

    __slots__ = ("refs", "message_ids", "bodies")

    def __init__(self, refs: pa.Array, message_ids: pa.Array, bodies: pa.Array) -> None:
        if not len(refs) == len(message_ids) == len(bodies):
            raise ValueError("refs, message_ids and bodies must have one length")
        if bodies.null_count:
            raise ValueError("every event needs a body")
        self.refs = _typed(refs, pa.int64())
        self.message_ids = _typed(message_ids, pa.string())
        self.bodies = _typed(bodies, pa.binary())

    @classmethod
    def of(cls, events: Sequence[OutgoingEvent]) -> "EventColumns":
        """Columns of single events."""
        return cls(
            pa.array([e.ref for e in events], pa.int64()),
            pa.array([e.message_id for e in events], pa.string()),
            pa.array([e.body for e in events], pa.binary()),
        )

    @classmethod
    def concat(cls, parts: Sequence["EventColumns"]) -> "EventColumns":
        """One run of several, in order (one part: itself, no copy)."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return _NO_EVENTS
        return cls(
            pa.concat_arrays([p.refs for p in parts]),
            pa.concat_arrays([p.message_ids for p in parts]),
            pa.concat_arrays([p.bodies for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.refs)

    @overload
    def __getitem__(self, index: int) -> OutgoingEvent: ...

    @overload
    def __getitem__(self, index: slice) -> "EventColumns": ...

    def __getitem__(self, index: int | slice) -> "OutgoingEvent | EventColumns":
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("EventColumns slices take no step")
            n = max(0, stop - start)
            return EventColumns(
                self.refs.slice(start, n),
                self.message_ids.slice(start, n),
                self.bodies.slice(start, n),
            )
        return OutgoingEvent(
            ref=self.refs[index].as_py(),
            message_id=self.message_ids[index].as_py(),
            body=self.bodies[index].as_py(),
        )

    def __iter__(self) -> Iterator[OutgoingEvent]:
        rows = zip(
            self.refs.to_pylist(),
            self.message_ids.to_pylist(),
            self.bodies.to_pylist(),
            strict=True,
        )
        for ref, message_id, body in rows:
            yield OutgoingEvent(ref=ref, message_id=message_id, body=body)

    def __repr__(self) -> str:
        return f"<EventColumns of {len(self):,} events>"

    def ref_array(self) -> np.ndarray:
        """The refs as a NumPy int64 array (no copy)."""
        return self.refs.to_numpy(zero_copy_only=False)

    def sizes(self) -> np.ndarray:
        """Each body's length in bytes."""
        return pc.binary_length(self.bodies).to_numpy(zero_copy_only=False)

    def filter(self, keep: Sequence[bool]) -> "EventColumns":
        """The events where ``keep`` is true, in order."""
        mask = pa.array(keep, pa.bool_())
        return EventColumns(
            self.refs.filter(mask), self.message_ids.filter(mask), self.bodies.filter(mask)
        )

    def request_body(self) -> bytes:
        """``{"batch":[...]}`` around the bodies joined by commas: each event's bytes as given."""
        joined = pc.binary_join(
            pa.ListArray.from_arrays(pa.array([0, len(self)], pa.int32()), self.bodies), b","
        )[0]
        return b"".join((_PREFIX, memoryview(joined.as_buffer()), _SUFFIX))


def _typed(array: pa.Array, type_: pa.DataType) -> pa.Array:
    return array if array.type == type_ else array.cast(type_)


_NO_EVENTS = EventColumns(
    pa.array([], pa.int64()), pa.array([], pa.string()), pa.array([], pa.binary())
)

# What deliver() takes: single events, or runs of them as columns (the events step's way).
Events: TypeAlias = Iterable[OutgoingEvent] | Iterable[EventColumns]


@dataclass(slots=True)
class BatchOutcome:
    """What became of a group of events: each is either accepted or rejected with a reason.

    ``sent`` is False in a dry run, where the outcome is a prediction and nothing left the
    process.
    """

    accepted: EventColumns
    rejected: list[tuple[OutgoingEvent, str]]
    sent: bool


@dataclass
class DeliveryStats:
    """Counters updated while delivering; every HTTP attempt counts, retries included."""

    requests: int = 0
    retries: int = 0
    bytes_uncompressed: int = 0
    bytes_sent: int = 0
    events_accepted: int = 0
    events_rejected: int = 0
    seconds: float = 0.0
    answers: int = 0  # HTTP answers of any status: the data plane was reached in this run
    throttled: int = 0  # 429 answers
    paced_seconds: float = 0.0  # wall time in which max_events_per_second held requests back
    # Shared by the deliveries of one run (its windows), so pacing spans window boundaries.
    _pacer: "_Pacer | None" = field(default=None, repr=False, compare=False)
    _throttle: "_Throttle | None" = field(default=None, repr=False, compare=False)

    @property
    def events_per_second(self) -> float:
        """Accepted events per second of delivery."""
        return self.events_accepted / self.seconds if self.seconds > 0 else 0.0

    def since(self, earlier: "DeliveryStats") -> "DeliveryStats":
        """What changed after ``earlier`` (a copy taken before): one window's share of a run."""
        return DeliveryStats(
            **{
                f.name: getattr(self, f.name) - getattr(earlier, f.name)
                for f in fields(self)
                if f.compare
            }
        )


class _Stopped(Exception):
    """Raised in a worker when the delivery was abandoned, so that it stops retrying."""


@dataclass(slots=True)
class _Batch:
    """Events packed for one request (runs of the input's columns), plus events rejected
    locally while packing them."""

    parts: list[EventColumns] = field(default_factory=list)
    count: int = 0
    rejected: list[tuple[OutgoingEvent, str]] = field(default_factory=list)
    size: int = _OVERHEAD

    @property
    def events(self) -> EventColumns:
        return EventColumns.concat(self.parts)


_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum"}  # pydantic -> JSON schema
_BOUND_OK = {"ge": operator.ge, "gt": operator.gt, "le": operator.le}
_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<="}


def _bounded(default: Any, description: str, **bounds: float) -> Any:
    """A numeric setting whose bounds (``ge``, ``gt``, ``le``) sit in its JSON schema.

    Not enforced on construction: a resource out of bounds fails as RudderstackConfigError when
    its delivery starts. Models that carry the setting enforce them with `setting_field`.
    """
    schema = {_BOUNDS[op]: limit for op, limit in bounds.items()}
    return Field(default=default, description=description, json_schema_extra=schema)


def setting_bounds(name: str) -> dict[str, float]:
    """A RudderstackResource setting's bounds, as pydantic Field keywords (ge, gt, le)."""
    schema = RudderstackResource.model_fields[name].json_schema_extra
    if not isinstance(schema, dict):
        return {}
    return {op: schema[key] for op, key in _BOUNDS.items() if key in schema}  # type: ignore[misc]


def setting_field(name: str) -> Any:
    """A Field with a RudderstackResource setting's default and enforced bounds, for a model that
    carries the setting (config.DeliveryConfig)."""
    return Field(default=RudderstackResource.model_fields[name].default, **setting_bounds(name))


class RudderstackResource(dg.ConfigurableResource):
    """Sends events to a RudderStack data plane; without ``data_plane_url`` it is a dry run.

    Pass the write key with ``dg.EnvVar``; it never appears in reprs, messages or logs.
    """

    data_plane_url: str | None = Field(
        default=None,
        description="Data plane URL, e.g. https://x.dataplane.rudderstack.com. "
        "Empty: dry run, nothing is sent.",
    )
    write_key: str | None = Field(
        default=None, repr=False, description="Write key of the RudderStack source (secret)."
    )
    # Bounds are on the fields (`_bounded`): checked when a delivery starts, and by the sync
    # YAML's `delivery` (config.DeliveryConfig takes its defaults and bounds from here).
    max_request_kb: int = _bounded(
        4000,
        "Largest uncompressed request body, in KiB (rudder-server Gateway.maxReqSizeInKB).",
        ge=1,
        le=4000,
    )
    max_event_kb: int = _bounded(
        32,
        "Largest event, in KiB: RudderStack documents 32 KB per event and its SDKs drop larger "
        "ones. A larger event is rejected here, by key with its size, and never sent.",
        ge=1,
        le=4000,
    )
    max_in_flight: int = _bounded(4, "Concurrent requests.", ge=1, le=64)
    request_timeout_seconds: float = _bounded(30.0, "Timeout of one request.", gt=0)
    retry_max_seconds: float = _bounded(
        120.0,
        "How long a request may keep being retried while no request of the delivery gets "
        "through; then the delivery fails. Progress restarts the clock.",
        ge=0,
    )
    backoff_initial_seconds: float = _bounded(0.5, "First retry wait.", ge=0)
    backoff_max_seconds: float = _bounded(30.0, "Longest retry wait.", ge=0)
    gzip: bool = Field(default=True, description="Compress request bodies.")
    first_contact_seconds: float = _bounded(
        10.0,
        "Until the data plane has answered once in a run, a refused connection or a name that "
        "does not resolve is most likely a wrong URL, not an outage: give up after this long "
        "instead of retry_max_seconds. Also caps the connect timeout.",
        gt=0,
    )
    max_events_per_second: float | None = _bounded(
        None,
        "Pace sending to at most this many events per second, to stay under a plan's rate "
        "limit. None: no limit.",
        gt=0,
    )
    allow_insecure_http: bool = Field(
        default=False, description="Allow plain http:// to hosts other than loopback."
    )

    @property
    def dry_run(self) -> bool:
        """True when there is no data plane to send to."""
        return not (self.data_plane_url or "").strip()

    def deliver(
        self,
        events: Events,
        stats: DeliveryStats | None = None,
        log: logging.Logger | None = None,
    ) -> Iterator[BatchOutcome]:
        """Deliver ``events`` (single events or runs of columns) lazily, yielding one outcome per
        request body, in input order.

        Raises RudderstackAuthError at once on 401/404, RudderstackUnavailableError when a
        request could not get through within retry_max_seconds, RudderstackConfigError for a
        bad configuration (checked at the first ``next()``), RudderstackError otherwise.
        """
        self._check_numbers()
        stats = stats if stats is not None else DeliveryStats()
        if self.dry_run:
            yield from _dry_run(events, _Limit.of(self), stats, log)
            return
        delivery = _Delivery(self, stats, log)
        try:
            yield from delivery.run(events)
        finally:
            delivery.close()

    def url_setting(self) -> str:
        """Where data_plane_url was set, for the messages that ask to check it: the environment
        variables that hold this URL (Dagster resolves an EnvVar before the run and leaves only
        its value here), else the key itself."""
        url = (self.data_plane_url or "").strip()
        names = sorted(name for name, value in os.environ.items() if url and value.strip() == url)
        return " or ".join(names) if names else "data_plane_url"

    def _check_numbers(self) -> None:
        """Refuse settings out of their bounds: they would hang, never send, or be refused."""
        for name, info in type(self).model_fields.items():
            bounds, value = setting_bounds(name), getattr(self, name)
            if value is None or all(_BOUND_OK[op](value, limit) for op, limit in bounds.items()):
                continue
            wanted = " and ".join(f"{_BOUND_TEXT[op]} {limit:g}" for op, limit in bounds.items())
            unset = " (or unset: no limit)" if info.default is None else ""
            raise RudderstackConfigError(f"{name} must be {wanted}{unset}")

    def _endpoint(self) -> str:
        """The batch URL, after checking scheme, host and transport security."""
        return batch_url(self.data_plane_url or "", self.allow_insecure_http)


def batch_url(data_plane_url: str, allow_insecure_http: bool = False) -> str:
    """``{data_plane_url}/v1/batch``; refuses URLs that are not http(s) or would leak the key.

    Plain http is only for loopback hosts (tests, a local rudder-server) unless allowed.
    """
    base = data_plane_url.strip().rstrip("/")
    try:
        url = httpx.URL(base)
    except httpx.InvalidURL as exc:
        raise RudderstackConfigError(f"data_plane_url is not a valid URL: {exc}") from None
    if url.userinfo:
        raise RudderstackConfigError("data_plane_url must not contain credentials")
    if url.scheme not in ("http", "https") or not url.host:
        raise RudderstackConfigError(
            f"data_plane_url must be an http(s) URL with a host, got {base!r}"
        )
    if url.query or url.fragment:
        raise RudderstackConfigError(f"data_plane_url must not have a query or fragment: {base!r}")
    if url.scheme == "http" and not allow_insecure_http and not _is_loopback(url.host):
        raise RudderstackConfigError(
            f"refusing plain http to {url.host}: the write key would travel unencrypted; "
            "use https or set allow_insecure_http"
        )
    return base + BATCH_PATH


def _is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class _Limit:
    """Body size limit, lowered for the rest of a delivery when the gateway answers 413; the
    largest event; and events per request, capped by pacing and by rate limiting (429)."""

    configured: int
    current: int
    event: int
    events: int | None = None

    @classmethod
    def of(cls, resource: "RudderstackResource") -> "_Limit":
        body = resource.max_request_kb * 1024
        return cls(body, body, resource.max_event_kb * 1024)

    def refuses(self, sizes: np.ndarray) -> np.ndarray:
        """Which of the events of these sizes (in bytes) may never be sent."""
        return (sizes > self.event) | (sizes + _OVERHEAD > self.configured)

    def reason(self, size: int) -> str:
        """Why an event of ``size`` bytes is not sent: the tighter limit it is over."""
        if size > self.event and self.event + _OVERHEAD <= self.configured:
            return (
                f"event is {size:,} bytes; RudderStack accepts at most {self.event // 1024:,} KB "
                f"({self.event:,} bytes) per event, see max_event_kb"
            )
        return (
            f"event is {size:,} bytes; a request body may be at most {self.configured:,} bytes "
            f"({_OVERHEAD} of them for the batch envelope), see max_request_kb"
        )


def _pack(events: Events, limit: _Limit) -> Iterator[_Batch]:
    """Group events into bodies of at most ``limit.current`` bytes (and ``limit.events``
    events), reading them lazily, a run of columns at a time; Arrow cuts the runs, NumPy
    finds where.

    An event too big for any request is rejected and closes its batch, so that at most one
    such (large) event is held per batch.
    """
    batch = _Batch()
    for run in _runs(events, limit):
        sizes = run.sizes()
        # ends[i]: the bytes of the run's first i events, a comma after each.
        ends = np.concatenate(([0], np.cumsum(sizes + 1)))
        too_big = np.flatnonzero(limit.refuses(sizes)).tolist()
        start = 0
        for stop in [*too_big, len(run)]:
            while start < stop:
                taken = _fit(batch, ends, start, stop, limit)
                if taken == start:  # the next event does not fit: this batch is full
                    yield batch
                    batch = _Batch()
                    continue
                batch.parts.append(run[start:taken])
                batch.size += int(ends[taken] - ends[start]) - (0 if batch.count else 1)
                batch.count += taken - start
                start = taken
            if stop < len(run):
                batch.rejected.append((run[stop], limit.reason(int(sizes[stop]))))
                yield batch
                batch = _Batch()
                start = stop + 1
    if batch.count or batch.rejected:
        yield batch


def _fit(batch: _Batch, ends: np.ndarray, start: int, stop: int, limit: _Limit) -> int:
    """How far the batch can take the run's events from ``start`` (at most to ``stop``).

    An empty batch takes one event whatever its size: one that fits no lowered limit (after a
    413) is still sent alone, and the gateway has the last word.
    """
    room = limit.current - batch.size + (0 if batch.count else 1)  # a first event has no comma
    taken = int(np.searchsorted(ends, ends[start] + room, side="right")) - 1
    taken = max(start, min(taken, stop))
    if limit.events is not None:
        taken = min(taken, start + max(0, limit.events - batch.count))
    if taken == start and not batch.count:
        taken = start + 1
    return taken


def _runs(events: Events, limit: _Limit) -> Iterator[EventColumns]:
    """The input as runs of columns: EventColumns as they come, single events gathered into
    runs of at most half a request body (or a request's events), so that reading them stays
    lazy."""
    run: list[OutgoingEvent] = []
    size = 0
    for item in events:
        if isinstance(item, EventColumns):
            if run:
                yield EventColumns.of(run)
                run, size = [], 0
            yield item
            continue
        run.append(item)
        size += len(item.body) + 1
        if size >= limit.current // 2 or (limit.events is not None and len(run) >= limit.events):
            yield EventColumns.of(run)
            run, size = [], 0
    if run:
        yield EventColumns.of(run)


def _gzip(data: bytes) -> bytes:
    """gzip with a zero mtime, so equal bodies compress to equal bytes."""
    compressor = isal_zlib.compressobj(_GZIP_LEVEL, isal_zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def _dry_run(
    events: Events,
    limit: _Limit,
    stats: DeliveryStats,
    log: logging.Logger | None,
) -> Iterator[BatchOutcome]:
    """Pack and check events as the gateway would, without sending anything."""
    started, base_seconds, before = time.monotonic(), stats.seconds, replace(stats)
    for batch in _pack(events, limit):
        packed = batch.events
        objections = [_gateway_objection(body) for body in packed.bodies.to_pylist()]
        outcome = BatchOutcome(
            accepted=packed.filter([problem is None for problem in objections]),
            rejected=list(batch.rejected),
            sent=False,
        )
        for index, problem in enumerate(objections):
            if problem is not None:
                reason = f"dry run, the gateway would answer 400: {problem}"
                outcome.rejected.append((packed[index], reason))
        if batch.count:
            stats.bytes_uncompressed += batch.size
        stats.events_accepted += len(outcome.accepted)
        stats.events_rejected += len(outcome.rejected)
        stats.seconds = base_seconds + time.monotonic() - started
        yield outcome
    if log is not None:
        these = stats.since(before)
        log.info(
            "rudderstack dry run: %s events would be accepted, %s rejected; nothing was sent",
            f"{these.events_accepted:,}",
            f"{these.events_rejected:,}",
        )


def _gateway_objection(body: bytes) -> str | None:
    """What rudder-server's gateway would say against this event, if anything."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "invalid json"
    if not isinstance(event, dict):
        return "event is not a valid rudder event"
    if not (_has_id(event.get("userId")) or _has_id(event.get("anonymousId"))):
        return "request neither has anonymousId nor userId"
    return None


def _has_id(value: object) -> bool:
    """Like the gateway's gjson ``String()`` + TrimSpace: null and blank strings are missing."""
    if value is None:
        return False
    return not isinstance(value, str) or bool(value.strip())


def _is_certificate_error(exc: BaseException) -> bool:
    """Whether a connection failed on certificate verification (not a transient network error)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from delta-seconds or an HTTP-date; None if absent or garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def tls_context() -> ssl.SSLContext:
    """What httpx trusts by default (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR), built once
    per process and these variables: building it reads the CA bundle, which otherwise costs every
    run about 70 ms."""
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _tls_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    del cafile, capath  # the cache key: httpx reads the same variables
    return httpx.create_ssl_context(trust_env=True)


def _user_agent() -> str:
    return f"rudder_sync/{__version__} (reverse ETL) httpx/{httpx.__version__}"


def _short(text: str) -> str:
    """A response body fit for a message: stripped, one line, bounded."""
    text = " ".join(text.split())
    return text if len(text) <= _MAX_BODY_IN_MESSAGE else text[:_MAX_BODY_IN_MESSAGE] + "..."


class _Pacer:
    """Spaces requests so that at most ``rate`` events per second leave, across all workers.

    Each request reserves the next free slot, ``n / rate`` seconds long, and a request carries
    at most one second's worth: over any span of requests the rate holds, and any window a
    gateway counts in sees at most one request's worth above it (a minute's limit: < 2 %).
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = 0.0
        self.held_until = 0.0

    def reserve(self, n_events: int) -> tuple[float, float]:
        """(seconds to wait before sending, seconds of wall time newly spent holding back)."""
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n_events / self.rate
            held = max(0.0, start - max(now, self.held_until))
            self.held_until = max(self.held_until, start)
            return start - now, held

    def set_rate(self, rate: float) -> None:
        with self.lock:
            self.rate = rate


class _Throttle:
    """The pace a rate limit that answers 429 without Retry-After lets through, learned while a
    run delivers (shared by its windows, like the pacer): AIMD on the events per second.

    A 429 of a request sent since the last cut cuts ``rate`` to a little under what was
    accepted over the last seconds, once something got through since that cut (a window that
    is used up is waited out, not taken for a lower limit); acceptances grow it by a tenth of
    the cut rate per second. Requests carry an eighth of a second's worth, so that a limit
    counted in windows is filled to within a small request. When nothing got through lately,
    the request may be larger than the limit lets through at once: a 429 cuts the events per
    request to an eighth instead, and acceptances double them back.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rate: float | None = None  # events/s; None: no 429 with anything accepted yet
        self.size: int | None = None  # events per request, cut while nothing gets through
        self.pacer = _Pacer(math.inf)
        self.round = 0  # cuts so far; a request remembers the round it was sent in
        self.through_since_cut = False
        self.step = 0.0  # growth of the rate per second
        self.grown_at = 0.0
        self.recent: deque[tuple[float, int]] = deque()  # (time, events) accepted lately

    @property
    def events_per_request(self) -> int | None:
        """The most events a request may carry now (None: no limit)."""
        with self.lock:
            caps = [self.size or 0]
            if self.rate is not None:
                caps.append(max(1, int(self.rate * _THROTTLE_REQUEST_SECONDS)))
            return min((cap for cap in caps if cap), default=None)

    def accepted(self, n_events: int, round_: int) -> None:
        """A request of ``n_events`` sent in ``round_`` was accepted: grow."""
        now = time.monotonic()
        with self.lock:
            self.recent.append((now, n_events))
            self._forget(now)
            if round_ == self.round:
                self.through_since_cut = True
            if self.size is not None:  # no cap once it is beyond any request body
                self.size = self.size * 2 if self.size < 1 << 20 else None
            if self.rate is not None:
                self.rate += self.step * (now - self.grown_at)
                self.grown_at = now
                self.pacer.set_rate(self.rate)

    def throttled(self, n_events: int, round_: int) -> str | None:
        """A request of ``n_events`` sent in ``round_`` was refused (429 without Retry-After):
        what was cut, in words, or None when this refusal does not cut."""
        now = time.monotonic()
        with self.lock:
            if round_ != self.round:
                return None  # sent before the last cut
            self._forget(now)
            through = sum(events for _, events in self.recent)
            if not through:
                self.size = max(1, n_events // _THROTTLE_SHRINK)
                self._cut()
                return f"at most {self.size:,} events per request"
            if self.rate is not None and not self.through_since_cut:
                return None
            lately = through / max(
                min(_THROTTLE_MEASURE_SECONDS, now - self.recent[0][0]),
                _THROTTLE_MEASURE_FLOOR,
            )
            rate = _THROTTLE_CUT * (lately if self.rate is None else min(self.rate, lately))
            self.rate = max(rate, 1 / _THROTTLE_REQUEST_SECONDS)  # at least one event a request
            self.step = self.rate * _THROTTLE_GROWTH
            self.grown_at = now
            self.pacer.set_rate(self.rate)
            self._cut()
            return f"pacing at about {self.rate:,.0f} events/s"

    def _cut(self) -> None:
        self.round += 1
        self.through_since_cut = False

    def _forget(self, now: float) -> None:
        while self.recent and self.recent[0][0] < now - _THROTTLE_MEASURE_SECONDS:
            self.recent.popleft()


class _Delivery:
    """One deliver() call in real mode: the client, the workers and what they share."""

    def __init__(
        self, resource: RudderstackResource, stats: DeliveryStats, log: logging.Logger | None
    ) -> None:
        self.url = resource._endpoint()
        key = resource.write_key or ""
        if not key.strip():
            raise RudderstackConfigError("write_key is required when data_plane_url is set")
        token = base64.b64encode(f"{key}:".encode()).decode("ascii")
        self._secrets = tuple(s for s in (key, token, f"{key}:") if s)
        self.cfg = resource
        self.stats = stats
        self.log = log
        rate = resource.max_events_per_second
        # Paced, a request carries at most one second's worth of events.
        self.pace_cap = max(1, int(rate)) if rate else None
        self.limit = _Limit.of(resource)
        if rate and stats._pacer is None:
            stats._pacer = _Pacer(rate)
        self.pacer = stats._pacer if rate else None
        if stats._throttle is None:
            stats._throttle = _Throttle()
        self.throttle = stats._throttle
        self._cap_events()  # a rate limit met in an earlier window of the run still holds
        url = httpx.URL(self.url)
        self.host_port = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.base_seconds = stats.seconds
        self.before = replace(stats)  # progress logs count this call (one window) only
        self.last_progress = self.started
        self.last_advance = self.started  # the last request that settled: retry budget's origin
        self.streak = 0  # 429s without Retry-After in a row, with nothing accepted between
        self.told_throttled: set[str] = set()  # kinds of cuts logged
        self.refusals = _Refusals()
        self.client = httpx.Client(
            headers={
                "Authorization": f"Basic {token}",
                "Content-Type": "application/json",
                "User-Agent": _user_agent(),
            },
            timeout=httpx.Timeout(
                resource.request_timeout_seconds,
                connect=min(resource.request_timeout_seconds, resource.first_contact_seconds),
            ),
            limits=httpx.Limits(
                max_connections=resource.max_in_flight,
                max_keepalive_connections=resource.max_in_flight,
            ),
            follow_redirects=False,
            verify=tls_context(),
        )
        self.executor = ThreadPoolExecutor(
            max_workers=resource.max_in_flight, thread_name_prefix="rudderstack"
        )
        self.pending: deque[Future[BatchOutcome]] = deque()

    def close(self) -> None:
        """Stop retries and queued batches; free the client once requests on the wire are done.

        On an early exit (error, caller stopped iterating) a request may still be on the wire:
        its answer no longer matters, so it is left to finish in the background rather than
        delaying the exception by up to request_timeout_seconds.
        """
        self.stop.set()
        self._tick()
        if all(future.done() for future in self.pending):
            self._shutdown()
            return
        self.executor.shutdown(wait=False, cancel_futures=True)
        threading.Thread(target=self._shutdown, name="rudderstack-close", daemon=True).start()

    def _shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    def run(self, events: Events) -> Iterator[BatchOutcome]:
        """Keep up to max_in_flight batches in the workers; yield outcomes in input order."""
        batches = _pack(events, self.limit)
        pending = self.pending
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.cfg.max_in_flight:
                if _first_failure(pending) is not None:
                    break
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                else:
                    pending.append(self.executor.submit(self._settle, batch))
            if not pending:
                break
            self._wait(pending)
            while pending and pending[0].done():
                outcome = pending.popleft().result()
                self._count_outcome(outcome)
                yield outcome
            self._maybe_log_progress()
        self._log_summary()

    def _wait(self, pending: deque[Future[BatchOutcome]]) -> None:
        """Wait until the oldest batch is settled; fail fast on errors other than unavailability."""
        if not pending[0].done():
            running = [future for future in pending if not future.done()]
            timeout = max(0.05, self.last_progress + _PROGRESS_INTERVAL_SECONDS - time.monotonic())
            wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
        failure = _first_failure(pending)
        if failure is not None and not isinstance(failure, RudderstackUnavailableError):
            raise failure

    def _settle(self, batch: _Batch) -> BatchOutcome:
        """Worker: deliver one packed batch, splitting it on 413 and bisecting it on 400."""
        accepted: list[EventColumns] = []
        rejected = list(batch.rejected)
        if batch.count:
            self._settle_events(batch.events, accepted, rejected)
        return BatchOutcome(accepted=EventColumns.concat(accepted), rejected=rejected, sent=True)

    def _settle_events(
        self,
        events: EventColumns,
        accepted: list[EventColumns],
        rejected: list[tuple[OutgoingEvent, str]],
    ) -> None:
        cap = self.limit.events
        if cap is not None and len(events) > cap:  # packed before a 429 lowered the cap
            status, round_ = 429, -1
        else:
            body = events.request_body()
            status, text, round_ = self._post(body, len(events))
        if 200 <= status < 300:
            if status != 200 or text.strip().lower() != _GATEWAY_OK:
                raise RudderstackConfigError(self._not_a_gateway(status, text, len(events)))
            self._advanced(accepted=len(events), round_=round_)
            self.refusals.accepted(len(events))
            accepted.append(events)
            return
        if status not in (400, 413, 429):
            raise RudderstackError(
                self._redact(f"unexpected answer from {self.url}: {status} {_short(text)}")
            )
        if len(events) == 1:
            self._advanced(accepted=0, round_=round_)
            reason = self._redact(f"gateway {status}: {_short(text)}")
            verdict = self.refusals.refused(reason) if status == 400 else None
            if verdict is not None:
                raise RudderstackRefusedError(self._systematic(verdict, reason))
            rejected.append((events[0], reason))
            return
        if status == 413:
            self._lower_limit(len(body))
        middle = len(events) // 2
        self._settle_events(events[:middle], accepted, rejected)
        self._settle_events(events[middle:], accepted, rejected)

    def _post(self, body: bytes, n_events: int) -> tuple[int, str, int]:
        """POST one body, retrying 429/5xx/network errors with the same bytes until the deadline.

        The deadline is retry_max_seconds without progress (no request of this delivery
        settled, time held by pacing not counted), so a slow but moving sync never fails.
        Returns the first non-retryable status, body text and the rate-limit round the last
        attempt was sent in, or 429 when a rate limit refused it _SPLIT_AFTER_429S times in a
        row and requests are now smaller (the caller splits it); raises on 401/404.
        """
        payload = _gzip(body) if self.cfg.gzip else body
        headers = {"Content-Encoding": "gzip"} if self.cfg.gzip else {}
        started = origin = time.monotonic()
        attempt = refusals = 0
        while True:
            if self.stop.is_set():
                raise _Stopped
            origin = max(origin, self.last_advance) + self._pace(n_events)
            round_ = self.throttle.round
            self._count_request(len(body), len(payload))
            status, text, retry_after, failure = self._attempt(payload, headers)
            if status is not None:
                self._answered()
            if status is not None and status in (401, 404):
                raise self._auth_error(status, text)
            if status is not None and status not in _RETRYABLE_STATUSES:
                return status, text, round_
            last_error = text if status is None else f"{status} {_short(text)}".strip()
            throttled = status == 429 and retry_after is None
            refusals = refusals + 1 if throttled else 0
            streak = self._throttled(n_events, round_) if throttled else 0
            if status == 429:
                with self.lock:
                    self.stats.throttled += 1
            cap = self.limit.events
            if (
                refusals >= _SPLIT_AFTER_429S
                and n_events > 1
                and cap is not None
                and n_events > cap
            ):
                return 429, text, round_  # the caller splits it
            origin = max(origin, self.last_advance)
            deadline = origin + self.cfg.retry_max_seconds
            first_contact = failure == "unreached" and self.stats.answers == 0
            if first_contact:
                deadline = min(deadline, self.started + self.cfg.first_contact_seconds)
            if throttled:  # paced from now on; back off only when nothing gets through
                exponent = streak - self.cfg.max_in_flight - 1
                delay = self._retry_delay(exponent, None, deadline, _THROTTLE_BACKOFF_MAX)
            else:
                delay = self._retry_delay(attempt, retry_after, deadline)
            if delay is None:
                waited = time.monotonic() - origin
                if first_contact:
                    raise self._unreachable(n_events, time.monotonic() - started, attempt, text)
                fix = self._too_slow(n_events, len(body)) if failure == "timeout" else ""
                raise RudderstackUnavailableError(
                    self._redact(
                        f"gave up on a request of {n_events:,} events after {waited:.1f}s "
                        f"without progress and {attempt + 1} attempts "
                        f"(retry_max_seconds={self.cfg.retry_max_seconds:g}); "
                        f"last error: {last_error}{fix}"
                    )
                )
            self._log_retry(last_error, delay, attempt + 1, n_events)
            if self.stop.wait(delay):
                raise _Stopped
            attempt += 1

    def _not_a_gateway(self, status: int, text: str, n_events: int) -> str:
        """A 2xx that is not RudderStack's answer: the URL points elsewhere, nothing was sent."""
        return self._redact(
            f"the server at {self.host_port} answered {status} with {_describe_answer(text)} to "
            f"POST {BATCH_PATH}, where RudderStack's gateway answers 200 OK: this is not a "
            f"RudderStack data plane, and the {n_events:,} events are not taken as delivered "
            f"(they stay pending). Fix: check {self.cfg.url_setting()} (scheme, host, port and "
            "path of the data plane)"
        )

    def _systematic(self, verdict: str, reason: str) -> str:
        """The data plane refuses the events themselves (_Refusals): say so and stop."""
        return self._redact(
            f"the data plane at {self.host_port} refuses (nearly) every event, not a few bad "
            f"ones: {verdict}; last answer: {reason}. Stopped early: the changes stay pending "
            "and this attempt does not count toward quarantine (max_attempts). Fix: correct "
            "what the answer names (the data plane, the source or the sync's events), then run "
            "again"
        )

    def _too_slow(self, n_events: int, size: int) -> str:
        """The fix for a data plane that does not answer within request_timeout_seconds."""
        return (
            f". The data plane takes longer than request_timeout_seconds="
            f"{self.cfg.request_timeout_seconds:g} to answer a request of {n_events:,} events "
            f"({size / 1024:,.0f} KB). Fix: raise delivery.request_timeout_seconds, or lower "
            f"delivery.max_request_kb (now {self.cfg.max_request_kb:,}) for smaller requests"
        )

    def _unreachable(
        self, n_events: int, elapsed: float, attempt: int, error: str
    ) -> RudderstackUnreachableError:
        """A wrong URL or a data plane that is not there: say where, and what to check."""
        return RudderstackUnreachableError(
            self._redact(
                f"cannot reach the data plane at {self.host_port}: gave up on a request of "
                f"{n_events:,} events after {elapsed:.1f}s and {attempt + 1} attempts, before "
                f"any answer in this run (first_contact_seconds="
                f"{self.cfg.first_contact_seconds:g}, then retry_max_seconds="
                f"{self.cfg.retry_max_seconds:g}); last error: "
                f"{error}. Fix: check the data plane URL "
                f"({self.cfg.url_setting()}: scheme, host and port); if the data plane is down, "
                "run again once it is up"
            )
        )

    def _attempt(
        self, payload: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str, float | None, str]:
        """One POST: (status, body, Retry-After, ""), or (None, error, None, kind) when no answer
        came back: kind "unreached" when not even a connection could be opened, "timeout" when
        no answer came within request_timeout_seconds, "lost" otherwise."""
        try:
            response = self.client.post(self.url, content=payload, headers=headers)
        except httpx.ConnectError as exc:
            if _is_certificate_error(exc):  # retrying cannot fix a certificate: stop now
                raise RudderstackConfigError(
                    self._redact(
                        f"TLS certificate of {self.url} could not be verified ({exc}). Fix: use "
                        "the data plane's real https URL, or install its CA in the trust store."
                    )
                ) from None
            return None, f"{type(exc).__name__}: {exc}".rstrip(": "), None, "unreached"
        except httpx.ConnectTimeout as exc:
            return None, f"{type(exc).__name__}: {exc}".rstrip(": "), None, "unreached"
        except httpx.TimeoutException as exc:  # read, write or pool
            timeout = f"request_timeout_seconds={self.cfg.request_timeout_seconds:g}"
            return None, f"no answer within {timeout} ({type(exc).__name__})", None, "timeout"
        except httpx.TransportError as exc:  # read/write errors, cuts
            return None, f"{type(exc).__name__}: {exc}".rstrip(": "), None, "lost"
        except httpx.HTTPError as exc:  # not worth retrying, e.g. an undecodable answer
            raise RudderstackError(
                self._redact(f"request to {self.url} failed: {type(exc).__name__}: {exc}")
            ) from None
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        return response.status_code, response.text, retry_after, ""

    def _retry_delay(
        self,
        exponent: int,
        retry_after: float | None,
        deadline: float,
        longest: float = math.inf,
    ) -> float | None:
        """How long to wait before the next attempt (none for a negative ``exponent``), or None
        when the deadline forbids it."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= remaining else None
        if exponent < 0:
            return 0.0
        ceiling = min(
            self.cfg.backoff_max_seconds,
            longest,
            self.cfg.backoff_initial_seconds * 2 ** min(exponent, 60),
        )
        return min(remaining, ceiling / 2 + random.uniform(0, ceiling / 2))

    def _pace(self, n_events: int) -> float:
        """Wait for this request's slot under max_events_per_second and under a rate limit met
        in this run; the seconds waited. Only the first counts as paced_seconds."""
        wait_seconds = 0.0
        if self.pacer is not None:
            wait_seconds, held = self.pacer.reserve(n_events)
            with self.lock:
                self.stats.paced_seconds += held
        if self.throttle.rate is not None:
            wait_seconds = max(wait_seconds, self.throttle.pacer.reserve(n_events)[0])
        if wait_seconds > 0 and self.stop.wait(wait_seconds):
            raise _Stopped
        return wait_seconds

    def _answered(self) -> None:
        with self.lock:
            self.stats.answers += 1

    def _advanced(self, accepted: int, round_: int) -> None:
        """A request settled: restart the retry budget; after an acceptance (of ``accepted``
        events), let a rate limit's pace grow."""
        with self.lock:
            self.last_advance = time.monotonic()
            if not accepted:
                return
            self.streak = 0
        if round_ >= 0:
            self.throttle.accepted(accepted, round_)
            self._cap_events()

    def _throttled(self, n_events: int, round_: int) -> int:
        """A 429 without Retry-After of a request sent in ``round_``: slow the pace down (see
        _Throttle); the 429s without Retry-After in a row."""
        with self.lock:
            self.streak += 1
            streak = self.streak
        cut = self.throttle.throttled(n_events, round_)
        if cut is None:
            return streak
        self._cap_events()
        kind = cut.split(" ")[0]  # "pacing" or "at most": each is told once, then progress says
        if self.log is not None and kind not in self.told_throttled:
            self.told_throttled.add(kind)
            self.log.warning(
                "rudderstack: rate limited (429 without Retry-After): now %s, growing back as "
                "requests get through",
                cut,
            )
        return streak

    def _cap_events(self) -> None:
        """Events per request: at most what pacing and a rate limit's pace allow."""
        caps = [cap for cap in (self.pace_cap, self.throttle.events_per_request) if cap]
        self.limit.events = min(caps) if caps else None

    def _auth_error(self, status: int, text: str) -> RudderstackAuthError:
        """Name the cause of a 401/404 in words; the key itself is never part of it."""
        detail = f"{status} {_short(text)}".strip()
        if status == 401:
            cause = (
                f"the write key was rejected ({detail}). Fix: set RUDDERSTACK_WRITE_KEY (for a "
                "destination under 'destinations': its write_key variable) to the write key of "
                "the RudderStack source this data plane serves"
            )
        elif "disabled" in text:
            cause = f"the source is disabled ({detail})"
        else:
            cause = f"{self.url} was not found ({detail}); check data_plane_url"
        return RudderstackAuthError(self._redact(f"RudderStack refused the delivery: {cause}"))

    def _lower_limit(self, refused_size: int) -> None:
        """After a 413 on ``refused_size`` bytes, pack later bodies at half that size."""
        with self.lock:
            new = max(1024, refused_size // 2)
            if new >= self.limit.current:
                return
            self.limit.current = new
        if self.log is not None:
            self.log.warning(
                "rudderstack: the gateway refused a %s-byte body (413); packing at most %s "
                "bytes per request from now on; max_request_kb is higher than the gateway's limit",
                f"{refused_size:,}",
                f"{new:,}",
            )

    def _count_request(self, uncompressed: int, sent: int) -> None:
        with self.lock:
            self.stats.requests += 1
            self.stats.bytes_uncompressed += uncompressed
            self.stats.bytes_sent += sent

    def _count_outcome(self, outcome: BatchOutcome) -> None:
        self.stats.events_accepted += len(outcome.accepted)
        self.stats.events_rejected += len(outcome.rejected)
        self._tick()

    def _tick(self) -> None:
        self.stats.seconds = self.base_seconds + time.monotonic() - self.started

    def _log_retry(self, error: str, delay: float, attempt: int, n_events: int) -> None:
        with self.lock:
            self.stats.retries += 1
        if self.log is not None:
            self.log.warning(
                "rudderstack: request of %s events failed (%s); retry %d in %.2fs",
                f"{n_events:,}",
                self._redact(error),
                attempt,
                delay,
            )

    def _maybe_log_progress(self) -> None:
        now = time.monotonic()
        if now - self.last_progress < _PROGRESS_INTERVAL_SECONDS:
            return
        self.last_progress = now
        self._tick()
        if self.log is not None:
            self.log.info("rudderstack: %s", self._progress())

    def _log_summary(self) -> None:
        self._tick()
        if self.log is not None:
            self.log.info("rudderstack: done, %s", self._progress())

    def _progress(self) -> str:
        s = self.stats.since(self.before)
        text = (
            f"{s.events_accepted:,} events accepted, {s.events_rejected:,} rejected in "
            f"{s.seconds:.1f}s ({s.events_per_second:,.0f}/s), {s.requests:,} requests, "
            f"{s.retries:,} retries, {s.bytes_sent / 1e6:,.1f} MB sent"
        )
        if s.throttled:
            text += f", {s.throttled:,} rate-limited (429)"
        if self.pacer is not None:
            text += f", paced {s.paced_seconds:.1f}s (max_events_per_second)"
        if self.throttle.rate is not None:
            text += f", pacing at {self.throttle.rate:,.0f} events/s for the rate limit"
        return text

    def _redact(self, text: str) -> str:
        """Belt and braces: no message may carry the key, whatever a server echoes back."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class _Refusals:
    """Events the gateway refused one by one (400) in a delivery, against those it accepted: to
    tell a data plane that refuses everything (a misconfiguration: a bisection down to single
    events would cost two requests per event, and every row would end up quarantined) from a
    few bad events among good ones (bisected, rejected, counted toward quarantine)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reasons: Counter[str] = Counter()
        self.refused_in_row = 0  # with nothing accepted in between
        self.accepted_events = 0

    def accepted(self, n_events: int) -> None:
        with self.lock:
            self.accepted_events += n_events
            self.refused_in_row = 0

    def refused(self, reason: str) -> str | None:
        """One more event refused for ``reason``; when the refusals are systematic, why."""
        with self.lock:
            self.reasons[reason] += 1
            self.refused_in_row += 1
            refused = self.reasons.total()
            if refused < _SYSTEMATIC_REFUSALS:
                return None
            if self.refused_in_row >= _SYSTEMATIC_REFUSALS:
                return (
                    f"the last {self.refused_in_row:,} events tried one by one were all refused, "
                    "with nothing accepted in between"
                )
            same = self.reasons.most_common(1)[0][1]
            answered = refused + self.accepted_events
            if same >= _SYSTEMATIC_SHARE * answered:
                return f"{same:,} of the {answered:,} events it answered for were refused alike"
            return None


def _describe_answer(text: str) -> str:
    """What a body that is not the gateway's answer looks like, quoting little of it (an echo
    server would send the events, and their row values, back)."""
    body = text.strip()
    if not body:
        return "an empty body"
    head = body[:512].lower()
    if head.startswith("<"):
        return "an HTML page" if "html" in head else "an XML document"
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        flat = " ".join(body.split())
        return f"the text {flat[:40]!r}" + ("..." if len(flat) > 40 else "")
    return "a JSON document"


def _first_failure(pending: Iterable[Future[BatchOutcome]]) -> BaseException | None:
    """The exception of the first settled batch that failed, if any."""
    for future in pending:
        if future.done() and not future.cancelled():
            error = future.exception()
            if error is not None:
                return error
    return None
