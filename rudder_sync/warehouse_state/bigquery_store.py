"""BigQuery's store (`store.StateStore`): a sync's state in the dataset `<state_schema>`.

Through google-cloud-bigquery, with the warehouse's client (its project, location, credentials
and endpoints). BigQuery runs every statement as a job, and keeps a multi-statement transaction
inside one script job only (sessions would span jobs, but bqemulator serves none), so this store
is a DB-API-like connection whose commit is ONE job:

* `execute` adds the statement to a script; `commit` runs the script as one query job. Writes
  (DML) run as `BEGIN TRANSACTION; <fence>; ...; COMMIT TRANSACTION;`: all or nothing. DDL on
  permanent tables cannot run inside a BigQuery transaction: a script of DDL (the state's tables
  created if missing, the model, the delta, window tables rebuilt) runs without one, statement
  after statement; each of those tables is derived or created if missing, so a script that stops
  half-way is rebuilt by the next run. Written values are literals in the statements (bqemulator
  binds no parameters in a script); reads bind theirs as named parameters.
* The fence: the script of a run that holds the lock first checks that the lock row still names
  it (`SELECT IF(EXISTS (...), 1, ERROR(...))`). A killed client does not stop its job: a commit
  that lands after another run took the lock over changes nothing.
* Reads (`rows`, `arrow`) run at once, over REST (the Storage Read API does not read query
  results on bqemulator); `reader` is the warehouse's own read path (`read_model`). A read while
  writes wait in the script would not see them: it is a bug, and raises.
* `ingest` loads the rows by a load job (Parquet) into `<sync>__in__rs_<name>` in the state
  dataset, replaced at each use (25,000 rows on bqemulator: 0.24 s; as multi-row INSERTs of
  1,000 rows, 364 s).
* Every job carries the label `rudder_sync_owner=<token of the lock owner>`: taking over the lock
  of a run that died (or whose row expired) first cancels that run's jobs still running and waits
  until they end.

The state's SQL is PostgreSQL's (transpiled here by sqlglot); the diff's statements arrive in
BigQuery's already (`sql.render`; their quoted names are in backticks, which PostgreSQL's never
have). docs/large-models.md ("BigQuery") has the commit protocol and what a crash leaves.
"""

from __future__ import annotations

import base64
import io
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar

import pyarrow as pa

from ..errors import StateError
from ..warehouses.vendor import first_line, utc_datetime
from . import rowlock_store
from .rowlock_store import _QUALIFIED, LOCK_TABLE, RowLockStore, _lower_state_columns
from .sql import LOADED_INFIX

OWNER_LABEL = "rudder_sync_owner"
# How long taking over a dead run's lock waits for its jobs to end after cancelling them.
SETTLE_SECONDS = 300.0
_FENCE = "rudder_sync fence"
# What hides a placeholder from the scanner in BigQuery SQL: strings (with backslash escapes),
# quoted names, comments.
_SKIP = (
    r"'(?:[^'\\]|\\.)*'"
    r'|"(?:[^"\\]|\\.)*"'
    r"|`[^`]*`"
    r"|--[^\n]*|#[^\n]*|/\*.*?\*/"
)
_PLACEHOLDER = re.compile(rf"(?P<skip>{_SKIP})|[$@](?P<n>\d+)\b", re.DOTALL)
_DDL = re.compile(r"^\s*(create|drop|alter)\b", re.IGNORECASE)


class _Fenced(Exception):
    """A commit script refused by its fence: the lock row names another run."""


