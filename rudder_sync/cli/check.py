"""`python -m rudder_sync check [CONFIG] [--connect]`: every problem of a project, one line each.

CONFIG is a sync YAML or a dg project's `defs.yaml`, whose rudder_sync components are checked
alike (their templates rendered as `dg` renders them).

Loading the definitions stops at the first error. This command checks each top-level section of
the YAML on its own and each sync on its own (through the same `parse_config` the definitions use),
so one mistake does not hide the next; then the destinations' environment variables, the syncs
whose runs would fail for want of a data plane URL, and the whole definitions, as `dagster dev`
would load them. `--connect` also opens the warehouse and reads each
model's columns (a LIMIT 0 query: no rows), and asks each destination's data plane whether it
accepts the write key with an empty batch, which the gateway refuses after checking the key: no
event is sent, nothing runs.

Exit status: 0 when nothing is wrong, 1 when a problem was found, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ..config import (
    CONFIG_ENV_VAR,
    DEFAULT_DESTINATION,
    DeliveryConfig,
    DestinationConfig,
    ProjectConfig,
    SyncConfig,
    config_path_from_env,
    default_config_path,
    parse_config,
    parse_sync,
    read_config,
)
from ..errors import ConfigError, RudderSyncError
from ..warehouses.settings import EnvRef

if TYPE_CHECKING:
    import pyarrow as pa

# A sync that passes every check, put in place of the user's syncs while a section is checked.
_PLACEHOLDER = {
    "rudder_sync_check": {
        "model": "select 1 as id, 'u' as user_id",
        "primary_key": "id",
        "type": "identify",
        "user_id": "user_id",
    }
}
_EMPTY_BATCH = b'{"batch":[]}'
_PROBE_TIMEOUT_SECONDS = 10.0


@dataclass
class Report:
    """What a check found: problems (one line each, with the fix) and what was found fine."""

    config: Path
    problems: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def problem(self, error: BaseException | str) -> None:
        line = " ".join(str(error).split())
        if line not in self.problems:
            self.problems.append(line)

    def ok(self, line: str) -> None:
        self.passed.append(line)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rudder_sync check",
        description="Check a rudder_sync project and print every problem, one line each with its "
        "fix. Exit status 1 when there is one.",
    )
    parser.add_argument(
        "config",
        nargs="?",
        type=Path,
        help=f"the sync YAML, or a dg project's defs.yaml (default: ${CONFIG_ENV_VAR}, else the "
        "packaged demo)",
    )
    parser.add_argument(
        "--connect",
        action="store_true",
        help="also open the warehouse (each model's columns, no rows read) and each destination "
        "(the write key, with an empty batch: no event sent)",
    )
    args = parser.parse_args(argv)
    report = check(args.config or config_path_from_env(), connect=args.connect)
    for line in report.passed:
        print(f"ok: {line}")
    for line in report.problems:
        print(f"problem: {line}")
    if report.problems:
        count = len(report.problems)
        print(f"{count} problem{'s' if count > 1 else ''} in {report.config}.")
        return 1
    if not args.connect:
        print(
            f"{report.config}: no problems. --connect also reaches the warehouse and destinations."
        )
    else:
        print(f"{report.config}: no problems.")
    return 0


def check(path: Path, connect: bool = False) -> Report:
    """Every problem of the project in `path` (a sync YAML, or a dg project's defs.yaml with
    rudder_sync components); with `connect`, of its warehouse and data planes."""
    report = Report(config=path)
    for raw in documents(path, report):
        project = load_checked(path, report, raw)
        if project is None:
            continue
        senders = check_definitions(project, report)
        if connect:
            check_warehouse(project, report)
            used = {sync.destination for sync in project.syncs.values()}
            for destination in destinations_of(project):
                sender = senders.get(destination.name)
                if destination.name in used and sender is not None and not sender.dry_run:
                    probe_destination(destination, project.delivery, report)
    return report


# -- the YAML ------------------------------------------------------------------------------------


def documents(path: Path, report: Report) -> list[Any]:
    """The sync YAML documents in `path`: the file itself, or, in a `defs.yaml`, the attributes of
    each `RudderstackSyncComponent`, with their `{{ ... }}` templates rendered as `dg` renders them
    (`context.project_root`, `env`)."""
    from ..component import DEFS_FILES

    try:
        if path.name not in DEFS_FILES:
            return [read_config(path)]
        components = [
            d
            for d in _yaml_documents(path)
            if isinstance(d, Mapping) and str(d.get("type", "")).endswith(_COMPONENT)
        ]
    except RudderSyncError as exc:
        report.problem(exc)
        return []
    if not components:
        report.problem(
            f"{path}: no component of type rudder_sync.{_COMPONENT}. Fix: check a defs.yaml "
            f"with 'type: rudder_sync.{_COMPONENT}', or the sync YAML itself."
        )
    rendered = []
    for component in components:
        try:
            rendered.append(_render(component.get("attributes"), _project_root(path)))
        except Exception as exc:  # Jinja's errors, as dg would meet them
            report.problem(
                f"{path}: a template in 'attributes' failed: {type(exc).__name__}: {exc}. Fix: "
                "use {{ context.project_root }} and {{ env.NAME }} as dg renders them."
            )
    return rendered


_COMPONENT = "RudderstackSyncComponent"


def _yaml_documents(path: Path) -> list[Any]:
    """Every document of a defs.yaml (components are separated by `---`)."""
    import yaml

    from ..config import UniqueKeyLoader

    try:
        text = path.read_text(encoding="utf-8")
        return list(yaml.load_all(text, Loader=UniqueKeyLoader))  # noqa: S506 - SafeLoader
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read it ({exc.strerror or exc}). Fix: name an existing defs.yaml."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{path}: not valid YAML: {' '.join(str(exc).split())}. Fix: correct the YAML at "
            "that line."
        ) from None


def _project_root(path: Path) -> Path:
    """The dg project the defs.yaml belongs to: the nearest folder up with a pyproject.toml."""
    for folder in path.resolve().parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    return path.resolve().parent


def _render(attributes: Any, project_root: Path) -> Any:
    """The attributes with dg's templates rendered by Dagster's own resolution context."""
    from types import SimpleNamespace

    from dagster import ResolutionContext

    scope = SimpleNamespace(project_root=str(project_root))
    return ResolutionContext.default().with_scope(context=scope).resolve_value(attributes)


def load_checked(path: Path, report: Report, raw: Any) -> ProjectConfig | None:
    """The project of the YAML document `raw` (from `path`), or None after recording every
    problem found in it."""
    base = path.parent.resolve()

    def parse(document: Any) -> ProjectConfig | None:
        try:
            return parse_config(document, base_dir=base, source=path)
        except RudderSyncError as exc:
            report.problem(exc)
            return None

    if not isinstance(raw, Mapping):
        return parse(raw)
    # Each top-level section with a sync that passes: its own errors only.
    sound = {key: value for key, value in raw.items() if key == "syncs"}
    for key, value in raw.items():
        if key != "syncs" and parse({key: value, "syncs": _PLACEHOLDER}) is not None:
            sound[key] = value
    syncs = raw.get("syncs")
    if not isinstance(syncs, Mapping) or not syncs:
        parse({**sound, "syncs": syncs})
    elif len(sound) == len(raw):
        for name, body in syncs.items():  # each sync within the (sound) project
            for line in _sync_problems(
                name, body, lambda b, n=name: parse_config({**raw, "syncs": {n: b}}, base, path)
            ):
                report.problem(line)
    else:
        # A broken section (warehouse, destinations...) would fail every sync: check the syncs'
        # own keys only, in the warehouse's dialect when it is known.
        dialect = _dialect(raw.get("warehouse"))
        for name, body in syncs.items():
            for line in _sync_problems(
                name, body, lambda b, n=name: parse_sync(str(n), b, dialect=dialect)
            ):
                report.problem(line)
    before = len(report.problems)
    project = parse(raw)  # what the definitions load: anything the parts did not show
    if project is None or before:
        return None
    if path == default_config_path():
        from ..definitions import load_project  # the demo's paths, in the demo folder

        project = load_project()
    count, names = len(project.syncs), ", ".join(project.syncs)
    syncs = f"{count} sync{'s' if count > 1 else ''} ({names})"
    report.ok(f"{path}: {syncs}, warehouse {_warehouse(project)}")
    return project


def _sync_problems(name: Any, body: Any, attempt: Callable[[Any], Any]) -> list[str]:
    """A sync's problems: every invalid value of its keys at once; after an unknown key, the sync
    is checked again without it, so that every misspelt key shows. A problem found after the
    keys' values are valid (a missing ID column, say) is the sync's last one shown."""
    problems: list[str] = []
    while True:
        try:
            attempt(body)
        except RudderSyncError as exc:
            problems.extend(exc.problems if isinstance(exc, ConfigError) else [str(exc)])
            unknown = re.match(rf"sync '{re.escape(str(name))}': unknown key '(.+?)'\.", str(exc))
            if unknown is None or not isinstance(body, Mapping):
                return problems
            rest = {key: value for key, value in body.items() if str(key) != unknown[1]}
            if len(rest) == len(body):
                return problems
            body = rest
        else:
            return problems


def _dialect(warehouse: Any) -> str:
    """The SQL dialect of a `warehouse:` section that did not pass (DuckDB when unknown)."""
    from ..warehouses import SETTINGS

    kind = warehouse.get("type") if isinstance(warehouse, Mapping) else "duckdb"
    return kind if kind in SETTINGS else "duckdb"


def _warehouse(project: ProjectConfig) -> str:
    from ..warehouses import build_warehouse

    warehouse = build_warehouse(project.warehouse)
    try:  # {env: NAME} values resolved, so the description names the host, not the variable
        return warehouse.process_config_and_initialize().describe()
    except Exception:  # an unset variable is reported as a problem of its own
        return warehouse.describe()


# -- what the definitions check when they load ---------------------------------------------------


def destinations_of(project: ProjectConfig) -> list[DestinationConfig]:
    """The default destination and every named one (the definitions check them all)."""
    return [DEFAULT_DESTINATION, *project.destinations.values()]


def check_definitions(project: ProjectConfig, report: Report) -> dict[str | None, Any]:
    """Each destination's variables, each sync's runs (a URL that is not set fails them unless
    they are dry runs), then the whole definitions, as `dagster dev` loads them. The destinations'
    resources, by name (None: the default), those that could be built."""
    from dagster import Failure

    from ..definitions import build_definitions, destination_resource
    from ..dry_runs import resource_for_run

    senders: dict[str | None, Any] = {}
    for destination in destinations_of(project):
        try:
            resource = destination_resource(destination, project.delivery)
        except RudderSyncError as exc:
            report.problem(exc)
            continue
        senders[destination.name] = resource
        where, url = _label(destination), _url_of(destination)
        if resource.dry_run:
            report.ok(f"{where}: no data plane URL ({url}): its syncs can only be dry runs")
        else:
            report.ok(f"{where}: delivers ({url})")
    implicit = project._implicit_dry_run  # the demo: a dry run without a URL
    for sync in project.syncs.values():
        sender = senders.get(sync.destination)
        if sender is None:
            continue
        url_env = None if implicit else sync.destination_config.url_env
        try:
            resource_for_run(sync.requiring_url(url_env), sender, None)
        except Failure as exc:
            report.problem(exc.description or str(exc))
    if report.problems:
        return senders
    try:
        build_definitions(project).get_repository_def()
    except RudderSyncError as exc:
        report.problem(exc)
    return senders


def _label(destination: DestinationConfig) -> str:
    return (
        "default destination" if destination.name is None else f"destination '{destination.name}'"
    )


def _url_of(destination: DestinationConfig) -> str:
    """Where the URL comes from, and whether it is set: never a secret."""
    if destination.url_env is None:
        return f"data_plane_url {destination.data_plane_url}"
    value = os.environ.get(destination.url_env, "").strip()
    return f"{destination.url_env}={value}" if value else f"{destination.url_env} is not set"


# -- --connect -----------------------------------------------------------------------------------


def check_warehouse(project: ProjectConfig, report: Report) -> None:
    """Connect once, then read each model's columns and run each trigger's query with LIMIT 0
    (no rows, nothing written)."""
    from ..warehouses import build_warehouse

    warehouse = build_warehouse(project.warehouse).process_config_and_initialize()
    with warehouse.session():  # one login for all the reads below
        _check_reads(project, warehouse, report)


def _check_reads(project: ProjectConfig, warehouse: Any, report: Report) -> None:
    from ..diff import check_model_columns
    from ..warehouses.sql import statement_body

    try:
        with warehouse.read_model("select 1 as connected") as reader:
            reader.read_all()
    except RudderSyncError as exc:
        variables = [value.env for _, value in project.warehouse if isinstance(value, EnvRef)]
        read = f" (the warehouse settings read {', '.join(variables)})" if variables else ""
        report.problem(f"warehouse: {exc}{read}")
        return
    report.ok(f"warehouse {warehouse.describe()}: connected")
    schema = getattr(project.warehouse, "state_schema", None)
    if schema and warehouse.kind in _RIGHTS_ENGINES:
        check_state_rights(warehouse, schema, report)
    for sync in project.syncs.values():
        try:
            schema = model_schema(warehouse, sync)
            columns = list(schema.names)
            check_model_columns(sync, columns)
            if sync.mode == "append" and sync.cursor not in columns:
                report.problem(
                    f"sync '{sync.name}': the model does not return column '{sync.cursor}' (from "
                    f"'cursor'). Its columns are: {', '.join(columns)}. Fix: select it in the "
                    "model, or change 'cursor'."
                )
                continue
            if sync.mode == "append":
                from ..append import cursor_kind

                cursor_kind(sync, schema.field(str(sync.cursor)).type)
        except RudderSyncError as exc:
            report.problem(_model_problem(sync, exc))
            continue
        count = len(sync.required_columns)
        report.ok(f"sync '{sync.name}': the model returns the {count} columns the sync names")
    for sync in project.syncs.values():
        if sync.trigger is None:
            continue
        sql = f"select * from ({statement_body(sync.trigger.sql)}) as __rs_check limit 0"
        try:
            with warehouse.read_model(sql) as reader:
                reader.read_all()
        except RudderSyncError as exc:
            report.problem(_model_problem(sync, exc, "key 'trigger.sql'"))
            continue
        report.ok(f"sync '{sync.name}': the trigger's query runs")


# Engines whose catalog answers "may this user create the state schema, or use it?" without
# writing anything (PostgreSQL's privilege functions; Redshift has the same).
_RIGHTS_ENGINES = ("postgres", "redshift")


def check_state_rights(warehouse: Any, schema: str, report: Report) -> None:
    """`state_schema`: the rights a run needs (create the schema, or use and create in it, and
    temporary tables), read from the catalog; the GRANT statements when one is missing."""
    from ..jsonvalues import quote_literal
    from ..warehouse_state.postgres_store import grants

    sql = f"""
        select current_user as rs_user, current_database() as rs_database,
               has_database_privilege(current_database(), 'CREATE') as create_schema,
               has_database_privilege(current_database(), 'TEMP') as temporary,
               (select bool_and(has_schema_privilege(n.oid, 'USAGE')
                                and has_schema_privilege(n.oid, 'CREATE'))
                from pg_namespace n where n.nspname = {quote_literal(schema)}) as use_schema
    """
    try:
        with warehouse.read_model(sql) as reader:
            row = reader.read_all().to_pylist()[0]
    except RudderSyncError as exc:
        report.problem(f"warehouse: could not read the rights on state_schema '{schema}': {exc}")
        return
    user, database = str(row["rs_user"]), str(row["rs_database"])
    exists = row["use_schema"] is not None
    missing = []
    if exists and not row["use_schema"]:
        missing.append(f"USAGE and CREATE on schema '{schema}'")
    if not exists and not row["create_schema"]:
        missing.append(f"CREATE on database '{database}' (schema '{schema}' does not exist yet)")
    if not row["temporary"]:
        missing.append(f"TEMP on database '{database}'")
    if missing:
        report.problem(
            f"warehouse: user '{user}' lacks {' and '.join(missing)}, which a sync's state in "
            f"state_schema '{schema}' needs. Fix: {grants(schema, user, database)}"
            + (f"; GRANT TEMP ON DATABASE {database} TO {user};" if not row["temporary"] else "")
        )
        return
    where = f"schema '{schema}'" if exists else f"a new schema '{schema}'"
    report.ok(f"warehouse: user '{user}' may keep the syncs' state in {where}")


def _model_problem(sync: SyncConfig, exc: RudderSyncError, what: str = "the model") -> str:
    """The sync's name first, and a fix where the driver's words have none (DuckDB's)."""
    text = str(exc).rstrip()
    if not text.startswith(f"sync '{sync.name}'"):
        text = f"sync '{sync.name}': {what} failed: {text}"
    if "Fix:" not in text:
        text += (
            f" Fix: correct {what.removeprefix('key ')} (a SELECT the warehouse runs, read-only)."
        )
    return text


def model_schema(warehouse: Any, sync: SyncConfig) -> pa.Schema:
    """The model's columns and their types from a LIMIT 0 query (a partitioned one over its
    first window)."""
    from ..warehouses.sql import statement_body

    params = None
    if sync.partitions is not None:
        from ..partitions import partitions_definition

        partitions = partitions_definition(sync.partitions)
        first = partitions.time_window_for_partition_key(partitions.get_first_partition_key())
        params = {"partition_start": first.start, "partition_end": first.end}
    sql = f"select * from ({statement_body(sync.model)}) as __rs_check limit 0"
    with warehouse.read_model(sql, params) as reader:
        return reader.schema


def probe_destination(
    destination: DestinationConfig, delivery: DeliveryConfig, report: Report
) -> None:
    """POST an empty batch: the gateway checks the write key first (401 / 404 disabled), then
    refuses the empty batch with 400. No event is sent."""
    from ..rudderstack import batch_url

    where = _label(destination)
    url_env, key_env = destination.url_env, destination.write_key.env
    url = os.environ.get(url_env, "") if url_env else str(destination.data_plane_url)
    if not url.strip():
        return  # a dry run: nothing to reach
    endpoint = batch_url(url, delivery.allow_insecure_http)
    url_name = url_env or "its data_plane_url"
    key = os.environ.get(key_env, "")
    token = base64.b64encode(f"{key}:".encode()).decode("ascii")
    try:
        response = httpx.post(
            endpoint,
            content=_EMPTY_BATCH,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
            timeout=min(delivery.request_timeout_seconds, _PROBE_TIMEOUT_SECONDS),
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        report.problem(
            _redact(
                f"{where}: cannot reach the data plane at {endpoint}: {type(exc).__name__}: {exc}."
                f" Fix: check {url_name} (scheme, host and port) and that this machine may reach "
                "it; unset it for a dry run.",
                key,
                token,
            )
        )
        return
    status, body = response.status_code, " ".join(response.text.split())[:200]
    if status == 400 or status == 200:  # past the key check: "empty batch payload"
        report.ok(f"{where}: {endpoint} accepts the write key in {key_env} (no event sent)")
    elif status == 401:
        report.problem(
            f"{where}: the data plane at {endpoint} rejected the write key in {key_env} (401 "
            f"{body}). Fix: set {key_env} to the write key of the RudderStack source this data "
            "plane serves."
        )
    elif status == 404 and "disabled" in body:
        report.problem(
            f"{where}: the RudderStack source of the write key in {key_env} is disabled (404 "
            f"{body}). Fix: enable the source in RudderStack, or use another source's key."
        )
    else:
        report.problem(
            _redact(
                f"{where}: {endpoint} answered {status} {body}, not like a RudderStack data "
                f"plane. Fix: check {url_name}: the data plane's base URL, without a path.",
                key,
                token,
            )
        )


def _redact(text: str, *secrets: str) -> str:
    from ..warehouses.base import redact

    return redact(text, secrets)
