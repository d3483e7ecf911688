"""`RudderstackSyncComponent`: declare syncs in a `dg` project's `defs.yaml`.

The attributes are the sync YAML document itself (`warehouse`, `state`, `syncs`), validated by
`config.parse_config` and built by `definitions.build_definitions`, so a sync declared here gets the
same checks, messages, assets, jobs, schedules and sensors as one in `RUDDER_SYNC_CONFIG`.

Several instances may share a code location: they add their resources to one
`CodeLocationResources` per load, so equal resources are defined once and different ones (another
warehouse, state folder or destination) get keys of their own, suffixed with the folder's name.
"""

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from dagster import (
    Component,
    ComponentLoadContext,
    ComponentTypeSpec,
    Definitions,
    Model,
    ResolutionContext,
    Resolvable,
    Resolver,
)
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, create_model

from .alerts.settings import CHANNEL_TYPES, Condition
from .config import (
    SYNC_NAME_PATTERN,
    ConfigError,
    DeliveryConfig,
    ProjectConfig,
    SyncConfig,
    UniqueKeyLoader,
    parse_config,
)
from .definitions import CodeLocationResources, build_definitions, namespace_of

if TYPE_CHECKING:
    from dagster_dbt import DagsterDbtTranslator

DEFS_FILES = ("defs.yaml", "defs.yml", "component.yaml")


def _sync_schema() -> type[BaseModel]:
    """`SyncConfig` minus `name` (the key under `syncs`): one sync's schema, for `dg check yaml`."""
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in SyncConfig.model_fields.items()
        if name != "name"
    }
    # In YAML, a model is SQL or a dbt model by name (config.parse_sync resolves it to SQL).
    fields["model"] = (str | DbtModelName, fields["model"][1])
    return create_model(
        "RudderstackSync",
        __config__=ConfigDict(extra="forbid", title="RudderstackSync"),
        __doc__=SyncConfig.__doc__,
        **fields,
    )


class DbtModelName(BaseModel):
    """`{dbt: <model name>}`: the relation of a dbt model, from the project's manifest."""

    model_config = ConfigDict(extra="forbid", title="DbtModelName")

    dbt: str


class DbtProjectAttribute(BaseModel):
    """The sync YAML's `dbt:`: where the dbt project's manifest is (docs/dbt.md)."""

    model_config = ConfigDict(extra="forbid", title="DbtProject")

    project_dir: str | None = Field(
        default=None, description="The dbt project; its target/manifest.json is read."
    )
    manifest: str | None = Field(default=None, description="The manifest.json itself.")


def _verbatim(context: ResolutionContext, value: Any) -> Any:
    return value


def _dbt(context: ResolutionContext, value: Any) -> Any:
    """The dbt paths are templated like `warehouse` (`{{ context.project_root }}/../analytics`)."""
    if isinstance(value, BaseModel):  # validated by the attributes' schema
        value = value.model_dump()
    if not isinstance(value, Mapping):
        return value
    return {
        key: context.resolve_value(v) if isinstance(v, str) else v
        for key, v in value.items()
        if v is not None  # a key the schema left unset
    }


def _warehouse(context: ResolutionContext, value: Any) -> Any:
    """A path is templated (`{{ context.project_root }}/...`); a mapping is taken verbatim, so its
    `{env: NAME}` values are read by rudder_sync (as EnvVar), never pasted in by the template."""
    return context.resolve_value(value) if isinstance(value, str) else value


# Validation passes the syncs through untouched, so that `parse_config` reports every mistake with
# the YAML path's messages; the JSON schema (editors, `dg check yaml`) is `SyncConfig`'s.
SyncsAttribute = Annotated[
    Any, PlainValidator(lambda value: value, json_schema_input_type=dict[str, _sync_schema()])
]


class EnvValue(BaseModel):
    """`{env: NAME}`: a value read from an environment variable, through Dagster's EnvVar."""

    model_config = ConfigDict(extra="forbid", title="EnvValue")

    env: str


class RudderstackDestination(BaseModel):
    """One RudderStack source to deliver to; its write key only from the environment."""

    model_config = ConfigDict(extra="forbid", title="RudderstackDestination")

    data_plane_url: str | EnvValue = Field(
        description="The data plane URL, or {env: NAME} (unset or empty at load: its syncs' runs "
        "fail naming it, unless dry_run: true)."
    )
    write_key: EnvValue = Field(
        description="{env: NAME}: the variable holding the source's write key (never literal)."
    )
    dry_run: bool = Field(
        default=False,
        description="true: the destination's syncs build and validate events, sending nothing.",
    )


# Taken verbatim too, so that `parse_config` names the destination and the key of a mistake.
DestinationsAttribute = Annotated[
    Any,
    PlainValidator(lambda value: value, json_schema_input_type=dict[str, RudderstackDestination]),
]


