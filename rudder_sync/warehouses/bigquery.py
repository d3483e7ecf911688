"""BigQuery through `google-cloud-bigquery`: Arrow record batches, streamed.

A model is first checked with a dry run (free): a query whose statement type is not SELECT is
refused, since BigQuery has no read-only session. It then runs as a query job with named
`@parameters` (partition bounds as TIMESTAMP), `job_timeout_ms` when a statement timeout is set,
and its rows stream with `to_arrow_iterable`, through the BigQuery Storage Read API when its
client is installed (the extra installs it). `NUMERIC` stays a decimal; `BIGNUMERIC` (76 digits,
too wide for DuckDB) becomes JSON numbers with the exact digits; `JSON` becomes DuckDB `JSON`;
`GEOGRAPHY` is WKT text; `DATETIME` a timestamp without zone, `TIMESTAMP` a UTC one.

Users of `dagster-gcp` hand over their `BigQueryResource` with
`BigQueryWarehouse.from_dagster(resource)`: its project, location and credentials are copied,
and a credential set with `EnvVar` stays an `EnvVar`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, ClassVar

import dagster as dg
import pyarrow as pa
from pydantic import Field

from .base import BATCH_ROWS, WarehouseError, WarehouseResource, guarded, stream
from .settings import is_loopback
from .sql import bind
from .vendor import JSON, batches_of, first_line, plain_type, utc_datetime

_FIXES = (
    ("Not found: Dataset", "check the dataset name and location; the service account needs "
     "roles/bigquery.dataViewer on it"),
    ("Not found: Table", "check the table name; the service account needs "
     "roles/bigquery.dataViewer on its dataset"),
    ("Access Denied", "grant the service account roles/bigquery.jobUser on the project and "
     "roles/bigquery.dataViewer on the datasets (docs/warehouses.md)"),
    ("does not have bigquery.jobs.create", "grant roles/bigquery.jobUser on 'project'"),
    ("default credentials were not found", "set 'credentials_file' or configure Application "
     "Default Credentials (gcloud auth application-default login)"),
    ("Job timed out", ""),
    ("Syntax error", "correct the model; it runs in BigQuery's GoogleSQL"),
)  # fmt: skip


class BigQueryWarehouse(WarehouseResource):
    """A BigQuery project. Credentials: a service account key file, base64 key JSON through
    `EnvVar` (as dagster-gcp's `gcp_credentials`), or Application Default Credentials."""

    kind: ClassVar[str] = "bigquery"
    dialect: ClassVar[str] = "bigquery"

    project: str | None = Field(
        default=None, description="Project that runs the jobs; default: the credentials'."
    )
    location: str | None = Field(default=None, description="Location of the jobs, e.g. EU.")
    credentials_file: str | None = Field(
        default=None, description="Path of a service account key file (JSON)."
    )
    gcp_credentials: str | None = Field(
        default=None,
        repr=False,
        description="Service account key JSON, base64-encoded (secret: set it with EnvVar).",
    )

    credentials: str | None = Field(
        default=None,
        description="'anonymous': no credentials, for an emulator on a loopback endpoint only.",
    )
    api_endpoint: str | None = Field(
        default=None, description="REST endpoint URL (a private endpoint, a local emulator)."
    )
    storage_api_endpoint: str | None = Field(
        default=None,
        description="Storage Read API (gRPC) endpoint as host:port; plaintext on a loopback host.",
    )
    client_args: dict[str, Any] = Field(
        default={}, description="More keyword arguments for google.cloud.bigquery.Client."
    )
    state_schema: str | None = Field(
        default=None,
        description="Keep each sync's state in this dataset (of `project`, in `location`) and "
        "diff there: only changed rows leave the warehouse (docs/large-models.md).",
    )

    def describe(self) -> str:
        text = f"bigquery project {self.project or '(from credentials)'}"
        text += f" location {self.location}" if self.location else ""
        return text + (f" via {self.api_endpoint}" if self.api_endpoint else "")

    @staticmethod
    def from_dagster(
        resource: dg.ConfigurableResource, statement_timeout_seconds: float | None = None
    ) -> BigQueryWarehouse:
        """The warehouse of a `dagster_gcp.BigQueryResource` (project, location, credentials)."""
        missing = [
            f
            for f in ("project", "location", "gcp_credentials")
            if f not in type(resource).model_fields
        ]
        if missing:
            raise WarehouseError(
                f"{type(resource).__name__} is not a dagster_gcp.BigQueryResource (no "
                f"{', '.join(missing)}). Fix: pass a BigQueryResource to "
                "BigQueryWarehouse.from_dagster."
            )
        return BigQueryWarehouse(
            project=resource.project,
            location=resource.location,
            gcp_credentials=resource.gcp_credentials,
            statement_timeout_seconds=statement_timeout_seconds,
        )

    def client(self) -> Any:
        """A `google.cloud.bigquery.Client` for these settings."""
        from google.cloud import bigquery

        credentials = None
        try:
            from google.oauth2 import service_account

            if self.gcp_credentials:
                info = json.loads(base64.b64decode(self.gcp_credentials))
                credentials = service_account.Credentials.from_service_account_info(info)
            elif self.credentials_file:
                credentials = service_account.Credentials.from_service_account_file(
                    self.credentials_file
                )
            elif self.credentials == "anonymous":
                from google.auth.credentials import AnonymousCredentials

                credentials = AnonymousCredentials()
            kwargs: dict[str, Any] = {"project": self.project, "location": self.location}
            if self.api_endpoint:
                kwargs["client_options"] = {"api_endpoint": self.api_endpoint}
            if credentials is not None:
                kwargs["credentials"] = credentials
            return bigquery.Client(**{**kwargs, **self.client_args})
        except Exception as exc:  # noqa: BLE001 - bad key, no default credentials, ...
            raise self._error("cannot connect to", exc) from None

    @contextmanager
    def read_model(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[pa.RecordBatchReader]:
        """Dry-run `sql` (SELECT only), run it, stream its rows, normalised."""
        from google.api_core.exceptions import GoogleAPIError
        from google.cloud import bigquery

        query, values = bind(sql, params, "at")
        parameters = [query_parameter(name, value) for name, value in dict(values).items()]
        client = self.client()
        storage = None
        try:
            try:
                dry = client.query(
                    query,
                    job_config=bigquery.QueryJobConfig(
                        dry_run=True, use_query_cache=False, query_parameters=parameters
                    ),
                )
                if dry.statement_type not in (None, "SELECT"):
                    raise WarehouseError(
                        f"the model failed on {self.describe()}: it is a {dry.statement_type} "
                        "statement. Fix: models must be a SELECT; they run read-only."
                    )
                config = bigquery.QueryJobConfig(query_parameters=parameters)
                if self.statement_timeout_seconds:
                    config.job_timeout_ms = max(1, round(self.statement_timeout_seconds * 1000))
                job = client.query(query, job_config=config)
                storage = self.storage_client(client)
                # With the Storage API, no rows over REST: a first page fetched as JSON would be
                # dropped (or, holding every row, would keep the Storage API from being used).
                rows = job.result(page_size=None if storage else BATCH_ROWS)
                schema = normalised_schema(rows.schema)
                exact = exact_columns(rows.schema)
                chunks = rows.to_arrow_iterable(bqstorage_client=storage)
            except (GoogleAPIError, ValueError) as exc:
                raise self._error("the model failed on", exc) from None
            yield stream(schema, self._batches(chunks, schema, exact, GoogleAPIError))
        finally:
            if storage is not None:
                storage._transport.close()  # noqa: SLF001 - its gRPC channel
            client.close()

    def storage_client(self, client: Any) -> Any:
        """The BigQuery Storage Read API client (streamed Arrow, faster than REST), or None when
        its package is missing or an emulator without `storage_api_endpoint` is used (REST)."""
        try:
            from google.cloud import bigquery_storage
        except ImportError:
            return None
        endpoint = self.storage_api_endpoint
        if endpoint is None:
            if self.credentials == "anonymous":
                return None
            return bigquery_storage.BigQueryReadClient(credentials=client._credentials)  # noqa: SLF001
        host = endpoint.rsplit(":", 1)[0].strip("[]")
        if is_loopback(host):  # a local emulator: plaintext gRPC
            import grpc
            from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
                BigQueryReadGrpcTransport,
            )

            # the options the client's own transport sets: no cap on a message's size (gRPC's
            # default 4 MB refuses a Storage Read API response of a wide or large result)
            channel = grpc.insecure_channel(
                endpoint,
                options=[
                    ("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1),
                ],
            )
            transport = BigQueryReadGrpcTransport(channel=channel, credentials=client._credentials)  # noqa: SLF001
            return bigquery_storage.BigQueryReadClient(transport=transport)
        return bigquery_storage.BigQueryReadClient(
            credentials=client._credentials,  # noqa: SLF001
            client_options={"api_endpoint": endpoint},
        )

    def _batches(
        self,
        chunks: Iterator[pa.RecordBatch],
        schema: pa.Schema,
        exact: frozenset[str],
        errors: type[Exception],
    ) -> Iterator[pa.RecordBatch]:
        return guarded(batches_of(chunks, schema, exact), (errors, OSError), self._lost)

    def _lost(self, exc: BaseException) -> WarehouseError:
        return self._error("lost the result stream from", exc)

    def _error(self, what: str, exc: BaseException) -> WarehouseError:
        message = first_line(getattr(exc, "message", None) or str(exc))
        fix = "correct the model; it runs in BigQuery's GoogleSQL"
        if what == "cannot connect to":
            fix = "check 'project', 'credentials_file' or the credentials"
        fix = next((f for words, f in _FIXES if words in message), fix)
        if "timed out" in message and self.statement_timeout_seconds:
            fix = self.timeout_fix()
        elif what == "lost the result stream from":
            fix = "the result stream broke off; run the sync again"
        return self.failure(what, message, fix, [self.gcp_credentials])


def query_parameter(name: str, value: Any) -> Any:
    """A named query parameter typed by its Python value (datetimes with a zone: TIMESTAMP)."""
    from google.cloud import bigquery

    value = utc_datetime(value)
    if isinstance(value, datetime):
        kind = "TIMESTAMP" if value.tzinfo is not None else "DATETIME"
    elif isinstance(value, bool):
        kind = "BOOL"
    elif isinstance(value, int):
        kind = "INT64"
    elif isinstance(value, float):
        kind = "FLOAT64"
    elif isinstance(value, Decimal):
        kind = "BIGNUMERIC"
    elif isinstance(value, date):
        kind = "DATE"
    elif isinstance(value, time):
        kind = "TIME"
    elif isinstance(value, bytes):
        kind = "BYTES"
    else:
        kind, value = "STRING", None if value is None else str(value)
    return bigquery.ScalarQueryParameter(name, kind, value)


def normalised_schema(fields: list[Any]) -> pa.Schema:
    """The rows' Arrow schema from the result's BigQuery schema (`SchemaField`s)."""
    return pa.schema([pa.field(f.name, _arrow_type(f)) for f in fields])


def exact_columns(fields: list[Any]) -> frozenset[str]:
    """Top-level BIGNUMERIC columns: their exact digits become JSON numbers."""
    return frozenset(f.name for f in fields if _top_type(f) == "BIGNUMERIC")


def _top_type(field: Any) -> str:
    if (field.mode or "").upper() == "REPEATED":
        return "REPEATED"
    return (field.field_type or "").upper()


def _arrow_type(field: Any, top: bool = True) -> pa.DataType:
    """JSON and BIGNUMERIC become DuckDB JSON at the top level, text inside lists and structs."""
    from google.cloud.bigquery import SchemaField
    from google.cloud.bigquery._pandas_helpers import bq_to_arrow_data_type

    kind = (field.field_type or "").upper()
    if (field.mode or "").upper() == "REPEATED":
        inner = SchemaField(field.name, field.field_type, mode="NULLABLE", fields=field.fields)
        return pa.list_(_arrow_type(inner, top=False))
    if kind in ("JSON", "BIGNUMERIC"):
        return JSON if top else pa.string()
    if kind in ("RECORD", "STRUCT"):
        return pa.struct([pa.field(f.name, _arrow_type(f, top=False)) for f in field.fields])
    if kind in ("GEOGRAPHY", "INTERVAL"):
        return pa.string()
    arrow = bq_to_arrow_data_type(field)
    return plain_type(arrow) if arrow is not None else pa.string()
