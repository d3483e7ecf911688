"""`python -m rudder_sync check`: every problem of a project, one line each, and --connect.

In process on real files, a real DuckDB warehouse, a real PostgreSQL server and the test gateway;
once in a subprocess, as a user types it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from rudder_sync.cli import main as cli_main
from rudder_sync.cli.check import check

from .gateway import DISABLED_WRITE_KEY, TestGateway
from .helpers import IDENTIFY_SYNC, TRACK_SYNC, WRITE_KEY, cli_env, sql, write_project
from .postgres import PgDatabase, write_pg_project
from .test_append import APPEND_SYNC, ORDERS_DDL

# Five mistakes in four places: delivery, a destination, and three syncs.
SEVERAL_ERRORS: dict[str, Any] = {
    "warehouse": "warehouse.duckdb",
    "state": "state",
    "delivery": {"max_in_flight": 999},
    "destinations": {"eu": {"data_plane_url": {"env": "RS_EU_URL"}, "write_keyy": {"env": "K"}}},
    "syncs": {
        "user_traits": dict(IDENTIFY_SYNC, mapingg={"email": "email"}),
        "user_events": dict(TRACK_SYNC, schedule="every hour"),
        "BadName": IDENTIFY_SYNC,
        "fine": IDENTIFY_SYNC,
    },
}
EXPECTED_PROBLEMS = [
    "delivery: key 'max_in_flight'",
    "destination 'eu': unknown key 'write_keyy'",
    "sync 'user_traits': unknown key 'mapingg'",
    "sync 'user_events': key 'schedule'",
    "sync 'BadName': bad sync name",
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUDDER", "RS_")) and not name.startswith("RUDDER_SYNC_TEST_"):
            monkeypatch.delenv(name)


def dry_run(config: Path) -> Path:
    """The config with `dry_run: true`: its syncs need no data plane URL."""
    document = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**document, "dry_run": True}, sort_keys=False))
    return config


def write_config(root: Path, document: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "rudder_sync.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_every_problem_is_one_line_with_its_fix(tmp_path: Path) -> None:
    report = check(write_config(tmp_path, SEVERAL_ERRORS))
    assert len(report.problems) == len(EXPECTED_PROBLEMS), report.problems
    for expected, line in zip(EXPECTED_PROBLEMS, report.problems, strict=True):
        assert expected in line
        assert "Fix:" in line and "\n" not in line


def test_main_prints_the_problems_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, SEVERAL_ERRORS)
    assert cli_main(["check", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    problems = [line for line in lines if line.startswith("problem: ")]
    assert len(problems) == len(EXPECTED_PROBLEMS)
    assert lines[-1] == f"5 problems in {path}."


def test_a_broken_warehouse_does_not_hide_the_syncs_own_errors(tmp_path: Path) -> None:
    document = {
        "warehouse": {"type": "postgress", "url": "x"},
        "syncs": {"a": dict(IDENTIFY_SYNC, typo=1), "b": IDENTIFY_SYNC},
    }
    problems = check(write_config(tmp_path, document)).problems
    assert len(problems) == 2, problems
    assert "warehouse: key 'type' is 'postgress' (did you mean 'postgres'?)" in problems[0]
    assert problems[1].startswith("sync 'a': unknown key 'typo'")


def test_unreadable_and_invalid_yaml_are_one_problem_each(tmp_path: Path) -> None:
    missing = check(tmp_path / "nope.yaml").problems
    assert len(missing) == 1 and "cannot read the sync config" in missing[0]
    broken = tmp_path / "broken.yaml"
    broken.write_text("syncs:\n  a: {model: select 1\n  b: 2\n")
    problems = check(broken).problems
    assert len(problems) == 1 and "not valid YAML" in problems[0] and "Fix:" in problems[0]


def test_a_destination_variable_problem_is_found_without_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, {"syncs": {"users": IDENTIFY_SYNC}})
    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", "http://127.0.0.1:9")
    problems = check(path).problems
    assert problems == [
        "RUDDERSTACK_DATA_PLANE_URL is set but RUDDERSTACK_WRITE_KEY is not. Fix: export the "
        "source's write key, or unset the data plane URL for a dry run."
    ]


def test_a_good_project_passes_and_says_what_it_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_project(tmp_path, {"user_traits": IDENTIFY_SYNC}, users=1)
    assert cli_main(["check", str(dry_run(project.config_path))]) == 0
    out = capsys.readouterr().out
    assert "1 sync (user_traits)" in out
    assert (
        "default destination: no data plane URL (RUDDERSTACK_DATA_PLANE_URL is not set): its "
        "syncs can only be dry runs" in out
    )
    assert out.splitlines()[-1].endswith(
        "no problems. --connect also reaches the warehouse and destinations."
    )


def test_a_sync_whose_runs_would_fail_without_a_url_is_a_problem(tmp_path: Path) -> None:
    """Without `dry_run: true`, an unset data plane URL fails a run: check says so first."""
    project = write_project(tmp_path, {"user_traits": IDENTIFY_SYNC}, users=1)
    (problem,) = check(project.config_path).problems
    assert problem.startswith(
        "sync 'user_traits': RUDDERSTACK_DATA_PLANE_URL is not set, so nothing would be sent."
    )
    assert "Fix: export RUDDERSTACK_DATA_PLANE_URL and RUDDERSTACK_WRITE_KEY" in problem


# -- --connect -----------------------------------------------------------------------------------


def test_connect_finds_a_missing_column_and_a_missing_table_in_duckdb(tmp_path: Path) -> None:
    syncs = {
        "user_traits": dict(IDENTIFY_SYNC, mapping={"email": "email", "name": "full_name"}),
        "user_events": dict(TRACK_SYNC, model="select * from customers"),
        "fine": IDENTIFY_SYNC,
    }
    project = write_project(tmp_path, syncs, users=2)
    report = check(dry_run(project.config_path), connect=True)
    assert len(report.problems) == 2, report.problems
    table, missing = report.problems  # in the YAML's order (sorted by write_project)
    assert missing.startswith(
        "sync 'user_traits': the model does not return column 'full_name' (from 'mapping.name')"
    )
    assert table.startswith("sync 'user_events': the model failed: ") and "customers" in table
    assert table.endswith("Fix: correct the model (a SELECT the warehouse runs, read-only).")
    assert any("warehouse duckdb" in line and "connected" in line for line in report.passed)
    assert "sync 'fine': the model returns the 5 columns the sync names" in report.passed


def test_connect_runs_a_triggers_query_without_reading_rows(tmp_path: Path) -> None:
    good = dict(IDENTIFY_SYNC, trigger={"sql": "select max(updated_at) from users"})
    bad = dict(IDENTIFY_SYNC, trigger={"sql": "select max(updated_at) from user_changes"})
    project = write_project(tmp_path, {"a_good": good, "b_bad": bad}, users=1)
    report = check(dry_run(project.config_path), connect=True)
    (problem,) = report.problems
    assert (
        problem.startswith("sync 'b_bad': key 'trigger.sql' failed: ") and "user_changes" in problem
    )
    assert problem.endswith("Fix: correct 'trigger.sql' (a SELECT the warehouse runs, read-only).")
    assert "sync 'a_good': the trigger's query runs" in report.passed


def test_connect_reads_no_rows_of_a_model(tmp_path: Path) -> None:
    """A model that fails on its first row (an error() per row) passes: LIMIT 0 reads none."""
    model = IDENTIFY_SYNC["model"] + " where error('a row was read') is null"
    sync = dict(IDENTIFY_SYNC, model=model)
    project = write_project(tmp_path, {"user_traits": sync}, users=2)
    assert check(dry_run(project.config_path), connect=True).problems == []


def test_connect_checks_an_append_syncs_cursor_type_against_its_keys(tmp_path: Path) -> None:
    """What a run would refuse only once it reads the model: a cursor of a type that cannot
    grow, a number cursor with partitions (windows of time), a duration lookback on a number."""
    partitions = {"start": "2024-05-30", "cadence": "daily"}
    syncs = {
        "a_fine": dict(APPEND_SYNC),
        "b_text": dict(APPEND_SYNC, cursor="user_id"),
        "c_number_windows": dict(APPEND_SYNC, cursor="order_id", lookback=0, partitions=partitions),
        "d_number_duration": dict(APPEND_SYNC, cursor="order_id"),
        "e_number": dict(APPEND_SYNC, cursor="order_id", lookback=10),
    }
    project = write_project(tmp_path, syncs, users=0)
    sql(project.warehouse, ORDERS_DDL)
    report = check(dry_run(project.config_path), connect=True)
    text, windows, duration = report.problems
    assert text.startswith("sync 'b_text': column 'user_id' (from 'cursor') has type string.")
    assert windows.startswith(
        "sync 'c_number_windows': key 'partitions' makes windows of time, but column 'order_id'"
    )
    assert duration.startswith("sync 'd_number_duration': key 'lookback' is a duration")
    assert all("Fix:" in problem for problem in report.problems)
    assert "sync 'a_fine': the model returns the 4 columns the sync names" in report.passed
    assert "sync 'e_number': the model returns the 4 columns the sync names" in report.passed


def test_connect_names_a_missing_duckdb_file(tmp_path: Path) -> None:
    project = write_project(tmp_path, {"user_traits": IDENTIFY_SYNC}, users=0)
    problems = check(dry_run(project.config_path), connect=True).problems
    assert len(problems) == 1 and "does not exist" in problems[0] and "Fix:" in problems[0]


def test_connect_on_postgres_finds_a_missing_column(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(2)
    syncs = {"user_traits": dict(IDENTIFY_SYNC, mapping={"email": "email", "name": "full_name"})}
    project = write_pg_project(tmp_path, pg, syncs, monkeypatch)
    problems = check(dry_run(project.config_path), connect=True).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        "sync 'user_traits': the model does not return column 'full_name' (from 'mapping.name')"
    )


def test_connect_reads_the_rights_state_schema_needs_and_names_the_grants(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(1)
    role = f"check_{pg.name}"
    pg.sql(f"create role {role} login password 'check-pw-1'", f"grant select on users to {role}")
    parts = urlsplit(pg.url)
    netloc = f"{role}:check-pw-1@{parts.hostname}:{parts.port}"
    limited = PgDatabase(url=urlunsplit(parts._replace(netloc=netloc)), name=pg.name)
    schema = "rs_state_check"
    project = write_pg_project(
        tmp_path, limited, {"traits": IDENTIFY_SYNC}, monkeypatch, state_schema=schema
    )
    try:
        problems = check(dry_run(project.config_path), connect=True).problems
        assert len(problems) == 1, problems
        assert problems[0].startswith(f"warehouse: user '{role}' lacks CREATE on database")
        assert f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"' in problems[0]
        assert "check-pw-1" not in problems[0]
        # An administrator creates the schema for that user: nothing is missing any more.
        pg.sql(f'create schema "{schema}" authorization "{role}"')
        report = check(dry_run(project.config_path), connect=True)
        assert report.problems == []
        assert f"warehouse: user '{role}' may keep the syncs' state in schema '{schema}'" in (
            report.passed
        )
    finally:
        pg.sql(f"drop schema if exists {schema} cascade", f"drop owned by {role}")
        pg.sql(f"drop role {role}")


def test_connect_on_postgres_names_a_wrong_password_once_and_hides_it(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(1)
    project = write_pg_project(tmp_path, pg, {"a": IDENTIFY_SYNC, "b": IDENTIFY_SYNC}, monkeypatch)
    parts = urlsplit(pg.url)
    wrong = parts._replace(netloc=f"{parts.username}:s3cret-pw@{parts.hostname}:{parts.port}")
    monkeypatch.setenv("RUDDER_SYNC_TEST_DB_URL", urlunsplit(wrong))
    problems = check(dry_run(project.config_path), connect=True).problems
    assert len(problems) == 1, problems  # one connection problem, not one per sync
    assert problems[0].startswith("warehouse: cannot connect to postgres") and "Fix:" in problems[0]
    assert problems[0].endswith("(the warehouse settings read RUDDER_SYNC_TEST_DB_URL)")
    assert "s3cret-pw" not in problems[0]


def test_connect_checks_the_write_key_without_sending_an_event(
    tmp_path: Path, gateway: TestGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = write_project(tmp_path, {"user_traits": IDENTIFY_SYNC}, users=1)
    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", gateway.url)
    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", WRITE_KEY)
    good = check(project.config_path, connect=True)
    assert good.problems == []
    assert any("accepts the write key in RUDDERSTACK_WRITE_KEY" in line for line in good.passed)

    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", "wrong-key-value")
    (bad,) = check(project.config_path, connect=True).problems
    assert "rejected the write key in RUDDERSTACK_WRITE_KEY (401 invalid write key)" in bad
    assert "Fix: set RUDDERSTACK_WRITE_KEY" in bad and "wrong-key-value" not in bad

    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", DISABLED_WRITE_KEY)
    (disabled,) = check(project.config_path, connect=True).problems
    assert "source of the write key in RUDDERSTACK_WRITE_KEY is disabled" in disabled
    assert gateway.events == [] and len(gateway.requests) == 3


def test_connect_names_a_named_destinations_variables(
    tmp_path: Path, gateway: TestGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = write_project(tmp_path, {}, users=1)
    document = {
        "warehouse": "warehouse.duckdb",
        "destinations": {
            "eu": {"data_plane_url": {"env": "RS_EU_URL"}, "write_key": {"env": "RS_EU_KEY"}}
        },
        "syncs": {"user_traits": dict(IDENTIFY_SYNC, destination="eu")},
    }
    path = write_config(project.root, document)
    monkeypatch.setenv("RS_EU_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("RS_EU_KEY", "wrong")
    (unreachable,) = check(path, connect=True).problems
    assert unreachable.startswith("destination 'eu': cannot reach the data plane at")
    assert "Fix: check RS_EU_URL" in unreachable
    monkeypatch.setenv("RS_EU_URL", gateway.url)
    (rejected,) = check(path, connect=True).problems
    assert "rejected the write key in RS_EU_KEY" in rejected and "Fix: set RS_EU_KEY" in rejected


@pytest.mark.slow
def test_the_command_in_a_subprocess(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad", SEVERAL_ERRORS)
    command = [sys.executable, "-m", "rudder_sync", "check"]
    result = subprocess.run(
        [*command, str(bad)], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""  # no traceback, no warning
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem: ")]
    assert len(problems) == len(EXPECTED_PROBLEMS)

    good = write_project(tmp_path / "good", {"user_traits": IDENTIFY_SYNC}, users=1)
    env = cli_env(
        RUDDER_SYNC_CONFIG=str(dry_run(good.config_path))
    )  # the config from the environment
    result = subprocess.run(
        [*command, "--connect"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{good.config_path}: no problems."


def test_without_a_config_the_packaged_demo_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUDDER_SYNC_DEMO_DIR", str(tmp_path / "demo"))
    assert cli_main(["check", "--connect"]) == 0
    out = capsys.readouterr().out
    assert "3 syncs (user_events, user_traits, plan_history)" in out
    assert "sync 'plan_history': the model returns the 3 columns the sync names" in out


def test_every_misspelt_key_of_a_sync_is_shown(tmp_path: Path) -> None:
    sync = dict(IDENTIFY_SYNC, mapingg={"email": "email"}, statik={"source": "x"})
    problems = check(write_config(tmp_path, {"syncs": {"user_traits": sync}})).problems
    assert problems == [
        "sync 'user_traits': unknown key 'mapingg'. Fix: remove it (did you mean 'mapping'?).",
        "sync 'user_traits': unknown key 'statik'. Fix: remove it (did you mean 'static'?).",
    ]


def test_every_invalid_value_of_a_sync_is_shown_with_the_misspelt_keys(tmp_path: Path) -> None:
    sync = dict(
        IDENTIFY_SYNC, schedule="every hour", max_attempts="often", exclude_nulls="maybe", typo=1
    )
    problems = check(write_config(tmp_path, {"syncs": {"user_traits": sync}})).problems
    assert problems[0].startswith("sync 'user_traits': unknown key 'typo'"), problems
    invalid = sorted(line.split(":")[1].strip() for line in problems[1:])
    assert invalid == ["key 'exclude_nulls'", "key 'max_attempts'", "key 'schedule'"], problems
    assert all(line.startswith("sync 'user_traits': ") and "Fix: " in line for line in problems)


def test_loading_shows_the_first_invalid_value_and_counts_the_others(tmp_path: Path) -> None:
    from rudder_sync.config import parse_config
    from rudder_sync.errors import ConfigError

    sync = dict(IDENTIFY_SYNC, schedule="every hour", max_attempts="often")
    with pytest.raises(ConfigError) as raised:
        parse_config({"syncs": {"user_traits": sync}}, base_dir=tmp_path)
    message = str(raised.value)
    assert message.startswith("sync 'user_traits': key 'schedule'")
    assert message.endswith("(and 1 more problem in this sync)")
    assert "\n" not in message


def test_a_dg_defs_yaml_is_checked_with_its_templates_rendered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Component's defs.yaml: `{{ context.project_root }}` and `{{ env.X }}` rendered as dg
    renders them, then the same checks as a sync YAML."""
    root = tmp_path / "project"
    defs = root / "src" / "demo" / "defs" / "syncs" / "defs.yaml"
    defs.parent.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[tool.dg]\ndirectory_type = 'project'\n")
    attributes = {
        "warehouse": "{{ context.project_root }}/warehouse.duckdb",
        "state": "{{ env.RUDDER_SYNC_CHECK_STATE }}",
        "dry_run": True,
        "syncs": {"user_traits": IDENTIFY_SYNC},
    }
    component = {"type": "rudder_sync.RudderstackSyncComponent", "attributes": attributes}
    other = {"type": "dagster.DefsFolderComponent", "attributes": {}}
    defs.write_text(yaml.safe_dump_all([other, component], sort_keys=False))
    monkeypatch.setenv("RUDDER_SYNC_CHECK_STATE", str(tmp_path / "state"))
    report = check(defs)
    assert report.problems == []
    assert f"warehouse duckdb {root}/warehouse.duckdb" in report.passed[0]

    attributes["syncs"] = {"user_traits": dict(IDENTIFY_SYNC, mapingg={}, schedule="hourly")}
    defs.write_text(yaml.safe_dump(component, sort_keys=False))
    problems = check(defs).problems
    assert [p.split(":")[1].strip() for p in problems] == [
        "unknown key 'mapingg'. Fix",
        "key 'schedule'",
    ], problems

    monkeypatch.delenv("RUDDER_SYNC_CHECK_STATE")  # {{ env.X }} of an unset variable: None
    defs.write_text(yaml.safe_dump(dict(component, attributes=dict(attributes, syncs={}))))
    assert "key 'state' must be a path" in check(defs).problems[0]

    defs.write_text(yaml.safe_dump(other))
    assert "no component of type rudder_sync.RudderstackSyncComponent" in check(defs).problems[0]


def test_connect_finds_an_append_syncs_missing_cursor_column(tmp_path: Path) -> None:
    sync = dict(
        TRACK_SYNC, mode="append", cursor="created_at", lookback="2h", events={"added": "Signup"}
    )
    project = write_project(tmp_path, {"signups": sync}, users=2)
    problems = check(dry_run(project.config_path), connect=True).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        "sync 'signups': the model does not return column 'created_at' (from 'cursor')"
    )
