"""The sync schema: the one place that knows the YAML keys, and the messages for getting them wrong.

Every error names the sync, the key and the fix, and is raised at load time, before Dagster
builds a single asset.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from ._compat import is_valid_cron_string
from .alerts.settings import AlertsConfig, parse_alerts
from .dbt import (
    DbtConfig,
    DbtModel,
    DbtUpstream,
    parse_dbt,
    require_dagster_dbt,
    resolve_model,
    uses_dbt,
)
from .errors import ConfigError
from .rudderstack import setting_field
from .warehouses.settings import (
    EnvRef,
    WarehouseSettings,
    WarehouseSettingsError,
    parse_warehouse,
    setting_value,
)
from .warehouses.sql import ModelSqlError, check_query

CONFIG_ENV_VAR = "RUDDER_SYNC_CONFIG"
CHANGE_TYPES: tuple[str, ...] = ("added", "changed", "removed")
SYNC_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

ChangeType = Literal["added", "changed", "removed"]
# `redact:` (redact.py masks): every value from a column, and where a masked value sits besides
# the diff's field columns (`diff.pending_frame` names those: mapping keys, "event", "name",
# "groupId", "previousId", "context.<key>").
REDACT_ALL = "all"
REDACT_PRIMARY_KEY = "__primary_key"
REDACT_USER_ID = "userId"
REDACT_ANONYMOUS_ID = "anonymousId"
CallType = Literal["track", "identify", "page", "screen", "group", "alias"]
CALL_TYPES: tuple[str, ...] = ("track", "identify", "page", "screen", "group", "alias")
# Which change types send a call when `send_on` is not given (track uses `events` instead).
DEFAULT_SEND_ON: dict[str, tuple[str, ...]] = {
    "identify": ("added", "changed"),
    "group": ("added", "changed"),
    "alias": ("added", "changed"),
    "page": ("added",),
    "screen": ("added",),
}
# The column key each call type needs, and the payload field it fills.
CALL_COLUMN_KEYS: dict[str, tuple[str, str]] = {
    "page": ("name_column", "name"),
    "screen": ("name_column", "name"),
    "group": ("group_id", "groupId"),
    "alias": ("previous_id", "previousId"),
}
RESERVED_CONTEXT = ("library", "traits")  # rudder_sync writes these context fields itself
Cadence = Literal["hourly", "daily", "weekly", "monthly"]
SyncMode = Literal["diff", "append"]
APPEND_KEYS = ("cursor", "lookback", "start_at")  # mode: append only
PARTITION_PARAMETERS = ("partition_start", "partition_end")
# The default destination, used by syncs without `destination:`.
DATA_PLANE_URL_ENV_VAR = "RUDDERSTACK_DATA_PLANE_URL"
WRITE_KEY_ENV_VAR = "RUDDERSTACK_WRITE_KEY"
# Resource keys of a project's definitions; a named destination's is `rudderstack_<name>`.
WAREHOUSE_KEY = "warehouse"
RUDDERSTACK_KEY = "rudderstack"
IO_MANAGER_KEY = "rudder_sync_io_manager"


class PartitionsConfig(BaseModel):
    """Time windows for historical backfills; the model reads $partition_start/$partition_end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: date | datetime
    cadence: Cadence
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like UTC") from None
        return value

    @property
    def start_text(self) -> str:
        """The start as Dagster's partition definitions take it."""
        if isinstance(self.start, datetime):
            return self.start.strftime("%Y-%m-%d-%H:%M")
        return self.start.isoformat()


class TriggerConfig(BaseModel):
    """Start the sync when a cheap query on the warehouse answers something new."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sql: str
    every_seconds: int = Field(default=60, ge=5)


class GuardConfig(BaseModel):
    """Thresholds above which a diff is held back as suspicious; null turns one off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_removed_fraction: float | None = Field(default=0.2, ge=0, le=1)
    max_changed_fraction: float | None = Field(default=0.5, ge=0, le=1)
    max_events: int | None = Field(default=100_000, ge=0)
    min_rows: int = Field(default=100, ge=0)  # fractions apply as set from this many rows
    allow_empty_model: bool = False  # true: a model may return no rows without tripping


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _retention(value: Any) -> Any:
    """A delivery log retention: a duration such as 30d or 12h; null keeps the log forever."""
    if value is None or isinstance(value, timedelta):
        return value
    match = DURATION.match(value) if isinstance(value, str) else None
    if match is None or float(match[1]) <= 0:
        raise ValueError("must be a duration such as 30d or 12h, or null to keep the log forever")
    return timedelta(seconds=float(match[1]) * DURATION_UNITS[match[2]])


