"""The one thing the sync needs from a warehouse: run a model read-only, stream Arrow batches.

Every engine is a `WarehouseResource` (a Dagster ConfigurableResource, so secrets arrive through
`EnvVar` and never land in Dagster's storage). Snapshot, diff, events, partitions, the change guard,
dry runs and the trigger sensor see a warehouse only through `read_model`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, ClassVar

import dagster as dg
import pyarrow as pa
from pydantic import Field, PrivateAttr

from ..errors import WarehouseError

BATCH_ROWS = 100_000


class WarehouseResource(dg.ConfigurableResource):
    """A warehouse that runs models read-only and streams their rows as Arrow record batches."""

    kind: ClassVar[str] = "warehouse"
    #: sqlglot dialect used to check models at load time
    dialect: ClassVar[str] = ""

    statement_timeout_seconds: float | None = Field(
        default=None,
        description="Cancel a model that runs longer than this (seconds). Default: no limit.",
    )

    # thread -> [the connection its `session` shares (None before the first read), in use]
    _sessions: dict[int, list[Any]] = PrivateAttr(default_factory=dict)

    @contextmanager
    def read_model(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[pa.RecordBatchReader]:
        """Run `sql` read-only, binding `$partition_start`/`$partition_end` from `params`, on
        the step's connection (`session`) or one of its own."""
        with self.connection() as conn, self.read_on(conn, sql, params, read_only=True) as reader:
            yield reader

    def read_on(
        self, conn: Any, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> AbstractContextManager[pa.RecordBatchReader]:
        """Stream `sql`'s rows on an open connection (of `open_connection`; the in-warehouse
        state reads its own tables on its connection this way)."""
        raise NotImplementedError

    @contextmanager
    def session(self) -> Iterator[None]:
        """The reads inside it (on this thread) share one connection, opened by the first and
        closed at the end: a step that reads the warehouse several times (an append sync's
        bounds, counts and rows, a backfill's windows) connects, and logs in, once."""
        key = threading.get_ident()
        if key in self._sessions:  # nested: the outer session's
            yield
            return
        self._sessions[key] = [None, False]
        try:
            yield
        finally:
            conn, _ = self._sessions.pop(key)
            if conn is not None:
                self.disconnect(conn)

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """The connection a read uses: its session's, else (or while another read of the
        session still streams) one of its own, closed after it."""
        shared = self._sessions.get(threading.get_ident())
        if shared is None or shared[1]:
            conn = self.open_connection()
            try:
                yield conn
            finally:
                self.disconnect(conn)
            return
        if shared[0] is None:
            shared[0] = self.open_connection()
        shared[1] = True
        try:
            yield shared[0]
        finally:
            shared[1] = False

    def open_connection(self) -> Any:
        """A connection to read models on (engines whose `read_model` uses `connection`);
        failing, a `WarehouseError` naming the warehouse and the fix."""
        raise NotImplementedError

    def disconnect(self, conn: Any) -> None:
        """Close a connection of `open_connection`, quietly (its reads have ended)."""
        with suppress(Exception):  # closing after the reads: nothing left to report
            conn.close()

    def describe(self) -> str:
        """Which warehouse this is, for messages: type, host, database; never a secret."""
        return self.kind

    def failure(
        self, what: str, message: str, fix: str, secrets: Iterable[str | None]
    ) -> WarehouseError:
        """`<what> <warehouse>: <the driver's words>. Fix: <fix>.`, every secret masked."""
        return WarehouseError(redact(f"{what} {self.describe()}: {message}. Fix: {fix}.", secrets))

    def timeout_fix(self) -> str:
        """The fix for a model that the warehouse cancelled at `statement_timeout_seconds`."""
        return (
            f"the model ran longer than statement_timeout_seconds="
            f"{self.statement_timeout_seconds:g}; make it faster or raise the limit"
        )


# How drivers word a failure of the connection (or of the server), as opposed to the query: libpq
# and PostgreSQL (whose wire protocol Redshift speaks), and the generic socket errors.
CONNECTION_LOST_WORDS = (
    "server closed the connection",
    "terminating connection",
    "no connection to the server",
    "could not receive data from server",
    "could not send data to server",
    "connection refused",
    "connection reset",
    "connection timed out",
    "broken pipe",
    "ssl syscall",
    "ssl connection has been closed",
    "eof detected",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "network is unreachable",
)
# SQLSTATEs of the same: class 08 (connection exception), admin/crash shutdown, cannot connect now.
CONNECTION_LOST_SQLSTATES = ("08", "57P01", "57P02", "57P03")
RUN_AGAIN = "then run the sync again (nothing was sent or committed, nothing is lost)"
CONNECTION_LOST_FIX = (
    "the connection to the warehouse failed, not the model: check that the warehouse is up and "
    f"reachable from here, {RUN_AGAIN}"
)


def connection_lost(exc: BaseException, words: Iterable[str] = ()) -> bool:
    """Whether a driver error means the connection or the server failed, not the model's SQL.

    The same exception class (ADBC's OSError mid-stream, an OperationalError) carries both
    "division by zero" and "server closed the connection", so the SQLSTATE, the Python class and
    the driver's words decide. `words` adds a driver's own phrases; a vendor module calls this
    with them and reports `CONNECTION_LOST_FIX`.
    """
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    sqlstate = str(getattr(exc, "sqlstate", None) or "")
    if sqlstate.startswith(CONNECTION_LOST_SQLSTATES):
        return True
    text = str(exc).lower()
    return any(word in text for word in (*CONNECTION_LOST_WORDS, *words))


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """No message may carry a secret, whatever the driver echoes back."""
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def guarded(
    batches: Iterator[pa.RecordBatch],
    errors: tuple[type[BaseException], ...],
    fail: Callable[[BaseException], WarehouseError],
) -> Iterator[pa.RecordBatch]:
    """The batches; a driver error while streaming them becomes `fail(error)` (a lost stream)."""
    try:
        yield from batches
    except errors as exc:
        raise fail(exc) from None


def stream(schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> pa.RecordBatchReader:
    """A reader over normalised batches: one batch in memory at a time."""
    return pa.RecordBatchReader.from_batches(schema, batches)


class StreamGuard:
    """Keeps the WarehouseError raised while a consumer (DuckDB) reads the stream.

    The consumer wraps it in an error of its own; `read_model` re-raises the original, which
    names the warehouse and the fix:

        guard = StreamGuard()
        try:
            yield guard.reader(schema, batches)
        except Exception as exc:
            guard.reraise(exc)
            raise
    """

    def __init__(self, prefetch: int = 2) -> None:
        self.error: WarehouseError | None = None
        self.prefetch = prefetch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reader(self, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> pa.RecordBatchReader:
        """The batches, read ahead by a thread so the driver decodes while the consumer stores
        (both release the GIL): the read costs about the slower of the two, not their sum."""
        source = self._prefetched(batches) if self.prefetch else batches
        return stream(schema, self._watch(source))

    def close(self) -> None:
        """Stop reading ahead; call before closing the driver's cursor."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _prefetched(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        buffer: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        done = object()

        def put(item: Any) -> bool:
            while not self._stop.is_set():
                try:
                    buffer.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for batch in batches:
                    if not put(batch):
                        return
                put(done)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
                put(exc)

        self._thread = threading.Thread(target=produce, name="warehouse-read", daemon=True)
        self._thread.start()
        try:
            while True:
                item = buffer.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()

    def _watch(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        try:
            yield from batches
        except WarehouseError as exc:
            self.error = exc
            raise

    def reraise(self, exc: BaseException) -> None:
        """Raise the warehouse's own error if `exc` is a consumer's wrapping of it."""
        if self.error is not None and exc is not self.error:
            raise self.error from None
