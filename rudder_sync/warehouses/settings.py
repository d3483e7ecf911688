"""The `warehouse:` section of the sync YAML: one schema per engine, `{env: NAME}` values, secrets.

```yaml
warehouse: warehouse.duckdb              # shorthand: a DuckDB file
warehouse: {type: postgres, url: {env: PG_URL}, statement_timeout_seconds: 600}
```

Any string value may be written `{env: NAME}`: it must be set when the definitions load, and the
resource reads it through Dagster's `EnvVar`, so Dagster's storage and UI show the variable's name,
never its value. A secret written literally (a password, token, private key passphrase, or a URL
that embeds a password) is refused at load time.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import WarehouseSettingsError
from .postgres import url_password


class EnvRef(BaseModel):
    """`{env: NAME}`: the value of an environment variable, read when the definitions load."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: str

    def value(self) -> str:
        return os.environ.get(self.env, "")


Text = str | EnvRef


class WarehouseSettings(BaseModel):
    """Keys every warehouse type has."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: str
    statement_timeout_seconds: float | None = Field(default=None, gt=0)

    #: keys whose value is a secret: only through {env: ...}
    secrets: ClassVar[tuple[str, ...]] = ()
    #: the extra that installs the driver, and a module it provides
    extra: ClassVar[str | None] = None
    driver_module: ClassVar[str | None] = None
    example: ClassVar[str] = ""

    def resource_kwargs(self) -> dict[str, Any]:
        """The resource's settings: `{env: NAME}` values become `EnvVar(NAME)`."""
        kwargs: dict[str, Any] = {}
        for name, value in self:
            if name == "type" or value is None:
                continue
            key = type(self).model_fields[name].alias or name
            kwargs[_RESOURCE_NAMES.get(key, key)] = (
                dg.EnvVar(value.env) if isinstance(value, EnvRef) else value
            )
        return kwargs

    def check(self, where: str) -> None:
        """Checks beyond the schema; subclasses add their own."""


_RESOURCE_NAMES = {"path": "database", "schema": "schema_name"}


class DuckDBSettings(WarehouseSettings):
    type: Literal["duckdb"] = "duckdb"
    path: Path
    # Unpartitioned syncs: the diff reads the model where it is (`DuckDBWarehouse.attach`).
    read_in_place: bool = True
    example: ClassVar[str] = "warehouse: {type: duckdb, path: warehouse.duckdb}"

    def resource_kwargs(self) -> dict[str, Any]:
        kwargs = super().resource_kwargs()
        kwargs["database"] = str(self.path)
        return kwargs


class PostgresSettings(WarehouseSettings):
    type: Literal["postgres"] = "postgres"
    url: Text
    # Set: syncs keep their state in this schema and diff there (warehouse_state).
    state_schema: str | None = None
    example: ClassVar[str] = "warehouse: {type: postgres, url: {env: PG_URL}}"

    def check(self, where: str) -> None:
        _check_state_schema(where, self.state_schema)
        literal = isinstance(self.url, str)
        url = self.url if isinstance(self.url, str) else self.url.value()
        source = "key 'url'" if literal else f"key 'url' (from {self.url.env})"  # type: ignore[union-attr]
        if not url.startswith(("postgresql://", "postgres://")):
            raise WarehouseSettingsError(
                f"{where}: {source} is not a libpq URI. Fix: "
                "postgresql://user:password@host:5432/database?sslmode=require."
            )
        if literal and url_password(url):
            raise WarehouseSettingsError(
                f"{where}: key 'url' embeds a password in the YAML. Fix: write "
                "'url: {env: PG_URL}' and export PG_URL with the URL."
            )


def _check_state_schema(where: str, schema: str | None) -> None:
    """A state schema is a lower-case identifier: quoted everywhere, so the same on every engine
    (Snowflake keeps a quoted name's case)."""
    if schema is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise WarehouseSettingsError(
            f"{where}: key 'state_schema' is {schema!r}. Fix: use a lower-case "
            "identifier of letters, digits and '_' (at most 63), e.g. 'rudder_sync'."
        )


