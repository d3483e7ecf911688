"""Syncs on dbt models, with real dbt: the project in dbt_project/ built by dbt-duckdb (and by
dbt-postgres on the test server), the sync delivering to the test gateway, dagster-dbt's asset
keys and checks, and the load-time errors.

dbt runs as a subprocess (`dbt build`/`dbt parse`) or through dagster-dbt's DbtCliResource; it
never reaches the network (no packages.yml, no usage stats).
"""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    evaluate_automation_conditions,
)

from rudder_sync.config import ConfigError, ProjectConfig, load_config
from rudder_sync.dbt import DbtConfig, Manifest
from rudder_sync.definitions import build_definitions
from rudder_sync.warehouses.settings import (
    DuckDBSettings,
    PostgresSettings,
    WarehouseSettings,
)

from .gateway import TestGateway
from .helpers import DAGSTER, WRITE_KEY, cli_env, failure_text, rudderstack_for
from .postgres import SYNC_URL_ENV_VAR, PgDatabase

DBT = str(Path(sys.executable).with_name("dbt"))  # the dbt CLI of this venv
SOURCE = Path(__file__).parent / "dbt_project"
SEED = "id,email,plan\n1,ada@example.com,pro\n2,grace@example.com,free\n3,linus@example.com,team\n"
CHANGED_SEED = (  # grace upgrades, linus leaves, margaret arrives
    "id,email,plan\n1,ada@example.com,pro\n2,grace@example.com,pro\n4,margaret@example.com,free\n"
)
BAD_PLAN_SEED = SEED + "5,alan@example.com,platinum\n"  # fails accepted_values on plan
PLAN_TEST = "accepted_values_customers_plan__free__pro__team"
TRAITS: dict[str, Any] = {
    "model": {"dbt": "customers"},
    "primary_key": "id",
    "type": "identify",
    "user_id": "user_id",
    "mapping": {"email": "email", "plan": "plan"},
}