class _Session:
    """The client as the DB-API connection `RowLockStore` drives: `commit` runs the script
    that waits (the store's own session), `rollback` drops it."""

    def __init__(
        self,
        client: Any,
        flush: Callable[[], None] | None = None,
        drop: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self._flush = flush
        self._drop = drop

    def commit(self) -> None:
        if self._flush is not None:
            self._flush()

    def rollback(self) -> None:
        if self._drop is not None:
            self._drop()

    def close(self) -> None:
        self.client.close()


class Store(RowLockStore):
    """A sync's state tables in a BigQuery dataset, locked by a row; each commit one job."""

    dialect: ClassVar[str] = "bigquery"
    paramstyle: ClassVar[str] = "numeric"
    text_type: ClassVar[str] = "text"  # STRING, once transpiled
    grantee: ClassVar[str] = "service account"

    def __init__(self, warehouse: Any, tables: Any, sync_name: str) -> None:
        self._script: list[str] = []
        self._timeout: float | None = None
        super().__init__(warehouse, tables, sync_name)
        # the store's own session: its commit runs the script (the renewal's runs nothing)
        self.conn = self.cursor = _Session(self.conn.client, self._flush, self._drop)

    # -- the connection ---------------------------------------------------------------------------
    def _connect(self) -> _Session:
        return _Session(self.warehouse.client())

    def _cursor(self, conn: Any) -> Any:
        return conn

    @property
    def client(self) -> Any:
        return self.conn.client

    @property
    def project(self) -> str:
        return str(self.client.project)

    def _errors(self) -> tuple[type[Exception], ...]:
        from google.api_core.exceptions import GoogleAPIError

        return (GoogleAPIError,)

    def _secrets(self) -> list[str | None]:
        return [self.warehouse.gcp_credentials]

    def _message(self, exc: BaseException) -> str:
        return first_line(getattr(exc, "message", None) or str(exc))

    @property
    def _labels(self) -> dict[str, str]:
        return {OWNER_LABEL: _token(self.owner)}

    def _job_config(self, parameters: list[Any] | None = None, timeout: float | None = None) -> Any:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(labels=self._labels, query_parameters=parameters or [])
        if timeout:
            config.job_timeout_ms = max(1, round(timeout * 1000))
        return config

    def _query(
        self, sql: str, parameters: list[Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run one job and wait for it; its rows."""
        job = self.client.query(sql, job_config=self._job_config(parameters, timeout))
        return job.result()

    # -- statements -------------------------------------------------------------------------------
    def bigquery_sql(
        self, sql: str, params: Sequence[Any] | None = None, inline: bool = False
    ) -> tuple[str, list[Any]]:
        """``sql`` in BigQuery's dialect, its `$n` as `@pn` parameters (or, ``inline``, as
        literals); the parameters used."""
        text = sql if "`" in sql else transpile(sql)
        values = list(params or ())
        used: dict[int, None] = {}

        def one(match: re.Match[str]) -> str:
            if match.group("skip") is not None:
                return match.group(0)
            n = int(match.group("n"))
            if n > len(values):
                return match.group(0)
            used[n] = None
            return literal(values[n - 1]) if inline else f"@p{n}"

        text = _PLACEHOLDER.sub(one, text)
        if inline:
            return text, []
        from ..warehouses.bigquery import query_parameter

        return text, [query_parameter(f"p{n}", values[n - 1]) for n in used]

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        """Add a statement to the script `commit` runs; its row count is not known yet (-1)."""
        self._script.append(self.bigquery_sql(sql, params, inline=True)[0])
        return -1

    def _reading(self) -> None:
        if self._script:
            raise RuntimeError(
                f"sync '{self.sync_name}': a read while {len(self._script)} statement(s) wait "
                "to be committed on BigQuery (one job per commit): the read would not see them. "
                "This is a bug in rudder_sync: read before the first write, or after the commit."
            )

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        self._reading()
        return [tuple(row.values()) for row in self._query(*self.bigquery_sql(sql, params))]

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        self._reading()
        result = self._query(*self.bigquery_sql(sql, params))
        table = result.to_arrow(create_bqstorage_client=False)
        return table.rename_columns([name.lower() for name in table.column_names])

    @contextmanager
    def reader(
        self, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> Iterator[pa.RecordBatchReader]:
        """The warehouse's read path (a dry run refuses anything but a SELECT: read-only)."""
        self._reading()
        with self.warehouse.read_model(sql, params) as reader:
            yield _lower_state_columns(reader)

    def _table_ref(self, table: str) -> str:
        match = _QUALIFIED.match(table)
        if match is None:
            raise ValueError(f"not a qualified table name: {table}")
        schema, name = (part.replace('""', '"') for part in match.groups())
        return f"{self.project}.{schema}.{name}"

    def columns(self, table: str) -> list[str]:
        return [
            field.name.lower() for field in self.client.get_table(self._table_ref(table)).schema
        ]

    def ingest(self, name: str, table: pa.Table) -> str:
        """A load job (Parquet) into `<sync>__in__rs_<name>` of the state dataset, replaced."""
        import pyarrow.parquet as pq
        from google.cloud import bigquery

        bare = f"{self.tables.prefix}{LOADED_INFIX}{name.removeprefix('__rs_')}"
        if any(f"`{bare}`" in statement for statement in self._script):
            raise RuntimeError(
                f"sync '{self.sync_name}': {bare} is loaded again while a statement that reads "
                "it waits to be committed (a bug in rudder_sync)."
            )
        ref = f"{self.project}.{self.tables.schema}.{bare}"
        self.client.delete_table(ref, not_found_ok=True)
        data = io.BytesIO()
        pq.write_table(table, data)
        data.seek(0)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            schema=[bigquery.SchemaField(f.name, _bigquery_type(f.type)) for f in table.schema],
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            labels=self._labels,
        )
        self.client.load_table_from_file(data, ref, job_config=config).result()
        return self.tables.qualified(bare)

    # -- commits ----------------------------------------------------------------------------------
    def _drop(self) -> None:
        self._script, self._timeout = [], None

    def _flush(self) -> None:
        """Run what waits as one job: DML in one transaction, DDL in order; fenced while the run
        holds the lock."""
        statements, timeout = self._script, self._timeout
        self._drop()
        if not statements:
            return
        ddl = [bool(_DDL.match(s)) for s in statements]
        if any(ddl) and not all(ddl):
            raise RuntimeError(
                f"sync '{self.sync_name}': a BigQuery commit may hold DDL or DML, not both "
                "(DDL cannot run in a BigQuery transaction): a bug in rudder_sync."
            )
        fence = self._fence() if self._locked else ""
        if len(statements) == 1 and not fence:
            self._query(statements[0], timeout=timeout)
            return
        body = "".join(f"{statement};\n" for statement in statements)
        script = (
            fence + body if all(ddl) else f"BEGIN TRANSACTION;\n{fence}{body}COMMIT TRANSACTION;"
        )
        try:
            self._query(script, timeout=timeout)
        except self.error_types as exc:
            if _FENCE in self._message(exc):
                raise _Fenced(self._message(exc)) from None
            raise

    def _fence(self) -> str:
        """A statement that fails the script unless the lock row still names this run (`ERROR`:
        bqemulator answers an uncaught `RAISE` with a server error, not the job's failure)."""
        key, owner = literal(self.tables.prefix), literal(self.owner)
        lock = f"`{self.tables.schema}`.`{LOCK_TABLE}`"
        message = literal(f"{_FENCE}: the lock row of {self.tables.prefix} names another run")
        return (
            f"SELECT IF(EXISTS (SELECT 1 FROM {lock} WHERE sync_key = {key} AND owner = {owner}), "
            f"1, ERROR({message}));\n"
        )

    def commit(self) -> None:
        try:
            super().commit()
        except _Fenced:
            self.lost_lock = "its lock row names another run, which took it over"
            super().commit()  # raises the lost lock's error

    def model_settings(self, statement_timeout_seconds: float | None) -> list[str]:
        """No statement: the model's job gets `job_timeout_ms` (BigQuery has no session
        setting for it)."""
        self._timeout = statement_timeout_seconds
        return []

    def is_timeout(self, exc: BaseException) -> bool:
        return "timed out" in self._message(exc).lower() or "timeout" in self._message(exc).lower()

    def _merge_source(self, select: str) -> str:
        return f"({select})"

    # -- the dataset ------------------------------------------------------------------------------
    def _schema_tables(self) -> list[str]:
        from google.api_core.exceptions import NotFound

        try:
            found = list(self.client.list_tables(f"{self.project}.{self.tables.schema}"))
        except NotFound:
            return []
        return [str(t.table_id) for t in found]

    def _schema_names(self) -> set[str]:
        return {str(d.dataset_id) for d in self.client.list_datasets()}

    def _create_schema(self) -> None:
        """The dataset, in the warehouse's location (by the API: `bigquery.datasets.create`)."""
        from google.cloud import bigquery

        dataset = bigquery.Dataset(f"{self.project}.{self.tables.schema}")
        if self.warehouse.location:
            dataset.location = self.warehouse.location
        self.client.create_dataset(dataset, exists_ok=True)

    def exists(self, table: str) -> bool:
        from google.api_core.exceptions import NotFound

        try:
            self.client.get_table(self._table_ref(table))
        except NotFound:
            return False
        return True

    # -- grants -----------------------------------------------------------------------------------
    def denied(self, exc: BaseException) -> bool:
        return getattr(exc, "code", None) == 403 or "Access Denied" in self._message(exc)

    def grants(self) -> str:
        """BigQuery's own statements for this client's principal (IAM on the project by gcloud;
        the dataset's role by `GRANT ... ON SCHEMA`)."""
        member = self._member()
        p, d = self.project, f"`{self.project}.{self.tables.schema}`"
        project_role = f"gcloud projects add-iam-policy-binding {p} --member={member} --role="
        return (
            f"either let rudder_sync create the dataset: {project_role}roles/bigquery.user; or "
            f"create it and grant it: CREATE SCHEMA {d}; GRANT `roles/bigquery.dataEditor` ON "
            f'SCHEMA {d} TO "{member}"; {project_role}roles/bigquery.jobUser; (and '
            f"roles/bigquery.dataViewer on the models' datasets)"
        )

    def _member(self) -> str:
        credentials = getattr(self.client, "_credentials", None)
        email = getattr(credentials, "service_account_email", None)
        if isinstance(email, str) and "@" in email:
            return f"serviceAccount:{email}"
        return "serviceAccount:SERVICE_ACCOUNT_EMAIL"

    # -- the lock row -----------------------------------------------------------------------------
    def _take_row(self, key: str, now: datetime, expires: datetime) -> None:
        """One MERGE: insert this run's row, or take over the sync's expired one, once the jobs
        of its owner ended."""
        held = self.rows(
            f"select owner from {self.lock_table} where sync_key = $1 and expires_at < $2",
            [key, now],
        )
        for (owner,) in held:
            self._settle_jobs(str(owner))
        self.execute(  # BigQuery's SQL already (quoted names in backticks)
            f"""
            MERGE `{self.tables.schema}`.`{LOCK_TABLE}` l USING (
                SELECT CAST($1 AS STRING) AS sync_key, CAST($2 AS STRING) AS owner,
                       CAST($3 AS TIMESTAMP) AS acquired_at, CAST($4 AS TIMESTAMP) AS expires_at
            ) s ON l.sync_key = s.sync_key
            WHEN MATCHED AND l.expires_at < s.acquired_at THEN UPDATE SET
                owner = s.owner, acquired_at = s.acquired_at, expires_at = s.expires_at
            WHEN NOT MATCHED THEN INSERT (sync_key, owner, acquired_at, expires_at)
                VALUES (s.sync_key, s.owner, s.acquired_at, s.expires_at)
            """,
            [key, self.owner, now, expires],
        )

    def _take_over(self, owner: str) -> None:
        if owner != self.owner:
            self._settle_jobs(owner)
        super()._take_over(owner)

    def _settle_jobs(self, owner: str) -> None:
        """Cancel the jobs of a run that lost its lock (dead, or expired) and wait until they
        end: a commit of it still running could otherwise land after the takeover."""
        label = _token(owner)
        deadline = time.monotonic() + SETTLE_SECONDS
        running = [
            job
            for state in ("pending", "running")
            for job in self.client.list_jobs(state_filter=state)
            if (getattr(job, "labels", None) or {}).get(OWNER_LABEL) == label
        ]
        for job in running:
            with suppress(*self.error_types):
                self.client.cancel_job(job.job_id, location=job.location)
        for job in running:
            while True:
                job.reload()
                if job.state == "DONE":
                    break
                if time.monotonic() > deadline:
                    raise StateError(
                        f"sync '{self.sync_name}': the run {owner} that held its lock on "
                        f"{self.where} is gone, but its job {job.job_id} still runs after "
                        f"{SETTLE_SECONDS:.0f}s. Fix: cancel it (bq cancel {job.job_id}), "
                        "then run again."
                    )
                time.sleep(1.0)

    def renew(self, conn: Any) -> None:
        """Extend this run's lock row (one job on the renewal's own client); a row that is gone
        marks the lock lost."""
        sql, parameters = self.bigquery_sql(
            f"update {self.lock_table} set expires_at = $1 where sync_key = $2 and owner = $3",
            [
                datetime.now(UTC) + timedelta(seconds=rowlock_store.LOCK_TTL_SECONDS),
                self.tables.prefix,
                self.owner,
            ],
        )
        job = conn.client.query(sql, job_config=self._job_config(parameters))
        job.result()
        if job.num_dml_affected_rows == 0:
            self.lost_lock = "its lock row expired and another run took it over"


# -- SQL ------------------------------------------------------------------------------------------
def transpile(sql: str) -> str:
    """PostgreSQL's SQL as BigQuery's: `DELETE`/`UPDATE` get the `WHERE` BigQuery requires, and
    a column is qualified by its table's name only (`"s"."t".c` is `t.c` there)."""
    import sqlglot
    from sqlglot import exp

    def fix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Delete | exp.Update) and not node.args.get("where"):
            node.set("where", exp.Where(this=exp.true()))
        if isinstance(node, exp.Column) and node.args.get("db") is not None:
            node.set("db", None)
        return node

    tree = sqlglot.parse_one(sql, read="postgres").transform(fix)
    return tree.sql(dialect="bigquery")