class SnowflakeSettings(WarehouseSettings):
    type: Literal["snowflake"] = "snowflake"
    account: Text
    user: Text
    password: Text | None = None
    private_key_file: Text | None = None
    private_key_passphrase: Text | None = None
    role: Text | None = None
    warehouse: Text | None = None
    database: Text | None = None
    schema_: Text | None = Field(default=None, alias="schema")
    # The endpoint, in the connector's own names: a private link or a local emulator.
    host: Text | None = None
    port: int | None = Field(default=None, gt=0, lt=65536)
    protocol: Literal["https", "http"] | None = None
    # Set: syncs keep their state in this schema of `database` and diff there (warehouse_state).
    state_schema: str | None = None
    secrets: ClassVar[tuple[str, ...]] = ("password", "private_key_passphrase")
    extra: ClassVar[str | None] = "snowflake"
    driver_module: ClassVar[str | None] = "snowflake.connector"
    example: ClassVar[str] = (
        "warehouse: {type: snowflake, account: xy12345.eu-central-1, user: RUDDER_SYNC, "
        "password: {env: SNOWFLAKE_PASSWORD}, warehouse: COMPUTE_WH, database: ANALYTICS}"
    )

    def check(self, where: str) -> None:
        _check_state_schema(where, self.state_schema)
        if self.state_schema is not None and self.database is None:
            raise WarehouseSettingsError(
                f"{where}: key 'state_schema' needs 'database' (the state schema is created in "
                "it). Fix: add e.g. 'database: ANALYTICS'."
            )
        if (self.password is None) == (self.private_key_file is None):
            raise WarehouseSettingsError(
                f"{where}: set exactly one of 'password' and 'private_key_file'. Fix: e.g. "
                "'password: {env: SNOWFLAKE_PASSWORD}' or 'private_key_file: /path/rsa_key.p8'."
            )
        if self.private_key_passphrase is not None and self.private_key_file is None:
            raise WarehouseSettingsError(
                f"{where}: key 'private_key_passphrase' needs 'private_key_file'. Fix: add it."
            )
        if self.protocol == "http" and not is_loopback(_text(self.host)):
            raise WarehouseSettingsError(
                f"{where}: key 'protocol' is http (no TLS), allowed only for a loopback 'host' "
                "(a local emulator). Fix: remove 'protocol' (https), or set 'host: 127.0.0.1'."
            )


class BigQuerySettings(WarehouseSettings):
    type: Literal["bigquery"] = "bigquery"
    project: Text | None = None
    location: Text | None = None
    credentials_file: Text | None = None  # unset: Application Default Credentials
    gcp_credentials: Text | None = None  # base64 service account key JSON, as dagster-gcp's
    # `anonymous`: no credentials at all, for an emulator on a loopback endpoint only.
    credentials: Literal["anonymous"] | None = None
    # Endpoints (a private endpoint, a local emulator): REST as a URL, the Storage Read API's gRPC
    # as host:port.
    api_endpoint: Text | None = None
    storage_api_endpoint: Text | None = None
    # Set: syncs keep their state in this dataset of `project` and diff there (warehouse_state).
    state_schema: str | None = None
    secrets: ClassVar[tuple[str, ...]] = ("gcp_credentials",)
    extra: ClassVar[str | None] = "bigquery"
    driver_module: ClassVar[str | None] = "google.cloud.bigquery"
    example: ClassVar[str] = "warehouse: {type: bigquery, project: my-project, location: EU}"

    def check(self, where: str) -> None:
        _check_state_schema(where, self.state_schema)
        keys = ("credentials_file", "gcp_credentials", "credentials")
        given = [key for key in keys if getattr(self, key) is not None]
        if len(given) > 1:
            raise WarehouseSettingsError(
                f"{where}: set at most one of 'credentials_file', 'gcp_credentials' and "
                f"'credentials' (got {', '.join(given)}). Fix: keep one (none: Application Default "
                "Credentials)."
            )
        api = _text(self.api_endpoint)
        if api is not None and not re.fullmatch(r"https?://[^/\s]+/?", api):
            raise WarehouseSettingsError(
                f"{where}: key 'api_endpoint' is {api!r}, not a URL of a host. Fix: e.g. "
                "'api_endpoint: https://bigquery-myendpoint.p.googleapis.com' or "
                "'http://127.0.0.1:9050' for a local emulator."
            )
        storage = _text(self.storage_api_endpoint)
        if storage is not None and not re.fullmatch(
            r"(\[[0-9A-Fa-f:]+\]|[^:/\s\[\]]+):\d{1,5}", storage
        ):
            raise WarehouseSettingsError(
                f"{where}: key 'storage_api_endpoint' is {storage!r}, not host:port. Fix: e.g. "
                "'storage_api_endpoint: bigquerystorage-myendpoint.p.googleapis.com:443' or "
                "'127.0.0.1:9060' for a local emulator."
            )
        if api is not None and api.startswith("http://") and not is_loopback(endpoint_host(api)):
            raise WarehouseSettingsError(
                f"{where}: key 'api_endpoint' is plain http (no TLS), allowed only on a loopback "
                "host (a local emulator). Fix: use an https:// URL."
            )
        if self.credentials == "anonymous":
            hosts = [endpoint_host(e) for e in (api, storage) if e is not None]
            if api is None or not all(is_loopback(h) for h in hosts):
                raise WarehouseSettingsError(
                    f"{where}: key 'credentials: anonymous' is allowed only with a loopback "
                    "'api_endpoint' (and 'storage_api_endpoint'), i.e. a local emulator. Fix: set "
                    "'api_endpoint: http://127.0.0.1:PORT', or remove 'credentials'."
                )