@dataclass
class DbtShop:
    """A copy of dbt_project/ and a sync project (rudder_sync.yaml) beside it."""

    root: Path  # holds analytics/ (the dbt project), rudder_sync.yaml, state/, the DuckDB file
    env: dict[str, str]
    target: str = "duckdb"

    @property
    def project_dir(self) -> Path:
        return self.root / "analytics"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def config_path(self) -> Path:
        return self.root / "rudder_sync.yaml"

    def dbt(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`dbt <command>` of the project, as a user runs it."""
        done = subprocess.run(
            [DBT, command, "--project-dir", str(self.project_dir)]
            + ["--profiles-dir", str(self.project_dir), "--target", self.target],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        if check:
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        return done

    def seed(self, text: str) -> None:
        (self.project_dir / "seeds" / "raw_customers.csv").write_text(text)

    def write(self, syncs: Mapping[str, Any], warehouse: Any = "warehouse.duckdb") -> None:
        document = {
            "warehouse": warehouse,
            "state": "state",
            "dbt": {"project_dir": "analytics"},
            "syncs": dict(syncs),
        }
        self.config_path.write_text(yaml.safe_dump(document, sort_keys=False))

    def config(self) -> ProjectConfig:
        return load_config(self.config_path)


def make_shop(root: Path, target: str = "duckdb", **env: str) -> DbtShop:
    shutil.copytree(SOURCE, root / "analytics", ignore=shutil.ignore_patterns("target", "logs"))
    environment = {
        **cli_env(),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "RUDDER_SYNC_DBT_DUCKDB": str(root / "warehouse.duckdb"),
        **env,
    }
    shop = DbtShop(root=root, env=environment, target=target)
    shop.seed(SEED)
    return shop


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> DbtShop:
    """One parsed project (a manifest, nothing built) for the load-time tests."""
    shop = make_shop(tmp_path_factory.mktemp("parsed"))
    shop.dbt("parse")
    return shop


def load_error(shop: DbtShop, sync: Mapping[str, Any], **top: Any) -> str:
    shop.write({"traits": sync})
    if top:
        document = yaml.safe_load(shop.config_path.read_text())
        document.update(top)
        shop.config_path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as raised:
        shop.config()
    message = str(raised.value)
    assert "\n" not in message
    return message


def run_job(
    shop: DbtShop,
    gateway: TestGateway,
    instance: DagsterInstance,
    extra: Definitions | None = None,
    name: str = "traits",
) -> ExecuteInProcessResult:
    """The sync's job, from the definitions built as `dagster dev` builds them."""
    defs = build_definitions(shop.config(), rudderstack_for(gateway.url))
    if extra is not None:
        defs = Definitions.merge(defs, extra)
    return defs.resolve_job_def(name).execute_in_process(instance=instance, raise_on_error=False)


def by_user(events: list[dict[str, Any]]) -> dict[str, str]:
    return {e["userId"]: e["context"]["traits"]["plan"] for e in events}


# -- load time ------------------------------------------------------------------------------------


def test_a_dbt_model_becomes_its_relation(parsed: DbtShop) -> None:
    parsed.write(
        {
            "traits": TRAITS,
            "paying": dict(
                TRAITS,
                model="select id, user_id, email, plan from {{ ref('rudder_sync_shop', "
                "'customers') }} where plan <> 'free'",
            ),
            "raw": dict(
                TRAITS, model="select *, 'u' || id as user_id from {{ref(\"raw_customers\")}}"
            ),
        }
    )
    syncs = parsed.config().syncs
    assert syncs["traits"].model == 'select * from "main"."customers"'
    assert syncs["paying"].model == (
        'select id, user_id, email, plan from "main"."customers" where plan <> \'free\''
    )
    assert syncs["raw"].model == 'select *, \'u\' || id as user_id from "main"."raw_customers"'
    assert [m.unique_id for m in syncs["traits"].dbt_models] == ["model.rudder_sync_shop.customers"]


def test_a_triggers_query_resolves_ref_as_the_model_does(parsed: DbtShop) -> None:
    trigger = {"sql": "select max(id) from {{ ref('customers') }}", "every_seconds": 30}
    parsed.write({"traits": dict(TRAITS, trigger=trigger)})
    resolved = parsed.config().syncs["traits"].trigger
    assert resolved is not None and resolved.sql == 'select max(id) from "main"."customers"'
    assert resolved.every_seconds == 30
    typo = {"sql": "select max(id) from {{ ref('custmers') }}"}
    message = load_error(parsed, dict(TRAITS, trigger=typo))
    assert message.startswith("sync 'traits': key 'trigger.sql': no dbt model 'custmers'")
    assert "Fix:" in message


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"dbt": "custmers"},
            "no dbt model 'custmers' in the manifest {m} (did you mean 'customers'?)",
        ),
        ({"dbt": "old_customers"}, "dbt model 'old_customers' is disabled in the manifest {m}"),
        ({"dbt": "customer_plans"}, "dbt model 'customer_plans' is ephemeral in the manifest {m}"),
        ("select * from {{ ref('other_pkg', 'customers') }}", "no dbt model 'other_pkg.customers'"),
        ("select * from {{ source('shop', 'raw') }}", "has Jinja that rudder_sync does not render"),
        ({"dbt": "customers", "x": 1}, "key 'model' must be a SELECT query or {dbt: <model name>}"),
    ],
)
def test_models_that_cannot_be_read_fail_at_load_time(
    parsed: DbtShop, model: Any, expected: str
) -> None:
    manifest = parsed.project_dir / "target" / "manifest.json"
    message = load_error(parsed, dict(TRAITS, model=model))
    assert message.startswith("sync 'traits': key 'model'")
    assert expected.replace("{m}", str(manifest)) in message
    assert "Fix:" in message


def test_config_mistakes_around_dbt(parsed: DbtShop, monkeypatch: pytest.MonkeyPatch) -> None:
    no_dbt = load_error(parsed, TRAITS, dbt=None)
    assert "the config has no 'dbt' section" in no_dbt
    missing = load_error(parsed, TRAITS, dbt={"project_dir": "nowhere"})
    assert "manifest.json does not exist" in missing and "dbt parse" in missing
    checks = load_error(parsed, dict(TRAITS, model="select 1 as id", require_checks=True))
    assert "key 'require_checks'" in checks
    typo = load_error(parsed, TRAITS, dbt={"project_dri": "analytics"})
    assert "did you mean 'project_dir'?" in typo
    # Braces in a string literal or a comment are SQL, not Jinja: no dbt needed.
    literal = "select 1 as id, 'u1' as user_id, '{{ name }}' as email, 'x' as plan -- {{ x }}"
    parsed.write({"traits": dict(TRAITS, model=literal)})
    assert parsed.config().syncs["traits"].model == literal
    assert "did you mean 'project_dir'?" in typo
    # Without the extra (dagster_dbt not importable), the pip command.
    monkeypatch.setitem(sys.modules, "dagster_dbt", None)
    assert "pip install 'rudder_sync[dbt]'" in load_error(parsed, TRAITS)


