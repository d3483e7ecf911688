"""Syncs on dbt models, by name: the relation from dbt's manifest, the dbt asset as upstream.

- Load time (`config.parse_config`): the top-level `dbt:` key names the manifest; a sync's
  `model: {dbt: customers}` or `{{ ref('customers') }}` inside its SQL resolves to the model's
  relation (database, schema, alias), quoted as dbt quotes it, in the warehouse's dialect
  (sqlglot). An unknown, disabled or ephemeral model fails here, naming the model and the
  manifest. The manifest is plain JSON: reading it needs neither dbt-core nor dagster-dbt, but a
  project with a dbt model needs dagster-dbt (the `dbt` extra) for the asset keys below.
- Definitions (`bind_dbt`): the model's asset key and its blocking tests (asset checks), named by
  dagster-dbt's translator (the default one, or the user's), become the sync snapshot's upstream.
- Run time (`check_dbt_upstream`, first thing in the snapshot step): each relation must exist
  (a stale manifest fails with the fix), and with `require_checks` the model's blocking dbt tests
  must have passed on its latest materialization in this Dagster instance.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from dagster import AssetCheckKey, AssetKey, DagsterInstance, Failure
from pydantic import BaseModel, ConfigDict

from .errors import ConfigError, WarehouseError
from .warehouses.settings import DuckDBSettings, WarehouseSettings

if TYPE_CHECKING:
    from dagster_dbt import DagsterDbtTranslator

    from .warehouses import WarehouseResource

INSTALL = "pip install 'rudder_sync[dbt]'"
DBT_KEYS = ("project_dir", "manifest")
# dbt resources that `ref()` reaches and that are relations in the warehouse (not ephemeral).
REF_TYPES = ("model", "seed", "snapshot")
# `{{ ref('name') }}`, `{{ ref('package', 'name') }}`; optionally `v=`/`version=` a version.
_REF = re.compile(
    r"\{\{-?\s*ref\(\s*(?P<args>(?:'[^']*'|\"[^\"]*\")(?:\s*,\s*(?:'[^']*'|\"[^\"]*\"))?)"
    r"(?:\s*,\s*(?:v|version)\s*=\s*(?P<version>'[^']*'|\"[^\"]*\"|[0-9.]+))?\s*\)\s*-?\}\}"
)
_STRING = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_JINJA = re.compile(r"\{\{|\{%")
# What may hold `{{` without being Jinja: SQL string literals and comments.
_LITERALS = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.DOTALL)


class DbtConfig(BaseModel):
    """The top-level `dbt:` key: where the project's manifest is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: Path
    project_dir: Path | None = None


@dataclass(frozen=True)
class DbtModel:
    """One dbt model (or seed, snapshot) a sync reads, as the manifest names it."""

    unique_id: str
    name: str
    relation: str  # quoted for the warehouse's dialect
    manifest: Path


@dataclass(frozen=True)
class DbtUpstream:
    """A dbt model's Dagster asset and its blocking tests (check key, test name)."""

    model: DbtModel
    asset_key: AssetKey
    blocking_checks: tuple[AssetCheckKey, ...]
    tests: tuple[str, ...] = ()  # the checks' dbt unique IDs, in the same order