class RedshiftSettings(WarehouseSettings):
    type: Literal["redshift"] = "redshift"
    host: Text
    port: int = 5439
    database: Text
    user: Text
    password: Text
    # false: no TLS, allowed only on a loopback host (a local stand-in)
    ssl: bool = True
    # Set: syncs keep their state in this schema and diff there (warehouse_state).
    state_schema: str | None = None
    secrets: ClassVar[tuple[str, ...]] = ("password",)
    extra: ClassVar[str | None] = "redshift"
    driver_module: ClassVar[str | None] = "redshift_connector"
    example: ClassVar[str] = (
        "warehouse: {type: redshift, host: ex.abc.eu-west-1.redshift.amazonaws.com, "
        "database: dev, user: rudder_sync, password: {env: REDSHIFT_PASSWORD}}"
    )

    def check(self, where: str) -> None:
        _check_state_schema(where, self.state_schema)
        if not self.ssl and not is_loopback(_text(self.host)):
            raise WarehouseSettingsError(
                f"{where}: key 'ssl' is false (no TLS), allowed only for a loopback 'host' (a "
                "local stand-in). Fix: remove 'ssl' (Redshift requires TLS)."
            )


class DatabricksSettings(WarehouseSettings):
    type: Literal["databricks"] = "databricks"
    server_hostname: Text
    http_path: Text
    access_token: Text
    catalog: Text | None = None
    schema_: Text | None = Field(default=None, alias="schema")
    # Set: syncs keep their state in this schema of `catalog` and diff there (warehouse_state).
    state_schema: str | None = None
    secrets: ClassVar[tuple[str, ...]] = ("access_token",)
    extra: ClassVar[str | None] = "databricks"
    driver_module: ClassVar[str | None] = "databricks.sql"
    example: ClassVar[str] = (
        "warehouse: {type: databricks, server_hostname: dbc-1.cloud.databricks.com, "
        "http_path: /sql/1.0/warehouses/abc, access_token: {env: DATABRICKS_TOKEN}}"
    )

    def check(self, where: str) -> None:
        _check_state_schema(where, self.state_schema)


SETTINGS: dict[str, type[WarehouseSettings]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        DuckDBSettings,
        PostgresSettings,
        SnowflakeSettings,
        BigQuerySettings,
        RedshiftSettings,
        DatabricksSettings,
    )
}