def literal(value: Any) -> str:
    """A value as a BigQuery literal (scripts: bqemulator binds no parameters in them)."""
    value = utc_datetime(value)
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"CAST('{value}' AS FLOAT64)"
    if isinstance(value, datetime):
        kind = "TIMESTAMP" if value.tzinfo is not None else "DATETIME"
        return f"{kind} {_string(value.isoformat())}"
    if isinstance(value, date):
        return f"DATE {_string(value.isoformat())}"
    return _string(str(value))


def _string(text: str) -> str:
    """A quoted BigQuery string: backslash, quote, newline, tab and return escaped; text with
    other control characters as its UTF-8 in base64 (bqemulator reads no `\\u` escapes)."""
    escaped = "".join(_ESCAPES.get(char, char) for char in text)
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in escaped):
        encoded = base64.b64encode(text.encode()).decode()
        return f"SAFE_CONVERT_BYTES_TO_STRING(FROM_BASE64('{encoded}'))"
    return f"'{escaped}'"


_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _bigquery_type(kind: pa.DataType) -> str:
    if pa.types.is_boolean(kind):
        return "BOOL"
    if pa.types.is_integer(kind):
        return "INT64"
    if pa.types.is_floating(kind):
        return "FLOAT64"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMP" if kind.tz is not None else "DATETIME"
    return "STRING"


def _token(owner: str) -> str:
    """The label value of a lock owner (`host:pid:token`): its token (lower-case hex)."""
    return re.sub(r"[^a-z0-9_-]", "_", owner.rsplit(":", 1)[-1].lower())[:63]