def test_asset_key_and_checks_are_dagster_dbts(parsed: DbtShop) -> None:
    from dagster_dbt import DagsterDbtTranslator, dbt_assets

    parsed.write({"traits": TRAITS})
    manifest = parsed.project_dir / "target" / "manifest.json"

    @dbt_assets(manifest=manifest)
    def shop_models(context):  # type: ignore[no-untyped-def]  # dagster reads the signature
        yield from ()

    defs = build_definitions(parsed.config(), rudderstack_for(None))
    snapshot = defs.resolve_asset_graph().get(AssetKey(["traits", "snapshot"]))
    customers = AssetKey(["customers"])
    assert customers in shop_models.keys
    assert set(snapshot.parent_keys) == {customers}
    blocking = {key.name for key in shop_models.check_keys if key.asset_key == customers}
    assert {"unique_customers_id", PLAN_TEST} <= blocking

    class Prefixed(DagsterDbtTranslator):
        def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
            return super().get_asset_key(dbt_resource_props).with_prefix("analytics")

    custom = build_definitions(
        parsed.config(), rudderstack_for(None), dbt_translator=Prefixed()
    ).resolve_asset_graph()
    assert set(custom.get(AssetKey(["traits", "snapshot"])).parent_keys) == {
        AssetKey(["analytics", "customers"])
    }


def test_the_component_takes_dbt_its_schema_and_a_translator(parsed: DbtShop) -> None:
    import jsonschema
    from dagster import ComponentTree
    from dagster_dbt import DagsterDbtTranslator

    from rudder_sync import RudderstackSyncComponent

    class Prefixed(DagsterDbtTranslator):
        def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
            return super().get_asset_key(dbt_resource_props).with_prefix("analytics")

    class MySyncs(RudderstackSyncComponent):
        def get_dbt_translator(self) -> DagsterDbtTranslator:
            return Prefixed()

    attributes = {
        "warehouse": str(parsed.warehouse),
        "state": str(parsed.root / "state"),
        "dbt": {"project_dir": str(parsed.project_dir)},
        "syncs": {"traits": dict(TRAITS, require_checks=True)},
    }
    schema = RudderstackSyncComponent.model().model_json_schema()
    jsonschema.validate(attributes, schema)  # `dg check yaml` accepts what the YAML path does
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(attributes, dbt={"project_dri": "x"}), schema)
    context = ComponentTree.for_test().load_context
    plain = RudderstackSyncComponent.from_attributes_dict(attributes=attributes)
    assert plain.project(parsed.root).syncs["traits"].model == 'select * from "main"."customers"'
    graph = MySyncs.from_attributes_dict(attributes=attributes).build_defs(context)
    snapshot = graph.resolve_asset_graph().get(AssetKey(["traits", "snapshot"]))
    assert set(snapshot.parent_keys) == {AssetKey(["analytics", "customers"])}


@pytest.mark.parametrize(
    ("settings", "relation_name", "expected"),
    [
        (
            PostgresSettings(url="postgresql://h/db"),
            '"db"."analytics"."customers"',
            '"db"."analytics"."customers"',
        ),
        (
            WarehouseSettings(type="redshift"),
            '"dev"."analytics"."customers"',
            '"dev"."analytics"."customers"',
        ),
        (
            WarehouseSettings(type="snowflake"),
            "ANALYTICS.marts.customers",
            "ANALYTICS.marts.customers",
        ),
        (
            WarehouseSettings(type="bigquery"),
            "`my-project`.`marts`.`customers`",
            "`my-project`.`marts`.`customers`",
        ),
        (
            WarehouseSettings(type="databricks"),
            "`main`.`marts`.`customers`",
            "`main`.`marts`.`customers`",
        ),
        (
            DuckDBSettings(path=Path("/x/warehouse.duckdb")),
            '"warehouse"."main"."customers"',
            '"main"."customers"',
        ),
    ],
)
def test_relations_are_quoted_as_dbt_quotes_them_in_each_dialect(
    settings: WarehouseSettings, relation_name: str, expected: str
) -> None:
    """The manifest's database/schema/alias, each part quoted where dbt's relation_name does."""
    parts = [p.strip('"`') for p in relation_name.split(".")]
    node = {
        "unique_id": "model.shop.customers",
        "resource_type": "model",
        "name": "customers",
        "package_name": "shop",
        "database": parts[0],
        "schema": parts[1],
        "alias": parts[2],
        "relation_name": relation_name,
        "config": {"materialized": "table"},
    }
    manifest = Manifest(Path("manifest.json"), {"nodes": {node["unique_id"]: node}})
    found = manifest.find("sync 'x'", "customers", None, None, settings)
    assert found.relation == expected