def _channel_schema(kind: str) -> tuple[Any, Any]:
    """A channel type's keys (its settings model minus the internal `kind`), optional."""
    model = CHANNEL_TYPES[kind]
    fields = {n: (i.annotation, i) for n, i in model.model_fields.items() if n != "kind"}
    schema = create_model(
        f"Rudderstack{kind.title()}Channel",
        __config__=ConfigDict(extra="forbid", title=f"Rudderstack{kind.title()}Channel"),
        __doc__=model.__doc__,
        **fields,
    )
    return (schema | None, None)


# The `alerts:` section as written in YAML: channel name -> {slack|webhook|email: {...}}.
AlertChannelSchema = create_model(
    "RudderstackAlertChannel",
    __config__=ConfigDict(extra="forbid", title="RudderstackAlertChannel"),
    __doc__="One alert channel: exactly one of slack, webhook or email; secrets {env: NAME}.",
    **{kind: _channel_schema(kind) for kind in CHANNEL_TYPES},
)
AlertsSchema = create_model(
    "RudderstackAlerts",
    __config__=ConfigDict(extra="forbid", title="RudderstackAlerts"),
    __doc__="Alerts when a sync breaks and when it recovers (docs/alerts.md).",
    ui_url=(str, "http://localhost:3000"),
    channels=(dict[str, AlertChannelSchema], ...),  # type: ignore[valid-type]
    on=(list[Condition] | None, None),
    rejected_share=(float, 0.0),
)
# Taken verbatim, so that `parse_config` names the channel and the key of a mistake.
AlertsAttribute = Annotated[
    Any, PlainValidator(lambda value: value, json_schema_input_type=AlertsSchema)
]


class RudderstackSyncAttributes(Model):
    """The attributes of `RudderstackSyncComponent` in `defs.yaml`: the sync YAML's top level."""

    warehouse: str | dict[str, Any] | None = Field(
        default=None,
        description="The warehouse the models read (read-only), as the sync YAML's 'warehouse': "
        "a DuckDB file path (default warehouse.duckdb; relative to the folder of the defs.yaml; "
        "templates such as '{{ context.project_root }}/warehouse.duckdb' work), or a mapping "
        "with 'type' (duckdb, postgres, snowflake, bigquery, redshift, databricks) and that "
        "type's keys, secrets written as {env: NAME}.",
    )
    state: str | None = Field(
        default=None,
        description="Folder for sync state, one DuckDB file per sync; created if missing. "
        "Default: .rudder_sync. Relative to the folder of the defs.yaml, like warehouse.",
    )
    delivery: DeliveryConfig | None = Field(
        default=None,
        description="How events are sent (in-flight requests, body limit, timeouts, retry "
        "budget), as the sync YAML's 'delivery'.",
    )
    destinations: DestinationsAttribute = Field(
        default=None,
        description="Named RudderStack destinations, as the sync YAML's 'destinations': name -> "
        "{data_plane_url, write_key}, each {env: NAME}. A sync picks one with 'destination'; "
        "without it, it sends to RUDDERSTACK_DATA_PLANE_URL.",
        json_schema_extra={"propertyNames": {"pattern": SYNC_NAME_PATTERN.pattern}},
    )
    dry_run: bool = Field(
        default=False,
        description="true: no sync sends anything (a dry run: events built and validated). "
        "Without it, a destination whose URL variable is unset fails its syncs' runs.",
    )
    redact: list[str] | Literal["all"] | None = Field(
        default=None,
        description="Row values masked in Dagster metadata, logs and stored frames (not in the "
        "events): event fields or model columns, e.g. [email, userId], or 'all'. Applies to "
        "every sync that has the field; a sync's own 'redact' adds to it. See docs/semantics.md.",
    )
    store_frames: bool = Field(
        default=True,
        description="false: the diff and events frames the IO manager stores keep no rows "
        "(counts only, in the metadata). A sync's own 'store_frames' overrides it.",
    )
    delivery_log_retention: str | None = Field(
        default="30d",
        description="How long each sync's delivery log keeps a row (30d, 12h; units s, m, h, d); "
        "null keeps it forever. Older rows are pruned after each events step, except those of "
        "keys with a pending or rejected change. A sync's own key overrides it.",
    )
    alerts: AlertsAttribute = Field(
        default=None,
        description="Alerts, as the sync YAML's 'alerts': ui_url, channels (name -> {slack|"
        "webhook|email: {...}}, secrets as {env: NAME}), on (conditions), rejected_share. A "
        "sync's 'alerts' key narrows its channels. See docs/alerts.md.",
    )
    dbt: DbtProjectAttribute | None = Field(
        default=None,
        description="The dbt project whose models syncs name ('model: {dbt: customers}' or "
        "{{ ref('customers') }} in the SQL), as the sync YAML's 'dbt': project_dir or manifest, "
        "relative to the folder of the defs.yaml. Needs rudder_sync[dbt]. See docs/dbt.md.",
    )
    syncs: SyncsAttribute = Field(
        description="Sync name (snake_case; also the job name, asset key prefix and group) -> "
        "the sync, with the keys of the sync YAML. Taken verbatim: no templating inside.",
        json_schema_extra={"propertyNames": {"pattern": SYNC_NAME_PATTERN.pattern}},
    )