def parse_warehouse(raw: Any, where: str, base: Path) -> WarehouseSettings:
    """Validate the `warehouse:` value; relative DuckDB paths resolve against `base`."""
    where = f"{where}: warehouse"
    if isinstance(raw, str):
        raw = {"type": "duckdb", "path": raw}
    if not isinstance(raw, Mapping):
        raise WarehouseSettingsError(
            f"{where}: expected a DuckDB file path or a mapping with 'type'. Fix: e.g. "
            f"'{PostgresSettings.example}'."
        )
    kind = raw.get("type")
    if kind not in SETTINGS:
        close = difflib.get_close_matches(str(kind), list(SETTINGS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise WarehouseSettingsError(
            f"{where}: key 'type' is {kind!r}{hint}. Fix: use one of {', '.join(SETTINGS)}."
        )
    cls = SETTINGS[kind]
    if "state_schema" in raw and "state_schema" not in cls.model_fields:
        raise WarehouseSettingsError(
            f"{where}: key 'state_schema' (the diff inside the warehouse) runs on PostgreSQL, "
            f"Snowflake, BigQuery, Redshift and Databricks, not on {kind}: a DuckDB warehouse is "
            "local already. Fix: remove 'state_schema' to keep the state in local DuckDB files."
        )
    allowed = {info.alias or name for name, info in cls.model_fields.items()}
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = (
                f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(sorted(allowed))}"
            )
            raise WarehouseSettingsError(
                f"{where}: unknown key '{key}' for type {kind}. Fix: remove it ({hint})."
            )
    values = {key: _value(where, cls, key, value) for key, value in raw.items()}
    _check_driver(where, cls)
    try:
        settings = cls(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"] if not str(p).startswith(("str", "EnvRef")))
        raise WarehouseSettingsError(
            f"{where}: key '{key}': {error['msg']}. Fix: e.g. '{cls.example}'."
        ) from None
    if isinstance(settings, DuckDBSettings) and not settings.path.is_absolute():
        settings = settings.model_copy(update={"path": base / settings.path.expanduser()})
    settings.check(where)
    return settings


def _value(where: str, cls: type[WarehouseSettings], key: str, value: Any) -> Any:
    """`{env: NAME}` checked for being set; secrets refused when written literally."""
    return setting_value(where, key, value, secret=key in cls.secrets)


def setting_value(
    where: str,
    key: str,
    value: Any,
    *,
    secret: bool = False,
    must_be_set: bool = True,
    env_hint: str | None = None,
) -> Any:
    """One YAML value that may be written `{env: NAME}`: an `EnvRef`, or the literal value.

    `must_be_set`: the variable must be set when the definitions load. `secret`: a literal
    value is refused (it would sit in the YAML, and in Dagster's storage and UI).
    `env_hint` is the variable name the fixes suggest (default: the key in capitals).
    """
    hint = env_hint or key.upper()
    if isinstance(value, Mapping):
        if set(value) != {"env"} or not isinstance(value["env"], str) or not value["env"].strip():
            raise WarehouseSettingsError(
                f"{where}: key '{key}' must be a value or {{env: NAME}}. Fix: e.g. "
                f"'{key}: {{env: {hint}}}'."
            )
        ref = EnvRef(env=value["env"].strip())
        if must_be_set and not ref.value().strip():
            raise WarehouseSettingsError(
                f"{where}: key '{key}' reads environment variable {ref.env}, which is not set. "
                f"Fix: export {ref.env}=... before loading the definitions."
            )
        return ref
    if secret and value is not None:
        raise WarehouseSettingsError(
            f"{where}: key '{key}' is a secret written in the YAML. Fix: write "
            f"'{key}: {{env: {hint}}}' and export {hint} instead."
        )
    return value


def _text(value: Text | None) -> str | None:
    """A setting's text as the definitions load it (an `{env: NAME}` read now)."""
    if isinstance(value, EnvRef):
        return value.value().strip()
    return value


def endpoint_host(endpoint: str) -> str:
    """The host of `https://host:port/...` or `host:port` (brackets of IPv6 removed)."""
    rest = endpoint.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: this machine only, where an emulator may run without TLS
    or credentials."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_driver(where: str, cls: type[WarehouseSettings]) -> None:
    """A missing extra fails at load time with the exact pip command."""
    module = cls.driver_module
    if module is None:
        return
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise WarehouseSettingsError(
            f"{where}: type {cls.model_fields['type'].default} needs its driver ({module}), "
            f"which is not installed. Fix: pip install 'rudder_sync[{cls.extra}]'."
        )