def _lookback(value: Any) -> Any:
    """An append sync's lookback: a duration (2h, 30m) for a time cursor, a whole number for a
    numeric one."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 2h or 30m, or a whole number")
    if isinstance(value, int | timedelta):
        if (value if isinstance(value, int) else value.total_seconds()) < 0:
            raise ValueError("must not be negative")
        return value
    match = DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            "must be a duration such as 2h or 30m (a time cursor), or a whole number (a "
            "numeric one)"
        )
    return timedelta(seconds=float(match[1]) * DURATION_UNITS[match[2]])


# mode: append: how far before the stored cursor each run reads again, for late rows.
Lookback = Annotated[timedelta | int, BeforeValidator(_lookback)]


# How long the delivery log keeps a row (state.py `prune_delivery_log`); None: forever.
Retention = Annotated[timedelta | None, BeforeValidator(_retention)]
DEFAULT_DELIVERY_LOG_RETENTION = timedelta(days=30)
_RETENTION_FIX = (
    "a duration such as 30d or 12h (the delivery log's rows older than that are pruned), "
    "or null to keep it forever"
)


class FreshnessConfig(BaseModel):
    """How stale the sync's events may get: Dagster's freshness policy on `<sync>/events`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_lag: timedelta

    @field_validator("max_lag", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        match = DURATION.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError("must be a duration such as 90s, 30m, 2h or 1d")
        seconds = float(match[1]) * DURATION_UNITS[match[2]]
        if seconds < 60:
            raise ValueError("must be at least 1m (Dagster's freshness policies are)")
        return timedelta(seconds=seconds)


class AnomalyConfig(BaseModel):
    """Checks of each run against the sync's own history (anomaly.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(default=20, ge=3)  # runs of history the median is taken over
    max_deviation: float = Field(default=0.5, gt=0)  # the band: median * (1 +- max_deviation)
    quiet_runs: int = Field(default=3, ge=1)  # runs without changes that make a feed "stopped"
    min_history: int = Field(default=5, ge=1)  # runs of history before the checks judge


class SyncConfig(BaseModel):
    """One sync: a model, its key, and how its rows become RudderStack events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    primary_key: str
    type: CallType
    user_id: str | None = None
    anonymous_id: str | None = None
    name_column: str | None = None
    group_id: str | None = None
    previous_id: str | None = None
    mapping: dict[str, str] = {}
    static: dict[str, Any] = {}
    context: dict[str, str] = {}
    integrations: dict[str, Any] | None = None
    exclude_nulls: bool = False
    events: dict[ChangeType, str | dict[str, Any]] | None = None
    send_on: list[ChangeType] | None = None
    send_initial_results: bool = False
    timestamp: str | None = None
    message_id: str | None = None
    partitions: PartitionsConfig | None = None
    schedule: str | None = None
    trigger: TriggerConfig | None = None
    upstream: list[str] = []
    # dbt models the model reads: wait for their blocking dbt tests to pass (asset checks).
    require_checks: bool = False
    guard: GuardConfig = GuardConfig()
    # A change that failed this many times (gateway rejections) is quarantined; None: never.
    max_attempts: int | None = Field(default=5, ge=1)
    # Partitioned syncs: mixed into every deterministic messageId, to re-send windows on purpose.
    message_id_salt: str | None = None
    # A name under the project's `destinations`; None: the default (RUDDERSTACK_* env vars).
    destination: str | None = None
    # Names of channels under the project's `alerts.channels`; None: all of them.
    alerts: list[str] | None = None
    freshness: FreshnessConfig | None = None
    anomaly: AnomalyConfig | None = None
    # Build and validate events without sending (also set by the destination's or the project's
    # `dry_run: true`); without it, a destination without URL fails the run (dry_runs.py).
    dry_run: bool = False
    # Row values masked wherever they are shown outside RudderStack (redact.py): event field
    # paths or model columns, or "all"; the project's `redact:` is merged in by `parse_config`.
    redact: list[str] | Literal["all"] | None = None
    # False: the IO manager stores no rows of the diff and events frames (counts only); None:
    # the project's `store_frames` (default true).
    store_frames: bool | None = None
    # Delivery log rows older than this are pruned after each events step (state.py); None:
    # kept forever. Unset: the project's `delivery_log_retention` (merged by `parse_config`).
    delivery_log_retention: Retention = DEFAULT_DELIVERY_LOG_RETENTION
    # diff: every run diffs the whole model with what was delivered; append: each run reads only
    # the rows past the stored `cursor` (minus `lookback`) and sends those not delivered yet.
    mode: SyncMode = "diff"
    cursor: str | None = None  # append: the monotonic-ish column (time or number)
    lookback: Lookback = 0  # append: re-read this much before the cursor, for late rows
    start_at: datetime | date | int | None = None  # append: the first run sends from here

    # Not YAML keys: bound by `parse_config` (the destination) and by the definitions (resource
    # keys that differ from the plain ones when several projects share a code location).
    _destination_config: DestinationConfig | None = PrivateAttr(default=None)
    _resource_keys: dict[str, str] = PrivateAttr(default_factory=dict)
    # Not a YAML key: rows the data rejects on purpose (the demo's row without IDs), key -> why.
    _on_purpose: dict[str, str] = PrivateAttr(default_factory=dict)
    # dbt: the models the SQL reads (`parse_sync`, from the manifest), then their asset keys
    # and blocking checks (the definitions, with dagster-dbt's translator).
    _dbt_models: tuple[DbtModel, ...] = PrivateAttr(default=())
    _dbt_upstream: tuple[DbtUpstream, ...] | None = PrivateAttr(default=None)
    # The project's `alerts` section (bound by `parse_config`); None: no alerts.
    _alerts_config: AlertsConfig | None = PrivateAttr(default=None)
    # The URL variable that was unset when the definitions loaded (bound by them): a run fails
    # naming it unless it is a dry run. None: a URL, a dry run, the demo, or a resource passed in.
    _url_required: str | None = PrivateAttr(default=None)

    @property
    def url_required(self) -> str | None:
        """The unset URL variable that fails this sync's runs (see `_url_required`)."""
        return self._url_required

    def requiring_url(self, variable: str | None) -> SyncConfig:
        """A copy whose runs fail naming `variable` unless they are dry runs."""
        copy = self.model_copy()
        copy._url_required = variable
        return copy

    @property
    def alerts_config(self) -> AlertsConfig | None:
        """The project's alerts, when the sync has any channel to send to."""
        return self._alerts_config

    def with_alerts(self, alerts: AlertsConfig | None) -> SyncConfig:
        """A copy bound to the project's `alerts` section."""
        copy = self.model_copy()
        copy._alerts_config = alerts
        return copy

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_cron_string(value):
            raise ValueError(
                f"{value!r} is not a cron expression; use five fields, e.g. '*/15 * * * *'"
            )
        return value

    @field_validator("upstream")
    @classmethod
    def _asset_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*", key):
                raise ValueError(
                    f"{key!r} is not an asset key; write it as path parts joined by '/', "
                    "e.g. analytics/users"
                )
        return value

    @field_validator("events")
    @classmethod
    def _event_names(
        cls, value: dict[str, str | dict[str, Any]] | None
    ) -> dict[str, str | dict[str, Any]] | None:
        for change, name in (value or {}).items():
            if isinstance(name, Mapping) and (
                set(name) != {"column"} or not isinstance(name["column"], str)
            ):
                raise ValueError(
                    f"events.{change} must be an event name or {{column: <column>}}, "
                    f"got {dict(name)!r}"
                )
        return value

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; write the SELECT query that returns the rows to sync")
        return value

    @property
    def rudderstack_key(self) -> str:
        """The resource key of the RudderstackResource that the sync's assets deliver with."""
        default = (
            RUDDERSTACK_KEY if self.destination is None else f"{RUDDERSTACK_KEY}_{self.destination}"
        )
        return self._resource_keys.get(RUDDERSTACK_KEY, default)

    @property
    def warehouse_key(self) -> str:
        """The resource key of the warehouse the sync's model (and trigger) read."""
        return self._resource_keys.get(WAREHOUSE_KEY, WAREHOUSE_KEY)

    @property
    def io_manager_key(self) -> str:
        """The IO manager key of the sync's diff and events outputs."""
        return self._resource_keys.get(IO_MANAGER_KEY, IO_MANAGER_KEY)

    @property
    def dbt_models(self) -> tuple[DbtModel, ...]:
        """The dbt models (seeds, snapshots) the model reads, from the manifest."""
        return self._dbt_models

    @property
    def dbt_upstream(self) -> tuple[DbtUpstream, ...] | None:
        """Their asset keys and blocking checks; None until the definitions bind them."""
        return self._dbt_upstream

    def with_dbt(
        self,
        models: tuple[DbtModel, ...] | None = None,
        upstream: tuple[DbtUpstream, ...] | None = None,
    ) -> SyncConfig:
        """A copy with its dbt models and/or their asset keys and checks."""
        copy = self.model_copy()
        copy._dbt_models = self._dbt_models if models is None else models
        copy._dbt_upstream = self._dbt_upstream if upstream is None else upstream
        return copy

    @property
    def destination_config(self) -> DestinationConfig:
        """Where the sync delivers: its named destination, or the default one."""
        return self._destination_config or DEFAULT_DESTINATION

    def bound(
        self,
        destination: DestinationConfig | None = None,
        resource_keys: Mapping[str, str] | None = None,
    ) -> SyncConfig:
        """A copy bound to its destination and/or to resource keys (WAREHOUSE_KEY,
        RUDDERSTACK_KEY, IO_MANAGER_KEY -> the key to use instead)."""
        copy = self.model_copy()
        copy._destination_config = destination or self._destination_config
        copy._resource_keys = {**self._resource_keys, **(resource_keys or {})}
        return copy

    @property
    def rejected_on_purpose(self) -> Mapping[str, str]:
        """Rows rejected on purpose, by primary key: why, said beside their warning."""
        return self._on_purpose

    def with_rejected_on_purpose(self, notes: Mapping[str, str]) -> SyncConfig:
        """A copy that says why these rows (by primary key) are rejected on purpose."""
        copy = self.model_copy()
        copy._on_purpose = dict(notes)
        return copy

    @property
    def id_columns(self) -> list[str]:
        """Columns that identify the user, in payload order."""
        return [c for c in (self.user_id, self.anonymous_id) if c]

    @property
    def call_column(self) -> str | None:
        """The column of the page/screen name, the groupId or the previousId (by type)."""
        key = CALL_COLUMN_KEYS.get(self.type)
        return getattr(self, key[0]) if key else None

    @property
    def event_columns(self) -> dict[str, str]:
        """Track change types whose event name comes from a column: change type -> column."""
        return {
            change: value["column"]
            for change, value in (self.events or {}).items()
            if isinstance(value, Mapping)
        }

    @property
    def has_extras(self) -> bool:
        """Whether events carry per-row fields beyond IDs and properties/traits."""
        return bool(self.call_column or self.event_columns or self.context)

    @property
    def carried_columns(self) -> list[str]:
        """Columns whose change is a change of the event: IDs and mapped fields, no duplicates.

        Existing syncs keep their order (IDs, then mapping): it feeds the committed row hash.
        """
        seen: dict[str, None] = {}
        extra = [self.call_column, *self.event_columns.values(), *self.context.values()]
        for column in [*self.id_columns, *self.mapping.values(), *extra]:
            if column:
                seen.setdefault(column, None)
        return list(seen)

    @property
    def required_columns(self) -> list[str]:
        """Every column the model must return."""
        seen: dict[str, None] = {self.primary_key: None}
        for column in [*self.carried_columns, self.timestamp, self.message_id]:
            if column:
                seen.setdefault(column, None)
        return list(seen)

    def event_name(self, change_type: str) -> str | None:
        """The fixed track event name of a change type; None when unsent or named by a column."""
        if self.type != "track" or not self.events:
            return None
        name = self.events.get(change_type)  # type: ignore[call-overload]
        return name if isinstance(name, str) else None

    @property
    def effective_send_on(self) -> tuple[str, ...]:
        """Change types that send a call: `events` for track, else `send_on` or its default."""
        if self.type == "track":
            return tuple(c for c in CHANGE_TYPES if c in (self.events or {}))
        if self.send_on is not None:
            return tuple(c for c in CHANGE_TYPES if c in self.send_on)
        return DEFAULT_SEND_ON[self.type]

    def sends(self, change_type: str) -> bool:
        """Whether a change of this type becomes an event at all."""
        return change_type in self.effective_send_on


class DestinationConfig(BaseModel):
    """A RudderStack source to deliver to: a data plane URL and a write key.

    The write key only ever comes from the environment. A URL from an environment variable that is
    unset or empty makes the destination a dry run (for its syncs only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None  # None: the default destination
    data_plane_url: str | EnvRef
    write_key: EnvRef
    dry_run: bool = False  # its syncs build and validate events without sending them

    @property
    def resource_key(self) -> str:
        """The plain resource key of this destination's RudderstackResource."""
        return RUDDERSTACK_KEY if self.name is None else f"{RUDDERSTACK_KEY}_{self.name}"

    @property
    def url_env(self) -> str | None:
        """The environment variable holding the URL; None when the YAML has the URL itself."""
        return self.data_plane_url.env if isinstance(self.data_plane_url, EnvRef) else None


DEFAULT_DESTINATION = DestinationConfig(
    name=None,
    data_plane_url=EnvRef(env=DATA_PLANE_URL_ENV_VAR),
    write_key=EnvRef(env=WRITE_KEY_ENV_VAR),
)
DESTINATION_KEYS = ("data_plane_url", "write_key")


class DeliveryConfig(BaseModel):
    """How events are sent: RudderstackResource settings of the same names, with its defaults and
    bounds (rudderstack.py); the secrets stay in env vars."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_in_flight: int = setting_field("max_in_flight")
    max_request_kb: int = setting_field("max_request_kb")
    max_event_kb: int = setting_field("max_event_kb")  # larger events are rejected, not sent
    request_timeout_seconds: float = setting_field("request_timeout_seconds")
    retry_max_seconds: float = setting_field("retry_max_seconds")
    allow_insecure_http: bool = setting_field("allow_insecure_http")
    # A plan's rate limit, e.g. 16 for 1,000 events/minute; None: no pacing.
    max_events_per_second: float | None = setting_field("max_events_per_second")


class ProjectConfig(BaseModel):
    """The whole YAML file: where the warehouse and state live, delivery settings, the syncs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warehouse: WarehouseSettings
    state: Path
    syncs: dict[str, SyncConfig]
    delivery: DeliveryConfig = DeliveryConfig()
    destinations: dict[str, DestinationConfig] = {}
    alerts: AlertsConfig | None = None
    dbt: DbtConfig | None = None
    dry_run: bool = False  # every sync builds and validates events without sending them
    # Masked values and stored frames for every sync (merged into each sync's own keys).
    redact: list[str] | Literal["all"] | None = None
    store_frames: bool = True
    # The syncs' default `delivery_log_retention` (merged into each sync by `parse_config`).
    delivery_log_retention: Retention = DEFAULT_DELIVERY_LOG_RETENTION
    source: Path | None = None

    # Not a YAML key: the packaged demo (bound by `definitions.load_project`), whose syncs are
    # dry runs without a data plane URL although its YAML does not say `dry_run: true`.
    _implicit_dry_run: bool = PrivateAttr(default=False)


def default_config_path() -> Path:
    """The packaged demo config, used when RUDDER_SYNC_CONFIG is unset."""
    return Path(__file__).parent / "demo" / "rudder_sync.yaml"


def config_path_from_env() -> Path:
    value = os.environ.get(CONFIG_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else default_config_path()


def load_config(path: str | os.PathLike[str] | None = None) -> ProjectConfig:
    """Read and validate a sync YAML; relative paths resolve against the YAML file's folder."""
    config_path = Path(path) if path is not None else config_path_from_env()
    raw = read_config(config_path)
    return parse_config(raw, base_dir=config_path.parent.resolve(), source=config_path)


def read_config(config_path: Path) -> Any:
    """The YAML document of a sync config, not yet validated; errors in one line, unchained."""
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{config_path}: cannot read the sync config ({exc.strerror or exc}). "
            f"Fix: point {CONFIG_ENV_VAR} at an existing YAML file."
        ) from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(
            f"{config_path}: not valid YAML: {detail}. Fix: correct the YAML at that line "
            "(indentation, a missing ':', an unclosed quote or bracket)."
        ) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML silently keeps the last of two equal keys; two syncs of one name are a mistake."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: duplicate key '{key}' (two syncs or "
                    "two keys of one name). Fix: give every sync and key a unique name."
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_config(
    raw: Any, base_dir: Path | None = None, source: Path | None = None
) -> ProjectConfig:
    """Validate an already-parsed YAML document."""
    where = str(source) if source else "sync config"
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping with keys 'warehouse', 'state' and 'syncs'. "
            "Fix: see the YAML reference, docs/configuration.md."
        )
    _check_keys(
        raw,
        {
            "warehouse",
            "state",
            "syncs",
            "delivery",
            "destinations",
            "dbt",
            "alerts",
            "dry_run",
            "redact",
            "store_frames",
            "delivery_log_retention",
        },
        f"{where}: top level",
        required=("syncs",),
    )
    base = base_dir or Path.cwd()
    try:
        warehouse = parse_warehouse(raw.get("warehouse", "warehouse.duckdb"), where, base)
    except WarehouseSettingsError as exc:
        raise ConfigError(str(exc)) from None
    state = _path_value(raw.get("state", ".rudder_sync"), "state", where, base)

    destinations = parse_destinations(raw.get("destinations"), where)
    alerts = parse_alerts(raw.get("alerts"), where)
    dry_run = raw.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ConfigError(
            f"{where}: key 'dry_run' must be true or false (got {dry_run!r}). Fix: 'dry_run: "
            "true' makes every sync a dry run; remove it to deliver."
        )
    dbt = parse_dbt(raw.get("dbt"), where, base)
    redact = _redact_value(where, raw.get("redact"))
    store_frames = raw.get("store_frames", True)
    if not isinstance(store_frames, bool):
        raise ConfigError(
            f"{where}: key 'store_frames' must be true or false (got {store_frames!r}). Fix: "
            "'store_frames: false' keeps only counts of the diff and events frames."
        )
    retention = _project_retention(where, raw)
    syncs_raw = raw["syncs"]
    if not isinstance(syncs_raw, Mapping) or not syncs_raw:
        raise ConfigError(
            f"{where}: key 'syncs' must map sync names to sync definitions. "
            "Fix: add at least one sync under 'syncs:'."
        )
    syncs: dict[str, SyncConfig] = {}
    seen_lower: dict[str, str] = {}
    for name, body in syncs_raw.items():
        sync = parse_sync(str(name), body, dialect=warehouse.type, dbt=dbt, warehouse=warehouse)
        key = sync.name.lower()
        if key in seen_lower:
            raise ConfigError(
                f"sync '{name}': duplicate sync name (clashes with '{seen_lower[key]}'). "
                "Fix: give every sync a unique name."
            )
        seen_lower[key] = sync.name
        sync = _bind_alerts(_bind_destination(sync, destinations), alerts)
        if dry_run or sync.destination_config.dry_run:
            sync = sync.model_copy(update={"dry_run": True})
        if "delivery_log_retention" not in body:
            sync = sync.model_copy(update={"delivery_log_retention": retention})
        syncs[sync.name] = sync
    syncs = _merge_redaction(where, redact, store_frames, syncs)
    _check_state_schema_names(warehouse, syncs)
    delivery_raw = raw.get("delivery") or {}
    if not isinstance(delivery_raw, Mapping):
        raise ConfigError(
            f"{where}: key 'delivery' must be a mapping. Fix: see docs/configuration.md."
        )
    _check_keys(delivery_raw, set(DeliveryConfig.model_fields), f"{where}: delivery", ())
    try:
        delivery = DeliveryConfig(**delivery_raw)
    except (ValidationError, TypeError) as exc:
        detail = (
            _describe_validation_error(f"{where}: delivery", exc)
            if isinstance(exc, ValidationError)
            else str(exc)
        )
        raise ConfigError(detail) from None
    return ProjectConfig(
        warehouse=warehouse,
        state=state,
        syncs=syncs,
        delivery=delivery,
        destinations=destinations,
        alerts=alerts,
        dbt=dbt,
        dry_run=dry_run,
        redact=redact,
        store_frames=store_frames,
        delivery_log_retention=retention,
        source=source,
    )