@dataclass
class RudderstackSyncComponent(Component, Resolvable):
    """Reverse ETL syncs from a warehouse to RudderStack, declared as in the sync YAML.

    Each sync becomes the assets `<sync>/snapshot`, `<sync>/diff` and `<sync>/events` with their
    checks, a job of the sync's name, and its schedule and trigger sensor when configured; the
    component adds the resources, the in-process executor and the failure sensor. Events go to
    `RUDDERSTACK_DATA_PLANE_URL` with `RUDDERSTACK_WRITE_KEY`, or to the sync's `destination`;
    a destination without a URL fails its syncs' runs unless the config says `dry_run: true`.
    """

    syncs: Annotated[Mapping[str, Any], Resolver(_verbatim, inject_before_resolve=False)]
    warehouse: Annotated[
        str | Mapping[str, Any] | None, Resolver(_warehouse, inject_before_resolve=False)
    ] = None
    state: str | None = None
    delivery: Annotated[
        Mapping[str, Any] | None, Resolver(_verbatim, inject_before_resolve=False)
    ] = None
    destinations: Annotated[
        Mapping[str, Any] | None, Resolver(_verbatim, inject_before_resolve=False)
    ] = None
    alerts: Annotated[
        Mapping[str, Any] | None, Resolver(_verbatim, inject_before_resolve=False)
    ] = None
    dry_run: bool = False
    redact: list[str] | str | None = None
    store_frames: bool = True
    delivery_log_retention: str | None = "30d"
    dbt: Annotated[Mapping[str, Any] | None, Resolver(_dbt, inject_before_resolve=False)] = None

    @classmethod
    def model(cls) -> type[BaseModel]:
        return RudderstackSyncAttributes

    @classmethod
    def get_spec(cls) -> ComponentTypeSpec:
        return ComponentTypeSpec(
            tags=["rudderstack", "reverse-etl", "duckdb"],
            produces=["asset", "asset_check", "job", "schedule", "sensor", "resource"],
        )

    def project(self, base_dir: Path, source: Path | None = None) -> ProjectConfig:
        """The validated syncs; relative paths resolve against `base_dir`."""
        raw: dict[str, Any] = {"syncs": self.syncs}
        if self.warehouse is not None:
            raw["warehouse"] = (
                self.warehouse if isinstance(self.warehouse, str) else dict(self.warehouse)
            )
        if self.state is not None:
            raw["state"] = self.state
        if self.delivery is not None:
            raw["delivery"] = dict(self.delivery)
        if self.destinations is not None:
            raw["destinations"] = dict(self.destinations)
        if self.alerts is not None:
            raw["alerts"] = dict(self.alerts)
        if self.dry_run:
            raw["dry_run"] = True
        if self.redact is not None:
            raw["redact"] = self.redact if isinstance(self.redact, str) else list(self.redact)
        if not self.store_frames:
            raw["store_frames"] = False
        raw["delivery_log_retention"] = self.delivery_log_retention
        if self.dbt is not None:
            raw["dbt"] = dict(self.dbt)
        return parse_config(raw, base_dir=base_dir.resolve(), source=source)

    def build_defs(self, context: ComponentLoadContext) -> Definitions:

        folder = context.path if context.path.is_dir() else context.path.parent
        source = next((folder / n for n in DEFS_FILES if (folder / n).is_file()), None)
        if source is not None:
            _check_unique_keys(source)
        project = self.project(folder, source)
        return build_definitions(
            project,
            code_location=_code_location(context),
            namespace=_namespace(context, folder),
            dbt_translator=self.get_dbt_translator(),
        )

    def get_dbt_translator(self) -> "DagsterDbtTranslator | None":
        """The translator of your `@dbt_assets`, which names the dbt assets that syncs on dbt
        models depend on; override it in a subclass (default: dagster-dbt's own)."""
        return None


# One per load of a code location (its component tree): a new load starts afresh, and a rebuild
# within a load finds its own entries (same keys, same sync names, the same failure sensor).
_CODE_LOCATIONS: "weakref.WeakKeyDictionary[Any, CodeLocationResources]" = (
    weakref.WeakKeyDictionary()
)


def _code_location(context: ComponentLoadContext) -> CodeLocationResources:
    """The resources shared by the components of this load (the component tree)."""
    tree = getattr(context, "component_tree", None)
    tracker = getattr(tree, "state_tracker", None)  # a plain object, one per tree
    if tracker is None:
        return CodeLocationResources()
    return _CODE_LOCATIONS.setdefault(tracker, CodeLocationResources())


def _namespace(context: ComponentLoadContext, folder: Path) -> str:
    """The component's folder under defs/, e.g. `eu_syncs` (a suffix for keys of its own)."""
    try:
        relative = folder.resolve().relative_to(Path(context.defs_module_path).resolve())
    except (ValueError, TypeError, AttributeError):
        relative = Path(folder.name)
    return namespace_of("_".join(relative.parts) or folder.name)


def _check_unique_keys(path: Path) -> None:
    """Dagster's YAML loader keeps the last of two equal keys; the sync YAML refuses them."""
    try:
        for _ in yaml.load_all(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader):  # noqa: S506
            pass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