def test_duckdb_model_in_another_database_fails_at_load_time(parsed: DbtShop) -> None:
    message = load_error(parsed, TRAITS, warehouse="elsewhere.duckdb")
    assert "is in the DuckDB database 'warehouse'" in message
    assert "point 'warehouse' at the file dbt builds" in message


def test_dbt_config_paths_resolve_against_the_yaml(tmp_path: Path) -> None:
    assert DbtConfig(manifest=Path("m.json")).project_dir is None
    from rudder_sync.dbt import parse_dbt

    parsed = parse_dbt({"project_dir": "../analytics"}, "x", tmp_path)
    assert parsed is not None and parsed.manifest == tmp_path / "../analytics/target/manifest.json"
    manifest = parse_dbt({"manifest": "m/manifest.json"}, "x", tmp_path)
    assert manifest is not None and manifest.manifest == tmp_path / "m/manifest.json"


# -- run time, with real dbt ---------------------------------------------------------------------


@pytest.mark.slow
def test_duckdb_dbt_build_then_sync_then_only_the_change(
    tmp_path: Path, gateway: TestGateway
) -> None:
    shop = make_shop(tmp_path)
    shop.dbt("build")
    shop.write({"traits": TRAITS})
    # The first run through the CLI, as a user or a schedule runs it.
    env = cli_env(
        RUDDER_SYNC_CONFIG=str(shop.config_path),
        RUDDERSTACK_DATA_PLANE_URL=gateway.url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
    )
    done = subprocess.run(
        [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", "traits"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert by_user(gateway.events) == {"u1": "pro", "u2": "free", "u3": "team"}

    shop.seed(CHANGED_SEED)
    shop.dbt("build")
    before = len(gateway.events)
    result = run_job(shop, gateway, DagsterInstance.ephemeral())
    assert result.success, failure_text(result)
    assert by_user(gateway.events[before:]) == {"u2": "pro", "u4": "free"}  # identify: no removes


@pytest.mark.slow
def test_stale_manifest_fails_with_the_fix(tmp_path: Path, gateway: TestGateway) -> None:
    shop = make_shop(tmp_path)
    shop.dbt("build")
    shop.write({"traits": TRAITS})
    with duckdb.connect(str(shop.warehouse)) as conn:
        conn.execute("drop view main.customers")  # the manifest still names it
    result = run_job(shop, gateway, DagsterInstance.ephemeral())
    assert not result.success
    message = failure_text(result)
    assert "\n" not in message.strip()  # one line, though DuckDB's message has several
    assert 'dbt model \'customers\' ("main"."customers"' in message
    assert "Table with name customers does not exist" in message
    assert "run `dbt build --select customers`" in message and "dbt parse" in message
    assert gateway.events == []


@pytest.mark.slow
def test_postgres_dbt_build_then_sync_then_only_the_change(
    tmp_path: Path, pg: PgDatabase, gateway: TestGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = urlsplit(pg.url)
    shop = make_shop(
        tmp_path,
        target="postgres",
        RUDDER_SYNC_DBT_PG_HOST=url.hostname or "127.0.0.1",
        RUDDER_SYNC_DBT_PG_PORT=str(url.port or 5432),
        RUDDER_SYNC_DBT_PG_USER=url.username or os.environ.get("USER", "postgres"),
        RUDDER_SYNC_DBT_PG_PASSWORD=url.password or "",
        RUDDER_SYNC_DBT_PG_DBNAME=pg.name,
    )
    shop.dbt("build")
    monkeypatch.setenv(SYNC_URL_ENV_VAR, pg.url)
    shop.write({"traits": TRAITS}, warehouse={"type": "postgres", "url": {"env": SYNC_URL_ENV_VAR}})
    assert shop.config().syncs["traits"].model == (
        f'select * from "{pg.name}"."analytics"."customers"'
    )
    instance = DagsterInstance.ephemeral()
    assert run_job(shop, gateway, instance).success
    assert by_user(gateway.events) == {"u1": "pro", "u2": "free", "u3": "team"}

    shop.seed(CHANGED_SEED)
    shop.dbt("build")
    before = len(gateway.events)
    result = run_job(shop, gateway, instance)
    assert result.success, failure_text(result)
    assert by_user(gateway.events[before:]) == {"u2": "pro", "u4": "free"}


@pytest.fixture
def shop_with_dagster_dbt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DbtShop, Definitions]]:
    """The dbt project as dagster-dbt assets (with their checks), run by DbtCliResource."""
    from dagster_dbt import DbtCliResource, dbt_assets

    shop = make_shop(tmp_path)
    shop.dbt("parse")
    for key in ("DBT_SEND_ANONYMOUS_USAGE_STATS", "RUDDER_SYNC_DBT_DUCKDB"):
        monkeypatch.setenv(key, shop.env[key])

    @dbt_assets(manifest=shop.project_dir / "target" / "manifest.json")
    def shop_models(context, dbt: DbtCliResource):  # type: ignore[no-untyped-def]
        yield from dbt.cli(["build"], context=context).stream()

    resource = DbtCliResource(
        project_dir=str(shop.project_dir),
        profiles_dir=str(shop.project_dir),
        dbt_executable=DBT,
        target="duckdb",
    )
    yield shop, Definitions(assets=[shop_models], resources={"dbt": resource})


@pytest.mark.slow
def test_require_checks_stops_delivery_when_a_dbt_test_fails(
    shop_with_dagster_dbt: tuple[DbtShop, Definitions], gateway: TestGateway
) -> None:
    shop, dbt_defs = shop_with_dagster_dbt
    shop.write({"traits": dict(TRAITS, require_checks=True)})
    instance = DagsterInstance.ephemeral()
    dbt_job = dbt_defs.resolve_implicit_global_asset_job_def()

    # dbt from a shell leaves no record in the instance: its last invocation decides
    # (target/run_results.json). A `dbt run` without tests: nothing is sent.
    test = f"dbt test '{PLAN_TEST}' of model 'customers'"
    shop.dbt("seed")
    shop.dbt("run")
    untested = run_job(shop, gateway, instance, dbt_defs)
    assert not untested.success
    assert f"{test} has no result in this Dagster instance nor in dbt's last invocation" in (
        failure_text(untested)
    )
    shop.seed(BAD_PLAN_SEED)
    assert shop.dbt("build", check=False).returncode != 0  # the blocking test fails
    failed = run_job(shop, gateway, instance, dbt_defs)
    assert not failed.success
    assert f"{test} did not pass in dbt's last invocation (status 'fail'" in failure_text(failed)
    assert gateway.events == []
    shop.seed(SEED)
    shop.dbt("build")
    passed = run_job(shop, gateway, instance, dbt_defs)
    assert passed.success, failure_text(passed)
    assert by_user(gateway.events) == {"u1": "pro", "u2": "free", "u3": "team"}

    # dbt through Dagster: the instance's check records decide.
    assert dbt_job.execute_in_process(instance=instance).success
    assert run_job(shop, gateway, instance, dbt_defs).success

    shop.seed(BAD_PLAN_SEED)
    built = dbt_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not built.success  # the blocking test failed
    before = len(gateway.events)
    stopped = run_job(shop, gateway, instance, dbt_defs)
    assert not stopped.success
    assert f"dbt test '{PLAN_TEST}' of model 'customers' failed" in failure_text(stopped)
    assert len(gateway.events) == before


@pytest.mark.slow
def test_a_dbt_rebuild_requests_the_sync_unless_its_tests_fail(
    shop_with_dagster_dbt: tuple[DbtShop, Definitions], gateway: TestGateway
) -> None:
    """The automation condition (eager, and blocking checks passed with require_checks): a dbt
    rebuild requests the sync's snapshot; a failing blocking test holds it back."""
    shop, dbt_defs = shop_with_dagster_dbt
    shop.write({"traits": dict(TRAITS, require_checks=True)})
    instance = DagsterInstance.ephemeral()
    defs = Definitions.merge(
        build_definitions(shop.config(), rudderstack_for(gateway.url)), dbt_defs
    )
    snapshot = AssetKey(["traits", "snapshot"])
    dbt_job = dbt_defs.resolve_implicit_global_asset_job_def()

    assert dbt_job.execute_in_process(instance=instance).success
    assert defs.resolve_job_def("traits").execute_in_process(instance=instance).success
    settled = evaluate_automation_conditions(defs, instance)
    assert settled.get_num_requested(snapshot) == 0  # nothing new upstream

    shop.seed(CHANGED_SEED)
    assert dbt_job.execute_in_process(instance=instance).success
    rebuilt = evaluate_automation_conditions(defs, instance, cursor=settled.cursor)
    assert rebuilt.get_num_requested(snapshot) == 1

    assert defs.resolve_job_def("traits").execute_in_process(instance=instance).success
    shop.seed(BAD_PLAN_SEED)
    assert not dbt_job.execute_in_process(instance=instance, raise_on_error=False).success
    held = evaluate_automation_conditions(defs, instance, cursor=rebuilt.cursor)
    assert held.get_num_requested(snapshot) == 0