def _project_retention(where: str, raw: Mapping[str, Any]) -> timedelta | None:
    """The project's `delivery_log_retention` (default 30 days), the syncs' default."""
    value = raw.get("delivery_log_retention", DEFAULT_DELIVERY_LOG_RETENTION)
    try:
        return TypeAdapter(Retention).validate_python(value)
    except ValidationError:
        raise ConfigError(
            f"{where}: key 'delivery_log_retention' must be {_RETENTION_FIX} (got {value!r}). "
            "Fix: e.g. 'delivery_log_retention: 30d'."
        ) from None


def parse_destinations(raw: Any, where: str = "sync config") -> dict[str, DestinationConfig]:
    """The `destinations:` section: name -> {data_plane_url, write_key}, secrets from the env.

    The variables are not read here: a URL variable that is unset makes a dry run, and the
    definitions check the URL and the key when they load (`definitions.rudderstack_for`).
    """
    if raw is None:
        return {}
    example = "'eu: {data_plane_url: {env: RS_EU_URL}, write_key: {env: RS_EU_WRITE_KEY}}'"
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: key 'destinations' must map destination names to their data plane URL "
            f"and write key. Fix: e.g. {example}."
        )
    destinations: dict[str, DestinationConfig] = {}
    for name, body in raw.items():
        prefix = f"destination '{name}'"
        if not isinstance(name, str) or not SYNC_NAME_PATTERN.match(name):
            raise ConfigError(
                f"{prefix}: bad destination name. It is part of the resource key "
                f"'{RUDDERSTACK_KEY}_<name>', so it must be snake_case: a lowercase letter, then "
                "lowercase letters, digits or underscores (at most 63). Fix: rename it, e.g. "
                f"'{_suggest_name(str(name))}'."
            )
        if not isinstance(body, Mapping):
            raise ConfigError(f"{prefix}: expected a mapping of keys. Fix: e.g. {example}.")
        _check_keys(body, {*DESTINATION_KEYS, "dry_run"}, prefix, required=DESTINATION_KEYS)
        if not isinstance(body.get("dry_run", False), bool):
            raise ConfigError(
                f"{prefix}: key 'dry_run' must be true or false (got {body['dry_run']!r}). Fix: "
                "'dry_run: true' makes the destination's syncs dry runs; remove it to deliver."
            )
        env = f"RS_{name.upper()}"
        try:
            url = setting_value(
                prefix,
                "data_plane_url",
                body["data_plane_url"],
                must_be_set=False,
                env_hint=f"{env}_URL",
            )
            key = setting_value(
                prefix,
                "write_key",
                body["write_key"],
                secret=True,
                must_be_set=False,
                env_hint=f"{env}_WRITE_KEY",
            )
        except WarehouseSettingsError as exc:
            raise ConfigError(str(exc)) from None
        if isinstance(url, str) and not url.strip():
            raise ConfigError(
                f"{prefix}: key 'data_plane_url' is blank. Fix: write the data plane's URL, or "
                f"'data_plane_url: {{env: {env}_URL}}' (unset or empty: a dry run)."
            )
        if not isinstance(url, (str, EnvRef)):
            raise ConfigError(
                f"{prefix}: key 'data_plane_url' must be a URL or {{env: NAME}} (got {url!r}). "
                f"Fix: e.g. 'data_plane_url: {{env: {env}_URL}}'."
            )
        if not isinstance(key, EnvRef):
            raise ConfigError(
                f"{prefix}: key 'write_key' must be {{env: NAME}} (got a {type(key).__name__}). "
                f"Fix: write 'write_key: {{env: {env}_WRITE_KEY}}' and export {env}_WRITE_KEY."
            )
        destinations[name] = DestinationConfig(
            name=name, data_plane_url=url, write_key=key, dry_run=body.get("dry_run", False)
        )
    return destinations