def parse_dbt(raw: Any, where: str, base: Path) -> DbtConfig | None:
    """The `dbt:` key: `{project_dir: ../analytics}` (its target/manifest.json) or
    `{manifest: path/to/manifest.json}`, relative to the YAML file's folder."""
    if raw is None:
        return None
    example = "'dbt: {project_dir: ../analytics}' or 'dbt: {manifest: target/manifest.json}'"
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            f"{where}: key 'dbt' must be a mapping with 'project_dir' or 'manifest'. "
            f"Fix: e.g. {example}."
        )
    for key, value in raw.items():
        if key not in DBT_KEYS:
            close = difflib.get_close_matches(str(key), DBT_KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "allowed: manifest, project_dir"
            raise ConfigError(f"{where}: dbt: unknown key '{key}'. Fix: remove it ({hint}).")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: key 'dbt.{key}' must be a path. Fix: e.g. {example}.")

    def path(value: str) -> Path:
        given = Path(value).expanduser()
        return given if given.is_absolute() else base / given

    project_dir = path(raw["project_dir"]) if "project_dir" in raw else None
    if "manifest" in raw:
        manifest = path(raw["manifest"])
    else:
        assert project_dir is not None  # one of the two keys is there
        manifest = project_dir / "target" / "manifest.json"
    return DbtConfig(manifest=manifest, project_dir=project_dir)


def uses_dbt(model: Any) -> bool:
    """Whether a sync's `model` value names a dbt model: `{dbt: name}` or `{{ ref(...) }}` (any
    Jinja, so that what is not a ref gets its own message)."""
    return isinstance(model, Mapping) or (isinstance(model, str) and _jinja_at(model) is not None)


def _jinja_at(sql: str) -> re.Match[str] | None:
    """The first `{{` or `{%` outside string literals and comments."""
    return _JINJA.search(_LITERALS.sub(lambda m: " " * len(m.group(0)), sql))


def require_dagster_dbt(place: str) -> None:
    """dagster-dbt names the dbt assets; without the extra, say how to install it. (Found, not
    imported: importing it loads dbt-core, which only the definitions need.)"""
    if importlib.util.find_spec("dagster_dbt") is None:
        raise ConfigError(
            f"{place} names a dbt model, which needs dagster-dbt (not installed). Fix: {INSTALL}."
        )


def resolve_model(
    place: str, model: Any, dbt: DbtConfig | None, warehouse: WarehouseSettings
) -> tuple[str, tuple[DbtModel, ...]]:
    """The model's SQL with every dbt model replaced by its relation, and those models.

    `place` starts each message: the sync and its key, e.g. "sync 'users': key 'trigger.sql'"."""
    if isinstance(model, str) and not _REF.search(model):
        _refuse_jinja(place, model)
    if dbt is None:
        raise ConfigError(
            f"{place} names a dbt model, but the config has no 'dbt' section. "
            "Fix: add 'dbt: {project_dir: <your dbt project>}' (or 'dbt: {manifest: <path>}') "
            "at the top level."
        )
    manifest = load_manifest(dbt)
    if isinstance(model, Mapping):
        name = model.get("dbt")
        if set(model) != {"dbt"} or not isinstance(name, str) or not name.strip():
            raise ConfigError(
                f"{place} must be a SELECT query or {{dbt: <model name>}} "
                f"(got {dict(model)!r}). Fix: e.g. 'model: {{dbt: customers}}'."
            )
        found = manifest.find(place, name.strip(), None, None, warehouse)
        return f"select * from {found.relation}", (found,)
    models: dict[str, DbtModel] = {}

    def replace(match: re.Match[str]) -> str:
        args = [a or b for a, b in _STRING.findall(match.group("args"))]
        package, name = (None, args[0]) if len(args) == 1 else (args[0], args[1])
        version = (match.group("version") or "").strip("'\"") or None
        found = manifest.find(place, name, package, version, warehouse)
        models.setdefault(found.unique_id, found)
        return found.relation

    sql = _REF.sub(replace, model)
    _refuse_jinja(place, sql)
    return sql, tuple(models.values())


def _refuse_jinja(place: str, sql: str) -> None:
    """Jinja other than `{{ ref(...) }}` is not rendered: say so, rather than a parse error."""
    leftover = _jinja_at(sql)
    if leftover:
        snippet = sql[leftover.start() : leftover.start() + 40].split("\n")[0]
        raise ConfigError(
            f"{place} has Jinja that rudder_sync does not render ({snippet!r}). "
            "Fix: only {{ ref('model') }} and {{ ref('package', 'model') }} are resolved; "
            "write the rest as plain SQL."
        )


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.json: its nodes, by what `ref()` looks up."""

    path: Path
    data: Mapping[str, Any]

    @property
    def project_name(self) -> str:
        return str(self.data.get("metadata", {}).get("project_name", ""))

    def find(
        self,
        place: str,
        name: str,
        package: str | None,
        version: str | None,
        warehouse: WarehouseSettings,
    ) -> DbtModel:
        """The node `ref(package, name, v=version)` resolves to, as a relation of the warehouse.

        Like dbt: the root project's node first, then a package's; a versioned model's latest
        version unless one is given.
        """
        shown = f"{package}.{name}" if package else name
        where = f"the manifest {self.path}"
        nodes = [n for n in self.data.get("nodes", {}).values() if _refers(n, name, package)]
        if version is not None:
            nodes = [n for n in nodes if str(n.get("version")) == version]
        elif len(nodes) > 1:
            nodes = [
                n for n in nodes if n.get("version") is None or n["version"] == n["latest_version"]
            ]
        if len(nodes) > 1:
            nodes = [n for n in nodes if n.get("package_name") == self.project_name] or nodes
        if not nodes:
            disabled = [
                n
                for entries in self.data.get("disabled", {}).values()
                for n in entries
                if _refers(n, name, package)
            ]
            if disabled:
                raise ConfigError(
                    f"{place}: dbt {disabled[0].get('resource_type', 'model')} "
                    f"'{shown}' is disabled in {where} (enabled: false), so dbt does not build "
                    "it. Fix: enable it in the dbt project and run dbt build, or sync another "
                    "model."
                )
            names = sorted(
                {
                    n["name"]
                    for n in self.data.get("nodes", {}).values()
                    if n.get("resource_type") in REF_TYPES
                }
            )
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{place}: no dbt model '{shown}' in {where}{hint}. Fix: name a "
                "model of the dbt project, or run `dbt parse` if it is new."
            )
        if len(nodes) > 1:
            packages = ", ".join(sorted(str(n.get("package_name")) for n in nodes))
            raise ConfigError(
                f"{place}: dbt model '{name}' is in several packages ({packages}) "
                f"of {where}. Fix: name the package, e.g. {{{{ ref('{nodes[0]['package_name']}', "
                f"'{name}') }}}}."
            )
        node = nodes[0]
        materialized = node.get("config", {}).get("materialized")
        if materialized == "ephemeral":
            raise ConfigError(
                f"{place}: dbt model '{shown}' is ephemeral in {where}: dbt inlines "
                "it into other models, so it is no relation to read. Fix: materialize it "
                "(view, table or incremental) and run dbt build, or sync a model that uses it."
            )
        return DbtModel(
            unique_id=node["unique_id"],
            name=node["name"],
            relation=_relation(place, node, warehouse, self.path),
            manifest=self.path,
        )


def _refers(node: Mapping[str, Any], name: str, package: str | None) -> bool:
    return (
        node.get("resource_type") in REF_TYPES
        and node.get("name") == name
        and (package is None or node.get("package_name") == package)
    )


def _relation(
    place: str, node: Mapping[str, Any], warehouse: WarehouseSettings, manifest: Path
) -> str:
    """database.schema.alias in the warehouse's dialect, each part quoted where dbt quotes it
    (its relation_name: PostgreSQL and DuckDB quote, Snowflake by default not, so that names fold
    to upper case as dbt created them)."""
    from sqlglot import exp  # here, not at import: a project without dbt never needs sqlglot

    dialect = warehouse.type
    database, schema = node.get("database"), node.get("schema")
    alias = node.get("alias") or node.get("identifier") or node["name"]
    quoted = _quoting(node.get("relation_name"), dialect)
    if isinstance(warehouse, DuckDBSettings) and database:
        # Read through the sync's own connection (or attached under another name in the state):
        # the model must live in the warehouse file's own database, named after the file.
        if database != warehouse.path.stem:
            raise ConfigError(
                f"{place}: dbt model '{node['name']}' is in the DuckDB database "
                f"'{database}' ({manifest}), but the sync's warehouse is {warehouse.path} "
                f"(database '{warehouse.path.stem}'). Fix: point 'warehouse' at the file dbt "
                "builds (the 'path' of the dbt profile)."
            )
        database = None
    table = exp.Table(
        this=exp.to_identifier(alias, quoted=quoted.get("this", True)),
        db=exp.to_identifier(schema, quoted=quoted.get("db", True)) if schema else None,
        catalog=exp.to_identifier(database, quoted=quoted.get("catalog", True))
        if database
        else None,
    )
    return table.sql(dialect=dialect)


def _quoting(relation_name: str | None, dialect: str) -> dict[str, bool]:
    """Which parts (catalog, db, this) dbt quoted in the node's relation_name; all when unknown,
    but none on Snowflake (dbt-snowflake's default)."""
    import sqlglot
    from sqlglot import exp

    default = dialect != "snowflake"
    if not relation_name:
        return {"catalog": default, "db": default, "this": default}
    try:
        parsed = exp.to_table(relation_name, dialect=dialect)
    except sqlglot.errors.ParseError:
        return {"catalog": default, "db": default, "this": default}
    flags: dict[str, bool] = {}
    for part in ("catalog", "db", "this"):
        ident = parsed.args.get(part)
        flags[part] = bool(ident.quoted) if isinstance(ident, exp.Identifier) else default
    return flags


def load_manifest(dbt: DbtConfig) -> Manifest:
    """The manifest, parsed once per file version (path, modification time, size)."""
    try:
        stat = dbt.manifest.stat()
    except OSError:
        where = f" --project-dir {dbt.project_dir}" if dbt.project_dir else ""
        raise ConfigError(
            f"dbt manifest {dbt.manifest} does not exist. Fix: run `dbt parse{where}` (it "
            "writes target/manifest.json), or set 'dbt: {manifest: <path>}' to the manifest."
        ) from None
    return _parse_manifest(dbt.manifest, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _parse_manifest(path: Path, mtime_ns: int, size: int) -> Manifest:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(
            f"dbt manifest {path} cannot be read ({exc}). Fix: run `dbt parse` to write it again."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        raise ConfigError(
            f"dbt manifest {path} has no 'nodes': not a dbt manifest.json. Fix: point 'dbt' at "
            "the project's target/manifest.json."
        )
    return Manifest(path=path, data=data)


def bind_dbt(
    models: Sequence[DbtModel], translator: DagsterDbtTranslator | None = None
) -> tuple[DbtUpstream, ...]:
    """The dbt models' asset keys and blocking checks, as dagster-dbt names them with
    `translator` (default: `DagsterDbtTranslator()`, as `@dbt_assets` uses)."""
    if not models:
        return ()
    from dagster_dbt import DagsterDbtTranslator

    translator = translator or DagsterDbtTranslator()
    upstream = []
    for model in models:
        manifest = _parse_manifest(model.manifest, *_version(model.manifest)).data
        spec = translator.get_asset_spec(manifest, model.unique_id, None)
        checks, tests = [], []
        for child in manifest.get("child_map", {}).get(model.unique_id, []):
            if not child.startswith("test."):
                continue
            check = translator.get_asset_check_spec(spec, manifest, child, None)
            if check is not None and check.blocking:
                checks.append(check.key)
                tests.append(child)
        upstream.append(DbtUpstream(model, spec.key, tuple(checks), tuple(tests)))
    return tuple(upstream)


def _version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def check_relations(
    sync_name: str, models: Sequence[DbtModel], warehouse: WarehouseResource
) -> None:
    """Each dbt relation exists in the warehouse; else the manifest is stale (or dbt never built
    the model) and the run fails before reading anything, with the fix."""
    for model in models:
        try:
            with warehouse.read_model(f"select * from {model.relation} where 1 = 0") as reader:
                reader.read_all()
        except WarehouseError as exc:
            detail = " ".join(str(exc).split()).rstrip(".")  # one line, whatever the driver says
            raise Failure(
                f"sync '{sync_name}': dbt model '{model.name}' ({model.relation}, from "
                f"{model.manifest}) cannot be read in the warehouse ({detail}): the manifest may "
                f"be stale or the model not built. Fix: run `dbt build --select {model.name}` "
                "(or `dbt parse` after renaming or moving it) and reload the definitions."
            ) from None


def check_dbt_tests(
    sync_name: str, upstream: Sequence[DbtUpstream], instance: DagsterInstance
) -> None:
    """`require_checks`: every blocking dbt test of each model passed on the model's latest
    materialization, as recorded in this Dagster instance (dbt run through Dagster), else in
    dbt's run_results.json (dbt run from a shell); else a Failure naming the test."""
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus as Status,
    )

    for item in upstream:
        name = item.model.name
        if not item.blocking_checks:
            continue
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            list(item.blocking_checks)
        )
        built = instance.get_latest_materialization_event(item.asset_key)
        results = _run_results(item.model.manifest)
        for key, unique_id in zip(item.blocking_checks, item.tests, strict=True):
            record = latest.get(key)
            test = f"dbt test '{key.name}' of model '{name}'"
            if record is None or record.event is None:
                # dbt run outside Dagster: the last dbt invocation's results, beside the manifest.
                _check_run_result(sync_name, test, results.get(unique_id), item.model.manifest)
                continue
            fix = (
                f"Fix: run the dbt assets with their tests (dbt build) in this Dagster instance "
                f"(DAGSTER_HOME), or remove 'require_checks' from sync '{sync_name}'."
            )
            if record.status == Status.PLANNED:
                raise Failure(
                    f"sync '{sync_name}': require_checks: {test} is still running (run "
                    f"{record.run_id}); nothing is sent. Fix: run the sync after it finishes."
                )
            if record.status != Status.SUCCEEDED:
                raise Failure(
                    f"sync '{sync_name}': require_checks: {test} failed (run {record.run_id}), "
                    "so nothing is sent. Fix: correct the data or the model and run dbt build "
                    "again; the sync sends once the test passes."
                )
            if built is not None and record.event.timestamp < built.timestamp:
                raise Failure(
                    f"sync '{sync_name}': require_checks: {test} last ran before the model's "
                    f"latest materialization (run {built.run_id}), which it has not tested; "
                    f"nothing is sent. {fix}"
                )


def _run_results(manifest: Path) -> dict[str, Mapping[str, Any]]:
    """The results of dbt's last invocation (`target/run_results.json`, beside the manifest), by
    node unique ID; none when dbt has not written the file."""
    path = manifest.parent / "run_results.json"
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    generated = str(data.get("metadata", {}).get("generated_at", "?"))
    return {
        str(r.get("unique_id")): {**r, "generated_at": generated}
        for r in data.get("results", [])
        if isinstance(r, Mapping)
    }


def _check_run_result(
    sync_name: str, test: str, result: Mapping[str, Any] | None, manifest: Path
) -> None:
    """A test's result in run_results.json: `pass` (or `warn`) lets the sync send; anything
    else, or no result in dbt's last invocation, is a Failure naming the test."""
    results = manifest.parent / "run_results.json"
    if result is None:
        raise Failure(
            f"sync '{sync_name}': require_checks: {test} has no result in this Dagster instance "
            f"nor in dbt's last invocation ({results}), so nothing is sent. Fix: run dbt build "
            "(or dbt test) after the model's last build, through Dagster's dbt assets or from a "
            f"shell, or remove 'require_checks' from sync '{sync_name}'."
        )
    status = str(result.get("status"))
    if status not in ("pass", "warn"):
        raise Failure(
            f"sync '{sync_name}': require_checks: {test} did not pass in dbt's last invocation "
            f"(status '{status}' in {results}, generated at {result['generated_at']}), so "
            "nothing is sent. Fix: "
            "correct the data or the model and run dbt build again; the sync sends once the "
            "test passes."
        )


def check_dbt_upstream(
    sync_name: str,
    models: Sequence[DbtModel],
    upstream: Sequence[DbtUpstream],
    require_checks: bool,
    instance: DagsterInstance,
    warehouse: WarehouseResource,
) -> None:
    """Before a snapshot: the dbt relations exist, and (require_checks) their tests passed."""
    if require_checks:
        check_dbt_tests(sync_name, upstream, instance)
    check_relations(sync_name, models, warehouse)