def _bind_destination(
    sync: SyncConfig, destinations: Mapping[str, DestinationConfig]
) -> SyncConfig:
    """The sync bound to its named destination; an unknown name fails with a did-you-mean."""
    if sync.destination is None:
        return sync
    destination = destinations.get(sync.destination)
    if destination is not None:
        return sync.bound(destination=destination)
    prefix = f"sync '{sync.name}'"
    default = f"remove the key to send to {DATA_PLANE_URL_ENV_VAR}"
    if not destinations:
        raise ConfigError(
            f"{prefix}: key 'destination' is '{sync.destination}', but the config has no "
            f"'destinations' section. Fix: declare it, e.g. 'destinations: {{{sync.destination}: "
            "{data_plane_url: {env: ...}, write_key: {env: ...}}}', or " + default + "."
        )
    close = difflib.get_close_matches(sync.destination, sorted(destinations), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(
        f"{prefix}: key 'destination' is '{sync.destination}', which is not under "
        f"'destinations'{hint}. Fix: use one of {', '.join(sorted(destinations))}, or "
        f"{default}."
    )


def _bind_alerts(sync: SyncConfig, alerts: AlertsConfig | None) -> SyncConfig:
    """The sync bound to the project's alerts; its `alerts:` must name declared channels."""
    prefix = f"sync '{sync.name}'"
    if sync.alerts is None:
        return sync.with_alerts(alerts)
    if alerts is None:
        raise ConfigError(
            f"{prefix}: key 'alerts' names channels, but the config has no 'alerts' section. "
            "Fix: declare the channels under a top-level 'alerts: {channels: ...}', or remove "
            "the key."
        )
    for name in sync.alerts:
        if name not in alerts.channels:
            close = difflib.get_close_matches(str(name), sorted(alerts.channels), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{prefix}: key 'alerts' names channel '{name}', which is not under "
                f"'alerts.channels'{hint}. Fix: use one of {', '.join(sorted(alerts.channels))}."
            )
    return sync.with_alerts(alerts if sync.alerts else None)


def parse_sync(
    name: str,
    body: Any,
    dialect: str = "duckdb",
    dbt: DbtConfig | None = None,
    warehouse: WarehouseSettings | None = None,
) -> SyncConfig:
    """Validate one sync definition; every error names the sync, the key and the fix.

    A model on dbt models (`{dbt: name}`, `{{ ref('name') }}`) is resolved from `dbt`'s
    manifest to relations of `warehouse`."""
    prefix = f"sync '{name}'"
    if not SYNC_NAME_PATTERN.match(name):
        raise ConfigError(
            f"{prefix}: bad sync name. It is also the Dagster job name and asset key prefix, so it "
            "must be snake_case: a lowercase letter, then lowercase letters, digits or underscores "
            f"(at most 63). Fix: rename it, e.g. '{_suggest_name(name)}'."
        )
    if not isinstance(body, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of keys. Fix: see the YAML reference.")
    allowed = set(SyncConfig.model_fields) - {"name"}
    _check_keys(body, allowed, prefix, required=("model", "primary_key", "type"))
    _redact_value(prefix, body.get("redact"))  # its own message, before pydantic's
    models: tuple[DbtModel, ...] = ()
    settings = warehouse or WarehouseSettings(type=dialect)
    if uses_dbt(body.get("model")):
        require_dagster_dbt(f"{prefix}: key 'model'")
        sql, models = resolve_model(f"{prefix}: key 'model'", body["model"], dbt, settings)
        body = {**body, "model": sql}
    trigger = body.get("trigger")
    trigger_sql = trigger.get("sql") if isinstance(trigger, Mapping) else None
    if isinstance(trigger_sql, str) and uses_dbt(trigger_sql):  # {{ ref('x') }}, as in the model
        place = f"{prefix}: key 'trigger.sql'"
        require_dagster_dbt(place)
        sql, _ = resolve_model(place, trigger_sql, dbt, settings)
        body = {**body, "trigger": {**trigger, "sql": sql}}
    try:
        sync = SyncConfig(name=name, **body)
    except ValidationError as exc:
        first, *more = _validation_problems(prefix, exc)  # Dagster shows the first
        raise ConfigError(first, also=tuple(more)) from None
    if sync.require_checks and not models:
        raise ConfigError(
            f"{prefix}: key 'require_checks' waits for the dbt tests of the model's dbt "
            "models, but the model names none. Fix: use 'model: {dbt: <model>}' or "
            "{{ ref('<model>') }} in the SQL, or remove 'require_checks'."
        )
    sync = sync.with_dbt(models=models) if models else sync
    _check_semantics(prefix, sync, body)
    check_model_sql(prefix, sync.model, partitioned=sync.partitions is not None, dialect=dialect)
    sync = _check_redact(prefix, sync, body.get("redact"))
    if sync.trigger is not None:
        check_model_sql(prefix, sync.trigger.sql, key="trigger.sql", dialect=dialect)
    return sync


def _check_semantics(prefix: str, sync: SyncConfig, body: Mapping[str, Any]) -> None:
    keys = ("primary_key", "user_id", "anonymous_id", "timestamp", "message_id")
    for key in (*keys, "name_column", "group_id", "previous_id"):
        value = getattr(sync, key)
        if value is not None and not value.strip():
            raise ConfigError(f"{prefix}: key '{key}' is blank. Fix: name a column of the model.")
    if not sync.id_columns:
        raise ConfigError(
            f"{prefix}: no ID column. Every RudderStack event needs a userId or an anonymousId. "
            "Fix: set 'user_id' and/or 'anonymous_id' to a column of the model."
        )
    for field, column in sync.mapping.items():
        if not field.strip() or not column.strip():
            raise ConfigError(
                f"{prefix}: key 'mapping' has a blank field or column ({field!r}: {column!r}). "
                "Fix: map each event field name to a column name."
            )
    _check_call_columns(prefix, sync, body)
    if sync.anomaly is not None and sync.partitions is not None:
        raise ConfigError(
            f"{prefix}: key 'anomaly' is for unpartitioned syncs; a partitioned sync's runs "
            "cover different windows, so they have no common history. Fix: remove it."
        )
    if sync.message_id_salt is not None:
        if sync.partitions is None:
            raise ConfigError(
                f"{prefix}: key 'message_id_salt' is for partitioned syncs; an unpartitioned "
                "sync's messageIds already include a random value of its state. Fix: remove "
                "it; to send the whole model again with new messageIds, run once with the run "
                f"config ops: {{{sync.name}__diff: {{config: {{resync: true, "
                "approve_large_change: true}}}."
            )
        if not sync.message_id_salt.strip():
            raise ConfigError(
                f"{prefix}: key 'message_id_salt' is blank. Fix: a new text (e.g. "
                "'resend-2024-06') gives every window new messageIds; remove the key to keep "
                "the current ones."
            )
    if sync.type != "track":
        for key in ("events", "send_initial_results"):
            if key in body:
                raise ConfigError(
                    f"{prefix}: key '{key}' is for track syncs only; "
                    f"{'an' if sync.type[0] in 'aeiou' else 'a'} {sync.type} sync always "
                    "sends the initial result set, on the change types in 'send_on'. "
                    "Fix: remove it (choose change types with 'send_on'), or use 'type: track'."
                )
        _check_send_on(prefix, sync)
    else:
        if "send_on" in body:
            raise ConfigError(
                f"{prefix}: key 'send_on' is not for track syncs; a track sync sends the change "
                "types named in 'events'. Fix: remove 'send_on' and list the change types "
                "under 'events'."
            )
        if not sync.events:
            raise ConfigError(
                f"{prefix}: key 'events' is missing or empty; a track sync needs an event name "
                "for at least one change type. Fix: e.g. 'events: {added: User Signed Up}'."
            )
        for change_type, event in sync.events.items():
            column = isinstance(event, Mapping)
            if not (event["column"] if column else event).strip():
                key = f"events.{change_type}" + (".column" if column else "")
                raise ConfigError(
                    f"{prefix}: key '{key}' is blank. Fix: give the event a name (or the "
                    "column holding it), or leave the change type out to not send it."
                )
    _check_payload_fields(prefix, sync)
    _check_append(prefix, sync, body)


def _check_append(prefix: str, sync: SyncConfig, body: Mapping[str, Any]) -> None:
    """`mode: append` and its keys: a cursor, only `added` events, no diff-only run config."""
    if sync.mode != "append":
        for key in APPEND_KEYS:
            if key in body:
                raise ConfigError(
                    f"{prefix}: key '{key}' is for 'mode: append' syncs only. Fix: add "
                    "'mode: append' (each run reads only rows past the cursor), or remove it."
                )
        return
    if sync.cursor is None or not sync.cursor.strip():
        raise ConfigError(
            f"{prefix}: key 'cursor' is {'missing' if sync.cursor is None else 'blank'}; "
            "'mode: append' reads only the rows past the stored cursor. Fix: name a column that "
            "grows with new rows, e.g. 'cursor: created_at'."
        )
    if sync.effective_send_on != ("added",):
        key, example = (
            ("events", "'events: {added: Order Completed}'")
            if sync.type == "track"
            else ("send_on", "'send_on: [added]'")
        )
        raise ConfigError(
            f"{prefix}: key '{key}' sends {', '.join(sync.effective_send_on) or 'nothing'}, but "
            "an append sync only sees new rows, so it sends 'added' only. Fix: e.g. "
            f"{example}."
        )
    if sync.partitions is not None and sync.start_at is not None:
        raise ConfigError(
            f"{prefix}: key 'start_at' is for unpartitioned append syncs; a partitioned one "
            "reads each window's cursor range. Fix: remove it (partitions.start says where "
            "windows begin)."
        )
    if sync.start_at is not None and body.get("send_initial_results"):
        raise ConfigError(
            f"{prefix}: keys 'start_at' and 'send_initial_results' both say what the first run "
            "sends. Fix: keep 'start_at' (send from there) or 'send_initial_results: true' "
            "(send every row), not both."
        )
    numeric_lookback = isinstance(sync.lookback, int) and sync.lookback != 0
    numeric_start = isinstance(sync.start_at, int)
    if numeric_lookback and sync.start_at is not None and not numeric_start:
        raise ConfigError(
            f"{prefix}: key 'lookback' is a number (a numeric cursor) but 'start_at' is a time. "
            "Fix: use a duration such as 'lookback: 2h' for a time cursor, or a number for "
            "'start_at'."
        )
    if numeric_start and isinstance(sync.lookback, timedelta):
        raise ConfigError(
            f"{prefix}: key 'start_at' is a number (a numeric cursor) but 'lookback' is a "
            "duration. Fix: use a whole number for 'lookback' with a numeric cursor."
        )


def _check_call_columns(prefix: str, sync: SyncConfig, body: Mapping[str, Any]) -> None:
    """name_column / group_id / previous_id: required by their call type, refused elsewhere."""
    needed = CALL_COLUMN_KEYS.get(sync.type)
    for key, (types, field) in {
        "name_column": ("page, screen", "name"),
        "group_id": ("group", "groupId"),
        "previous_id": ("alias", "previousId"),
    }.items():
        if needed and needed[0] == key:
            if getattr(sync, key) is None:
                raise ConfigError(
                    f"{prefix}: key '{key}' is missing; a {sync.type} call needs its {field}. "
                    f"Fix: set '{key}' to the column of the model that holds it."
                )
        elif key in body:
            raise ConfigError(
                f"{prefix}: key '{key}' is only for {types} syncs (it fills '{field}'), not "
                f"{sync.type}. Fix: remove it, or change 'type'."
            )
    if sync.type == "alias":
        if not sync.user_id:
            raise ConfigError(
                f"{prefix}: key 'user_id' is missing; an alias call links 'previous_id' to a "
                "userId. Fix: set 'user_id' to the column holding the new user ID."
            )
        for key in ("mapping", "static"):
            if getattr(sync, key):
                raise ConfigError(
                    f"{prefix}: key '{key}' is not allowed on alias; an alias call carries no "
                    "properties or traits. Fix: remove it (send traits with an identify sync)."
                )


def _check_send_on(prefix: str, sync: SyncConfig) -> None:
    if sync.send_on is None:
        return
    if not sync.send_on:
        raise ConfigError(
            f"{prefix}: key 'send_on' is empty, so the sync would never send anything. "
            "Fix: list change types, e.g. 'send_on: [added, changed]', or remove it for the "
            "default."
        )
    if "removed" in sync.send_on and sync.type not in ("page", "screen"):
        raise ConfigError(
            f"{prefix}: key 'send_on' has 'removed', but a {sync.type} call for a row that is "
            "gone would re-send its last values as if current. Fix: use added and/or changed "
            "('removed' is for page and screen syncs)."
        )


def _check_payload_fields(prefix: str, sync: SyncConfig) -> None:
    """Dotted paths, static values, context and integrations: shapes the payload can hold."""
    paths: dict[tuple[str, ...], str] = {}
    for key, fields in (("mapping", sync.mapping), ("static", sync.static)):
        for field in fields:
            _add_path(prefix, key, str(field), paths)
    for field, value in sync.static.items():
        try:
            orjson.dumps(value)
        except TypeError:
            raise ConfigError(
                f"{prefix}: key 'static.{field}' has a value JSON cannot hold ({value!r}). "
                "Fix: use a string, number, boolean, null, list or mapping."
            ) from None
    context_paths: dict[tuple[str, ...], str] = {}
    for field, column in sync.context.items():
        if not column.strip():
            raise ConfigError(
                f"{prefix}: key 'context.{field}' names a blank column. "
                "Fix: map each context field to a column name, e.g. {ip: ip_address}."
            )
        path = _add_path(prefix, "context", field, context_paths)
        if path[0] in RESERVED_CONTEXT:
            raise ConfigError(
                f"{prefix}: key 'context.{field}': rudder_sync writes context.{path[0]} itself. "
                "Fix: remove it (put traits in 'mapping' of an identify sync)."
            )
    if sync.integrations is not None:
        all_value = sync.integrations.get("All")
        if "All" in sync.integrations and not isinstance(all_value, bool):
            raise ConfigError(
                f"{prefix}: key 'integrations.All' must be true or false (got {all_value!r}); "
                "any other value routes the event to no destination. Fix: 'All: true' or "
                "'All: false'."
            )
        for destination, value in sync.integrations.items():
            if not isinstance(value, (bool, Mapping)):
                raise ConfigError(
                    f"{prefix}: key 'integrations.{destination}' must be true, false or a "
                    f"mapping of destination options (got {value!r}). Fix: e.g. "
                    "'integrations: {All: false, Amplitude: true}'."
                )


def _add_path(
    prefix: str, key: str, field: str, paths: dict[tuple[str, ...], str]
) -> tuple[str, ...]:
    """Record a dotted field path, refusing empty parts and a path inside another (a, a.b)."""
    path = tuple(field.split("."))
    if not all(part.strip() for part in path):
        raise ConfigError(
            f"{prefix}: key '{key}' has the field path {field!r} with an empty part. "
            "Fix: write names joined by single dots, e.g. 'address.city'."
        )
    for other, where in paths.items():
        if other == path or other[: len(path)] == path or path[: len(other)] == other:
            shorter, longer = sorted((".".join(other), field), key=len)
            both = f"'{where}.{'.'.join(other)}' and '{key}.{field}'"
            raise ConfigError(
                f"{prefix}: keys {both} collide: '{shorter}' cannot be both a value and hold "
                f"'{longer}'. Fix: rename one of them."
                if shorter != longer
                else f"{prefix}: keys {both} set the same field. Fix: keep one of them."
            )
    paths[path] = key
    return path


def check_model_sql(
    prefix: str, sql: str, partitioned: bool = False, key: str = "model", dialect: str = "duckdb"
) -> None:
    """Parse the model without running it, so a typo fails at load time rather than mid-run."""
    try:
        used = check_query(sql, dialect)
    except ModelSqlError as exc:
        raise ConfigError(f"{prefix}: key '{key}' {exc.problem}. Fix: {exc.fix}.") from None
    _check_parameters(prefix, key, used, partitioned)


def _check_parameters(prefix: str, key: str, used: set[str], partitioned: bool) -> None:
    unknown = sorted(used - set(PARTITION_PARAMETERS))
    if unknown:
        raise ConfigError(
            f"{prefix}: key '{key}' uses unknown parameter ${unknown[0]}. Fix: the only "
            "parameters are $partition_start and $partition_end (partitioned syncs)."
        )
    if used and not partitioned:
        raise ConfigError(
            f"{prefix}: key '{key}' uses ${sorted(used)[0]} but the sync has no 'partitions'. "
            "Fix: add 'partitions: {start: ..., cadence: daily}', or drop the parameter."
        )


def redact_targets(sync: SyncConfig) -> dict[str, set[str]]:
    """Every name `redact:` accepts for this sync -> the places it masks.

    A name is an event field path (`email`, `properties.email`, `traits.email`, `context.ip`,
    `userId`, `anonymousId`, `event`, `name`, `groupId`, `previousId`) or the model column that
    fills it. A name that is both (a field of one column and the column of another field) masks
    both: masking more never shows a value.
    """
    targets: dict[str, set[str]] = {}

    def add(place: str, *names: str | None) -> None:
        for name in names:
            if name:
                targets.setdefault(name, set()).add(place)

    add(REDACT_PRIMARY_KEY, sync.primary_key)
    if sync.user_id:
        add(REDACT_USER_ID, REDACT_USER_ID, sync.user_id)
    if sync.anonymous_id:
        add(REDACT_ANONYMOUS_ID, REDACT_ANONYMOUS_ID, sync.anonymous_id)
    container = {"identify": "traits", "group": "traits"}.get(sync.type, "properties")
    for field, column in sync.mapping.items():
        add(field, field, f"{container}.{field}", column)
    for column in sync.event_columns.values():
        add("event", "event", column)
    if sync.call_column:
        add(CALL_COLUMN_KEYS[sync.type][1], CALL_COLUMN_KEYS[sync.type][1], sync.call_column)
    for field, column in sync.context.items():
        add(f"context.{field}", f"context.{field}", column)
    return targets


def _redact_value(prefix: str, value: Any) -> list[str] | Literal["all"] | None:
    """`redact:` as written: a list of names or `all` (a list holding 'all' is `all`)."""
    if value is None:
        return None
    if value == REDACT_ALL:
        return REDACT_ALL
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(
            f"{prefix}: key 'redact' must be a list of event fields or model columns, or 'all' "
            f"(got {value!r}). Fix: e.g. 'redact: [email, userId]' or 'redact: all'."
        )
    return REDACT_ALL if REDACT_ALL in value else list(dict.fromkeys(value))


def _check_redact(prefix: str, sync: SyncConfig, raw: Any) -> SyncConfig:
    """The sync's `redact:` names must each be an event field or a column of the sync."""
    names = _redact_value(prefix, raw)
    if isinstance(names, list):
        known = redact_targets(sync)
        for name in names:
            if name not in known:
                raise ConfigError(f"{prefix}: key 'redact' {_unknown_redact(name, known)}")
    return sync.model_copy(update={"redact": names})


def _unknown_redact(name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return (
        f"names '{name}', which is no event field or model column of the sync{hint}. Fix: use "
        f"one of {', '.join(sorted(known))}, or 'all'."
    )


def _merge_redaction(
    where: str,
    redact: list[str] | Literal["all"] | None,
    store_frames: bool,
    syncs: dict[str, SyncConfig],
) -> dict[str, SyncConfig]:
    """The project's `redact:` and `store_frames` merged into each sync: a sync masks its own
    names and the project's names it has (a project name must belong to some sync); `all` at
    either level wins; a sync's `store_frames` overrides the project's."""
    targets = {name: redact_targets(sync) for name, sync in syncs.items()}
    if isinstance(redact, list):
        known: dict[str, Any] = {}
        for found in targets.values():
            known.update(found)
        for name in redact:
            if name not in known:
                detail = _unknown_redact(name, known).replace("of the sync", "of any sync")
                raise ConfigError(f"{where}: key 'redact' {detail}")
    merged = {}
    for name, sync in syncs.items():
        own = sync.redact
        if own == REDACT_ALL or redact == REDACT_ALL:
            names: list[str] | Literal["all"] | None = REDACT_ALL
        else:
            extra = [n for n in redact or [] if n in targets[name]]
            names = list(dict.fromkeys([*(own or []), *extra])) or own
        stores = store_frames if sync.store_frames is None else sync.store_frames
        merged[name] = sync.model_copy(update={"redact": names, "store_frames": stores})
    return merged


def _check_keys(
    body: Mapping[str, Any], allowed: set[str], prefix: str, required: tuple[str, ...]
) -> None:
    for key in body:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = (
                f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(sorted(allowed))}"
            )
            raise ConfigError(f"{prefix}: unknown key '{key}'. Fix: remove it ({hint}).")
    for key in required:
        if key not in body or body[key] is None:
            raise ConfigError(f"{prefix}: key '{key}' is missing. Fix: add '{key}:'.")


def _validation_problems(prefix: str, exc: ValidationError) -> list[str]:
    """Every invalid key of one validation, one line each (a key's repeats once)."""
    lines: list[str] = []
    for error in exc.errors():
        line = _describe_error(prefix, error)
        if line not in lines:
            lines.append(line)
    return lines


def _describe_validation_error(prefix: str, exc: ValidationError) -> str:
    return _describe_error(prefix, exc.errors()[0])


def _describe_error(prefix: str, error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "?"
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    fixes = {
        "partitions": "e.g. 'partitions: {start: 2024-01-01, cadence: daily, timezone: UTC}' "
        "(cadence: hourly, daily, weekly or monthly)",
        "type": "use track, identify, page, screen, group or alias",
        "schedule": "use a cron expression such as '*/15 * * * *'",
        "trigger": "e.g. 'trigger: {sql: select max(updated_at) from users, every_seconds: 60}'",
        "upstream": "list asset keys, e.g. [analytics/users]",
        "require_checks": "use true or false",
        "model": "write the SELECT query, or {dbt: <model name>}",
        "max_in_flight": "a number of concurrent requests from 1 to 64",
        "max_request_kb": "at most 4000 (the gateway's limit)",
        "max_event_kb": "KiB per event from 1 to 4000; RudderStack documents 32",
        "request_timeout_seconds": "a number of seconds",
        "retry_max_seconds": "a number of seconds",
        "guard": "e.g. 'guard: {max_removed_fraction: 0.2, max_changed_fraction: 0.5, "
        "max_events: 100000}' (null turns one off)",
        "events": "map change types (added, changed, removed) to event names or {column: <column>}",
        "mapping": "map event field names to column names, e.g. {email: email}",
        "static": "map field names to constant values, e.g. {source: warehouse}",
        "context": "map context fields to columns, e.g. {ip: ip_address}",
        "integrations": "e.g. 'integrations: {All: false, Amplitude: true}'",
        "exclude_nulls": "use true or false",
        "send_on": "list change types: added, changed (and removed on page/screen syncs)",
        "name_column": "name the column holding the page or screen name",
        "group_id": "name the column holding the groupId",
        "previous_id": "name the column holding the previousId",
        "send_initial_results": "use true or false",
        "max_attempts": "a number of failed attempts of at least 1 before a row is quarantined, "
        "or null to retry forever",
        "message_id_salt": "a text, e.g. 'resend-2024-06' (quote numbers)",
        "destination": "name a destination under 'destinations' (or remove it for the default)",
        "alerts": "list channel names under 'alerts.channels', e.g. [pager]; [] sends none",
        "freshness": "e.g. 'freshness: {max_lag: 2h}' (a duration: 90s, 30m, 2h or 1d)",
        "dry_run": "use true (build and validate events without sending) or false",
        "anomaly": "e.g. 'anomaly: {window: 20, max_deviation: 0.5, quiet_runs: 3}' (window at "
        "least 3 runs, max_deviation above 0)",
        "redact": "list event fields or model columns, e.g. [email, userId], or write 'all'",
        "store_frames": "use true or false (false: the diff and events frames keep no rows)",
        "delivery_log_retention": "e.g. 'delivery_log_retention: 30d' (units s, m, h, d), or null "
        "to keep the delivery log forever",
        "mode": "use diff (the default) or append",
        "cursor": "name the column the append sync reads past, e.g. 'cursor: created_at'",
        "lookback": "e.g. 'lookback: 2h' (units s, m, h, d) for a time cursor, or a whole number "
        "for a numeric one",
        "start_at": "a date or time such as 2024-06-01 or '2024-06-01T00:00:00Z', or a number "
        "for a numeric cursor",
    }
    fix = fixes.get(key.split(".")[0], "see the YAML reference, docs/configuration.md")
    if error["type"] == "literal_error" and key.startswith("events."):
        fix = "use only the change types added, changed and removed"
    shown = "" if isinstance(given, Mapping) else f" (got {given!r})"
    return f"{prefix}: key '{key}': {message}{shown}. Fix: {fix}."


def _path_value(value: Any, key: str, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: key '{key}' must be a path. Fix: e.g. '{key}: ...'.")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _suggest_name(name: str) -> str:
    snake = re.sub(r"[^a-z0-9]+", "_", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    snake = snake.strip("_") or "my_sync"
    return snake if snake[0].isalpha() else f"sync_{snake}"


# The longest table name suffix of in-warehouse state: `__dry_run__w_` + an hourly window key.
_STATE_SUFFIX_CHARS = len("__dry_run__w_2024_01_01_00_00")


def _check_state_schema_names(warehouse: WarehouseSettings, syncs: Mapping[str, Any]) -> None:
    """With state_schema, a sync's tables are `<sync>__<role>`: PostgreSQL cuts names at 63
    bytes, which would silently make two syncs share a table."""
    if not getattr(warehouse, "state_schema", None):
        return
    limit = 63 - _STATE_SUFFIX_CHARS
    for name in syncs:
        if len(name.encode()) > limit:
            raise ConfigError(
                f"sync '{name}': with warehouse key 'state_schema', a sync name may have at most "
                f"{limit} bytes (its tables are named '<sync>__<table>', and PostgreSQL cuts "
                "names at 63). Fix: give the sync a shorter name."
            )
