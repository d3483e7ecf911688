"""The bad input catalogue: config, model and data that rudder_sync must survive.

Each case gets a clear error or a documented conversion, and no other row is lost because of it.
docs/bad-input.md is the user-facing version of CASES; a test keeps the two in step.

Config cases are loaded from YAML. All model and data cases are syncs of one project (one table
each, plus three good "control" rows), materialized in two real Dagster runs against the test
gateway; each case then checks its own steps, metadata and events.
"""

from __future__ import annotations

import copy
import gc
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import yaml
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from rudder_sync.assets import IO_MANAGER_KEY, build_sync_assets
from rudder_sync.config import ConfigError, load_config
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.warehouses import build_warehouse

from .gateway import TestGateway
from .helpers import rudderstack_for

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"
UNSET = object()

BASE_SYNC: dict[str, Any] = {
    "model": "select * from {t}",
    "primary_key": "id",
    "type": "identify",
    "user_id": "uid",
    "mapping": {"v": "v", "tag": "tag", "key": "id"},
}
COLUMNS = "id integer, uid varchar, v varchar"
CONTROLS = (("1", "'u1'", "'a'"), ("2", "'u2'", "'b'"), ("3", "'u3'", "'c'"))
NULL_V_CONTROLS = (("1", "'u1'", "null"), ("2", "'u2'", "null"), ("3", "'u3'", "null"))
TOO_BIG = 40_000  # characters in one value: the event exceeds RudderStack's 32 KB per event


@dataclass(frozen=True)
class Case:
    """One bad input and what must become of it."""

    id: str
    area: str  # config | model | data
    outcome: str  # config error | run error | rejected | converted | sent
    # config cases: the YAML document (a dict); others: a table and a sync over it
    document: dict[str, Any] | None = None
    columns: str = COLUMNS
    rows: tuple[tuple[str, ...], ...] = ()  # the odd rows (SQL literals), key 100 unless said
    controls: tuple[tuple[str, ...], ...] = CONTROLS
    sync: dict[str, Any] = field(default_factory=dict)  # overrides; None removes a key
    then: str | None = None  # SQL between the first and the second run ({t}: the table)
    messages: tuple[str, ...] = ()  # in the error, or in the rejection reason
    rejected: tuple[str, ...] = ()  # keys left out and reported
    trait: Any = UNSET  # the JSON value of trait `v` on key 100
    user_id: Any = UNSET  # the userId of key 100
    raw: tuple[str, ...] = ()  # text that must be in the request body, verbatim
    timestamp: str | None = None  # the event timestamp of key 100 (prefix)
    second_run: tuple[str, ...] | None = None  # keys sent by the second run (None: no check)

    @property
    def control_keys(self) -> set[str]:
        return {_key_text(row[0]) for row in self.controls}

    @property
    def odd_key(self) -> str:
        """The primary key of the (first) odd row, as the `key` trait shows it."""
        return _key_text(self.rows[0][0])


def _key_text(literal: str) -> str:
    return literal.strip("'").lower()


def _doc(**top: Any) -> dict[str, Any]:
    """A config document with one sync, `top` merged in at the top level."""
    body = {k: v for k, v in BASE_SYNC.items()}
    body["model"] = "select * from t"
    document: dict[str, Any] = {"warehouse": "w.duckdb", "state": "st", "syncs": {"s1": body}}
    document.update(top)
    return document


def _sync_doc(**changes: Any) -> dict[str, Any]:
    document = _doc()
    body = document["syncs"]["s1"]
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return document


CASES: list[Case] = [
    # -- config: refused when the definitions load, naming the sync, the key and the fix --------
    Case(
        "unknown sync key",
        "config",
        "config error",
        document=_sync_doc(primry_key="id"),
        messages=("sync 's1'", "unknown key 'primry_key'", "did you mean 'primary_key'"),
    ),
    Case(
        "unknown top-level key",
        "config",
        "config error",
        document=_doc(warehose="w.duckdb"),
        messages=("unknown key 'warehose'", "did you mean 'warehouse'"),
    ),
    Case(
        "wrong type: mapping is a list",
        "config",
        "config error",
        document=_sync_doc(mapping=["v"]),
        messages=("sync 's1'", "key 'mapping'", "Fix"),
    ),
    Case(
        "wrong type: primary_key is a list",
        "config",
        "config error",
        document=_sync_doc(primary_key=["id", "uid"]),
        messages=("sync 's1'", "key 'primary_key'", "Fix"),
    ),
    Case(
        "wrong type: send_initial_results is not a boolean",
        "config",
        "config error",
        document=_sync_doc(
            type="track", events={"added": "Added"}, send_initial_results="sometimes"
        ),
        messages=("sync 's1'", "key 'send_initial_results'", "true or false"),
    ),
    Case(
        "wrong value: type",
        "config",
        "config error",
        document=_sync_doc(type="pageview"),
        messages=("sync 's1'", "key 'type'", "track, identify, page, screen, group or alias"),
    ),
    Case(
        "empty SQL",
        "config",
        "config error",
        document=_sync_doc(model="  \n "),
        messages=("sync 's1'", "key 'model'", "empty"),
    ),
    Case(
        "SQL syntax error",
        "config",
        "config error",
        document=_sync_doc(model="selec * form t"),
        messages=("sync 's1'", "key 'model' is not valid SQL", "Fix"),
    ),
    Case(
        "two SQL statements",
        "config",
        "config error",
        document=_sync_doc(model="select * from t; delete from t"),
        messages=("sync 's1'", "exactly one query", "Fix"),
    ),
    Case(
        "SQL that writes",
        "config",
        "config error",
        document=_sync_doc(model="update t set v = 'x'"),
        messages=("sync 's1'", "must be a SELECT", "read-only"),
    ),
    Case(
        "blank column name",
        "config",
        "config error",
        document=_sync_doc(user_id="   "),
        messages=("sync 's1'", "key 'user_id' is blank", "Fix"),
    ),
    Case(
        "no ID column configured",
        "config",
        "config error",
        document=_sync_doc(user_id=None),
        messages=("sync 's1'", "no ID column", "Fix"),
    ),
    # -- model: the run fails naming the cause; nothing is sent or committed ------------------
    Case(
        "SQL error at run time: unknown table",
        "model",
        "run error",
        sync={"model": "select * from {t}_missing"},
        messages=("the model failed", "_missing"),
    ),
    Case(
        "SQL error at run time: a cast fails on one row",
        "model",
        "run error",
        controls=(("1", "'u1'", "'12'"), ("2", "'u2'", "'34'")),
        rows=(("100", "'u100'", "'not a number'"),),
        sync={"model": "select id, uid, v::integer as v, tag from {t}"},
        messages=("the model failed", "Conversion Error", "not a number"),
    ),
    Case(
        "model returns no primary key column",
        "model",
        "run error",
        sync={"model": "select uid, v, tag from {t}"},
        messages=("does not return column 'id' (from 'primary_key')", "uid, v, tag", "Fix"),
    ),
    Case(
        "mapped column missing",
        "model",
        "run error",
        sync={"mapping": {"v": "v", "tag": "tag", "key": "id", "email": "emial"}},
        messages=("'emial' (from 'mapping.email')", "Its columns are: id, uid, v, tag"),
    ),
    Case(
        "ID column missing",
        "model",
        "run error",
        sync={"user_id": "user"},
        messages=("'user' (from 'user_id')", "Fix"),
    ),
    Case(
        "event timestamp column of a non-time type",
        "model",
        "run error",
        columns="id integer, uid varchar, v varchar, ts bigint",
        controls=(("1", "'u1'", "'a'", "1714560000"),),
        sync={"timestamp": "ts"},
        messages=("'ts'", "'timestamp'", "Fix"),
    ),
    Case(
        "model produces a non-UTF-8 string",
        "model",
        "run error",
        columns="id integer, uid varchar, v blob",
        rows=(("100", "'u100'", "'\\xFF\\xFE'::blob"),),
        controls=NULL_V_CONTROLS,
        sync={"model": "select id, uid, decode(v) as v, tag from {t}"},
        messages=("the model failed", "UTF8"),
    ),
    Case(
        "model of 0 rows",
        "model",
        "sent",
        controls=(),
        then="insert into {t} values (1, 'u1', 'a', 'model of 0 rows')",
        second_run=("1",),
    ),
    Case(
        "column set changes between runs: a column is added",
        "model",
        "sent",
        then="alter table {t} add column extra integer default 7",
        second_run=(),
    ),
    Case(
        "column set changes between runs: a mapped column disappears",
        "model",
        "sent",
        columns="id integer, uid varchar, v varchar, w varchar",
        controls=(("1", "'u1'", "'a'", "'x'"), ("2", "'u2'", "'b'", "'y'")),
        sync={"mapping": {"v": "v", "tag": "tag", "key": "id", "w": "w"}},
        then="alter table {t} drop column w",
        messages=("'w' (from 'mapping.w')",),
        second_run=None,  # the second run fails, see test_second_runs
    ),
    Case(
        "column set changes between runs: a column changes type",
        "model",
        "sent",
        columns="id integer, uid varchar, v integer",
        controls=(("1", "'u1'", "1"), ("2", "'u2'", "2")),
        then="alter table {t} alter v type varchar",
        second_run=("1", "2"),
    ),
    # -- data: a row that cannot be sent is left out and reported; values convert by rule -------
    Case(
        "duplicate primary key",
        "data",
        "rejected",
        rows=(("100", "'u100'", "'x'"), ("100", "'u100b'", "'y'")),
        rejected=("100",),
        messages=("duplicate primary key (2 rows)",),
    ),
    Case(
        "null primary key",
        "data",
        "rejected",
        rows=(("null", "'u100'", "'x'"),),
        rejected=("(null)",),
        messages=("null primary key",),
    ),
    Case(
        "null user ID",
        "data",
        "rejected",
        rows=(("100", "null", "'x'"),),
        rejected=("100",),
        messages=("neither user ID nor anonymous ID",),
    ),
    Case(
        "whitespace-only user ID",
        "data",
        "rejected",
        rows=(("100", "' \t\n '", "'x'"), ("101", "chr(160) || chr(65279) || chr(12288)", "'y'")),
        rejected=("100", "101"),
        messages=("neither user ID nor anonymous ID",),
    ),
    Case(
        "user ID of type DOUBLE, whole",
        "data",
        "converted",
        columns="id integer, uid double, v varchar",
        controls=(("1", "1", "'a'"),),
        rows=(("100", "42.0", "'x'"),),
        user_id="42",
    ),
    Case(
        "user ID of type DOUBLE, fractional",
        "data",
        "converted",
        columns="id integer, uid double, v varchar",
        controls=(("1", "1", "'a'"),),
        rows=(("100", "1.5", "'x'"),),
        user_id="1.5",
    ),
    Case(
        "user ID NaN or Inf",
        "data",
        "rejected",
        columns="id integer, uid double, v varchar",
        controls=(("1", "1", "'a'"),),
        rows=(("100", "'nan'::double", "'x'"), ("101", "'inf'::double", "'y'")),
        rejected=("100", "101"),
        messages=("neither user ID nor anonymous ID",),
    ),
    Case(
        "user ID of type HUGEINT beyond 64 bits",
        "data",
        "converted",
        columns="id integer, uid hugeint, v varchar",
        controls=(("1", "1", "'a'"),),
        rows=(("100", "170141183460469231731687303715884105727", "'x'"),),
        user_id="170141183460469231731687303715884105727",
    ),
    Case(
        "user ID of type UUID",
        "data",
        "converted",
        columns="id integer, uid uuid, v varchar",
        controls=(("1", "'00000000-0000-0000-0000-000000000001'", "'a'"),),
        rows=(("100", "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "'x'"),),
        user_id="a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ),
    Case(
        "user ID of type BOOLEAN",
        "data",
        "converted",
        columns="id integer, uid boolean, v varchar",
        controls=(("1", "false", "'a'"),),
        rows=(("100", "true", "'x'"),),
        user_id="true",
    ),
    Case(
        "primary key of type UUID",
        "data",
        "converted",
        columns="id uuid, uid varchar, v varchar",
        controls=(("'00000000-0000-0000-0000-000000000001'", "'u1'", "'a'"),),
        rows=(("'5f0c9b4e-2b0a-4a51-9b7c-6a1c0e4f7a11'", "'u100'", "'x'"),),
        trait="x",
    ),
    Case(
        "value NaN, +Inf, -Inf",
        "data",
        "converted",
        columns="id integer, uid varchar, v double[]",
        controls=NULL_V_CONTROLS,
        rows=(("100", "'u100'", "['nan'::double, 'inf'::double, '-inf'::double, 1.5]"),),
        trait=[None, None, None, 1.5],
    ),
    Case(
        "naive timestamp value",
        "data",
        "converted",
        columns="id integer, uid varchar, v timestamp",
        controls=NULL_V_CONTROLS,
        rows=(("100", "'u100'", "timestamp '2024-01-02 03:04:05.5'"),),
        trait="2024-01-02T03:04:05.500000Z",
    ),
    Case(
        "aware timestamp value",
        "data",
        "converted",
        columns="id integer, uid varchar, v timestamptz",
        controls=NULL_V_CONTROLS,
        rows=(("100", "'u100'", "timestamptz '2024-01-02 03:04:05.5 America/Los_Angeles'"),),
        trait="2024-01-02T11:04:05.500000Z",
    ),
    Case(
        "naive event timestamp",
        "data",
        "converted",
        columns="id integer, uid varchar, v varchar, ts timestamp",
        controls=(("1", "'u1'", "'a'", "timestamp '2024-05-01 00:00:00'"),),
        rows=(("100", "'u100'", "'x'", "timestamp '2024-01-02 03:04:05'"),),
        sync={"timestamp": "ts"},
        timestamp="2024-01-02T03:04:05.000000Z",
    ),
    Case(
        "aware event timestamp as text",
        "data",
        "converted",
        columns="id integer, uid varchar, v varchar, ts varchar",
        controls=(("1", "'u1'", "'a'", "'2024-05-01T00:00:00Z'"),),
        rows=(("100", "'u100'", "'x'", "'2024-01-02 03:04:05+02:00'"),),
        sync={"timestamp": "ts"},
        timestamp="2024-01-02T01:04:05.000000Z",
    ),
    Case(
        "event timestamp null",
        "data",
        "converted",
        columns="id integer, uid varchar, v varchar, ts timestamptz",
        controls=(("1", "'u1'", "'a'", "timestamptz '2024-05-01 00:00:00+00'"),),
        rows=(("100", "'u100'", "'x'", "null"),),
        sync={"timestamp": "ts"},  # the time the change was first seen, see below
    ),
    Case(
        "dates and timestamps before 1970",
        "data",
        "converted",
        columns="id integer, uid varchar, v struct(d date, t timestamptz), ts timestamptz",
        controls=(("1", "'u1'", "null", "timestamptz '2024-05-01 00:00:00+00'"),),
        rows=(
            (
                "100",
                "'u100'",
                "{'d': date '1900-01-02', 't': timestamptz '1969-07-20 20:17:40+00'}",
                "timestamptz '1969-07-20 20:17:40+00'",
            ),
        ),
        sync={"timestamp": "ts"},
        trait={"d": "1900-01-02", "t": "1969-07-20T20:17:40.000000Z"},
        timestamp="1969-07-20T20:17:40.000000Z",
    ),
    Case(
        "decimal with 38 digits",
        "data",
        "converted",
        columns="id integer, uid varchar, v decimal(38,18)",
        controls=NULL_V_CONTROLS,
        rows=(("100", "'u100'", "12345678901234567890.123456789012345678"),),
        raw=('"v":12345678901234567890.123456789012345678',),
    ),
    Case(
        "big integers",
        "data",
        "converted",
        columns="id integer, uid varchar, v hugeint",
        controls=NULL_V_CONTROLS,
        rows=(("100", "'u100'", "-170141183460469231731687303715884105727"),),
        raw=('"v":-170141183460469231731687303715884105727',),
    ),
    Case(
        "nested struct, list and map",
        "data",
        "converted",
        columns="id integer, uid varchar, v struct(s struct(a integer), l varchar[], "
        "m map(varchar, double))",
        controls=NULL_V_CONTROLS,
        rows=(("100", "'u100'", "{'s': {'a': 1}, 'l': ['x', null], 'm': map {'k': 'nan'}}"),),
        trait={"s": {"a": 1}, "l": ["x", None], "m": {"k": None}},
    ),
    Case(
        "blob",
        "data",
        "converted",
        columns="id integer, uid varchar, v blob",
        controls=NULL_V_CONTROLS,
        rows=(("100", "'u100'", "'\\x00\\xFF\\xFE'::blob"),),
        trait="AP/+",
    ),
    Case(
        "control characters and NUL in strings",
        "data",
        "converted",
        rows=(("100", "'u100'", "'a' || chr(0) || chr(7) || '\"\\' || chr(10) || 'b'"),),
        trait='a\x00\x07"\\\nb',
    ),
    Case(
        "unicode beyond ASCII in strings",
        "data",
        "converted",
        rows=(("100", "'u100'", "'é 中 🙂 ' || chr(8232) || chr(8233) || ' עברית'"),),
        trait="é 中 🙂 \u2028\u2029 עברית",
    ),
    Case(
        "a single event over the 32 KB event limit",
        "data",
        "rejected",
        rows=(("100", "'u100'", f"repeat('x', {TOO_BIG})"),),
        rejected=("100",),
        messages=("event is 40,", "RudderStack accepts at most 32 KB", "max_event_kb"),
    ),
    # -- call types (issue 11): their config rules, and rows without a name/groupId/previousId --
    Case(
        "page sync without name_column",
        "config",
        "config error",
        document=_sync_doc(type="page"),
        messages=("sync 's1'", "key 'name_column' is missing", "Fix"),
    ),
    Case(
        "call-type column on another type",
        "config",
        "config error",
        document=_sync_doc(group_id="uid"),
        messages=("sync 's1'", "key 'group_id' is only for group syncs", "Fix"),
    ),
    Case(
        "send_on removed on a group sync",
        "config",
        "config error",
        document=_sync_doc(type="group", group_id="uid", send_on=["added", "removed"]),
        messages=("sync 's1'", "key 'send_on' has 'removed'", "Fix"),
    ),
    Case(
        "integrations All not a boolean",
        "config",
        "config error",
        document=_sync_doc(integrations={"All": "false"}),
        messages=("sync 's1'", "key 'integrations.All' must be true or false", "Fix"),
    ),
    Case(
        "colliding field paths",
        "config",
        "config error",
        document=_sync_doc(mapping={"v": "v", "v.x": "tag"}),
        messages=("sync 's1'", "'mapping.v' and 'mapping.v.x' collide", "Fix"),
    ),
    Case(
        "context sets library or traits",
        "config",
        "config error",
        document=_sync_doc(context={"library.name": "v"}),
        messages=("sync 's1'", "key 'context.library.name'", "writes context.library", "Fix"),
    ),
    Case(
        "event name from a column: null or blank",
        "data",
        "rejected",
        rows=(("100", "'u100'", "null"), ("101", "'u101'", "' '")),
        sync={
            "type": "track",
            "events": {"added": {"column": "v"}},
            "send_initial_results": True,
        },
        rejected=("100", "101"),
        messages=("event name column 'v' null or blank",),
    ),
    Case(
        "page name null or blank",
        "data",
        "rejected",
        rows=(("100", "'u100'", "null"), ("101", "'u101'", "''")),
        sync={"type": "page", "name_column": "v"},
        rejected=("100", "101"),
        messages=("page name column 'v' null or blank",),
    ),
    Case(
        "group ID null or blank",
        "data",
        "rejected",
        rows=(("100", "'u100'", "null"), ("101", "'u101'", "chr(9)")),
        sync={"type": "group", "group_id": "v"},
        rejected=("100", "101"),
        messages=("group ID column 'v' null or blank",),
    ),
    Case(
        "alias previous ID null or blank",
        "data",
        "rejected",
        rows=(("100", "'u100'", "null"), ("101", "'u101'", "'  '")),
        sync={
            "type": "alias",
            "previous_id": "v",
            "mapping": None,
            "context": {"tag": "tag", "key": "id"},
        },
        rejected=("100", "101"),
        messages=("previous ID column 'v' null or blank",),
    ),
]

CONFIG_CASES = [case for case in CASES if case.area == "config"]
RUN_CASES = [case for case in CASES if case.area != "config"]
SECOND_RUN_CASES = [case for case in RUN_CASES if case.then]


def _sync_name(case: Case) -> str:
    return f"case_{RUN_CASES.index(case):02d}"


def _table(case: Case) -> str:
    return f"t_{RUN_CASES.index(case):02d}"


def _sync_body(case: Case) -> dict[str, Any]:
    body = copy.deepcopy(BASE_SYNC)
    for key, value in case.sync.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    body["model"] = body["model"].format(t=_table(case))
    return body


def _create_table(conn: duckdb.DuckDBPyConnection, case: Case) -> None:
    table, tag = _table(case), case.id.replace("'", "''")
    conn.execute(f"create table {table} ({case.columns}, tag varchar)")
    for row in (*case.controls, *case.rows):
        conn.execute(f"insert into {table} values ({', '.join(row)}, '{tag}')")


# -- one project for every model and data case, two runs ------------------------------------------


@dataclass
class Catalogue:
    """The two runs of the model/data cases, and what the gateway received in each."""

    root: Path
    first: ExecuteInProcessResult
    second: ExecuteInProcessResult
    first_events: list[dict[str, Any]]
    second_events: list[dict[str, Any]]
    bodies: list[bytes]


def _materialize(root: Path, url: str, cases: list[Case]) -> ExecuteInProcessResult:
    """One Dagster run materializing the syncs of `cases` (their steps fail independently)."""
    config = load_config(root / "rudder_sync.yaml")
    syncs = [config.syncs[_sync_name(case)] for case in cases]
    assets = [a for sync in syncs for a in build_sync_assets(sync, config.state)]
    return materialize(
        assets,
        resources={
            "warehouse": build_warehouse(config.warehouse),
            "rudderstack": rudderstack_for(url),
            IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
        },
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("bad_input")
    syncs = {_sync_name(case): _sync_body(case) for case in RUN_CASES}
    (root / "rudder_sync.yaml").write_text(
        yaml.safe_dump({"warehouse": "warehouse.duckdb", "state": "state", "syncs": syncs})
    )
    with duckdb.connect(str(root / "warehouse.duckdb")) as conn:
        for case in RUN_CASES:
            _create_table(conn, case)
    with TestGateway() as gateway:
        first = _materialize(root, gateway.url, RUN_CASES)
        first_events = gateway.events
        gc.collect()  # failed model steps can leave a reader to the collector (see test_crash)
        with duckdb.connect(str(root / "warehouse.duckdb")) as conn:
            for case in SECOND_RUN_CASES:
                conn.execute((case.then or "").format(t=_table(case)))
        second = _materialize(root, gateway.url, SECOND_RUN_CASES)
        yield Catalogue(
            root=root,
            first=first,
            second=second,
            first_events=first_events,
            second_events=gateway.events[len(first_events) :],
            bodies=[r.body or b"" for r in gateway.requests if r.status == 200],
        )
        assert gateway.schema_errors == []


def _events_of(case: Case, events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The case's events by primary key (the `key` trait, as text)."""
    mine = [e for e in events if _fields(e).get("tag") == case.id]
    by_key = {str(_fields(e)["key"]): e for e in mine}
    assert len(by_key) == len(mine), f"{case.id}: a key was sent twice in one run"
    return by_key


def _fields(event: dict[str, Any]) -> dict[str, Any]:
    """Where the mapped fields are: traits (identify, group), properties, or context (alias)."""
    context = event.get("context", {})
    for fields in (context.get("traits"), event.get("traits"), event.get("properties")):
        if fields is not None:
            return fields
    return context


def _failures(result: ExecuteInProcessResult, case: Case) -> str:
    prefix = f"{_sync_name(case)}__"
    return "\n".join(
        event.event_specific_data.error.message  # type: ignore[union-attr]
        for event in result.all_events
        if event.is_step_failure and (event.step_key or "").startswith(prefix)
    )


def _committed(catalogue: Catalogue, case: Case) -> int:
    """Rows in the case's committed snapshot (0 when it has no state at all)."""
    path = catalogue.root / "state" / f"{_sync_name(case)}.duckdb"
    if not path.exists():
        return 0
    with duckdb.connect(str(path), read_only=True) as conn:
        tables = conn.execute("select table_name from duckdb_tables()").fetchall()
        if ("snapshot",) not in tables:
            return 0
        return int(conn.execute("select count(*) from snapshot").fetchone()[0])  # type: ignore[index]


def _metadata(result: ExecuteInProcessResult, case: Case, step: str) -> dict[str, Any]:
    materializations = result.asset_materializations_for_node(f"{_sync_name(case)}__{step}")
    assert materializations, f"{case.id}: no materialization of {step}"
    return {k: getattr(v, "value", v) for k, v in materializations[-1].metadata.items()}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_config_case(tmp_path: Path, case: Case) -> None:
    path = tmp_path / "rudder_sync.yaml"
    path.write_text(yaml.safe_dump(case.document))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    for fragment in case.messages:
        assert fragment in message, f"{fragment!r} not in: {message}"


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.id for c in RUN_CASES])
def test_model_and_data_case(catalogue: Catalogue, case: Case) -> None:
    sent = _events_of(case, catalogue.first_events)
    if case.outcome == "run error":
        message = _failures(catalogue.first, case)
        assert message, f"{case.id}: the run did not fail"
        assert f"sync '{_sync_name(case)}'" in message
        for fragment in case.messages:
            assert fragment in message, f"{fragment!r} not in: {message}"
        assert sent == {}, "a failed run sent events"
        assert _committed(catalogue, case) == 0, "a failed run committed"
        return

    assert _failures(catalogue.first, case) == ""
    # no other row is lost because of the bad one, and the good rows are intact
    assert case.control_keys <= set(sent), f"control rows lost: {case.control_keys - set(sent)}"
    if case.outcome == "rejected":
        assert set(sent) == case.control_keys, "a bad row was sent"
        diff = _metadata(catalogue.first, case, "diff")
        events = _metadata(catalogue.first, case, "events")
        reasons = {
            str(r["key"]): r["reason"]
            for r in [*diff.get("rejected_sample", []), *events.get("rejected_sample", [])]
        }
        assert set(reasons) == set(case.rejected), reasons
        for reason in reasons.values():
            for fragment in case.messages:
                assert fragment in reason, f"{fragment!r} not in: {reason}"
        return

    odd_keys = {case.odd_key} if case.rows else set()
    assert set(sent) == case.control_keys | odd_keys
    if not case.rows:
        return
    event = sent[case.odd_key]
    if case.trait is not UNSET:
        assert event["context"]["traits"]["v"] == case.trait
    if case.user_id is not UNSET:
        assert event["userId"] == case.user_id
    if case.timestamp is not None:
        assert event["timestamp"].startswith(case.timestamp)
    for text in case.raw:
        assert any(text.encode() in body for body in catalogue.bodies), f"{text} not sent as is"


@pytest.mark.parametrize("case", SECOND_RUN_CASES, ids=[c.id for c in SECOND_RUN_CASES])
def test_second_runs(catalogue: Catalogue, case: Case) -> None:
    """Cases that change the model between two runs: exactly the right rows are sent again."""
    sent_again = _events_of(case, catalogue.second_events)
    if case.second_run is None:  # the change breaks the sync: a clear error, nothing sent
        message = _failures(catalogue.second, case)
        for fragment in case.messages:
            assert fragment in message, f"{fragment!r} not in: {message}"
        assert sent_again == {}
        return
    assert _failures(catalogue.second, case) == ""
    assert set(sent_again) == set(case.second_run)
    if case.id.endswith("changes type"):  # the new type's JSON: a changed event, every row
        assert sorted(e["context"]["traits"]["v"] for e in sent_again.values()) == ["1", "2"]


def test_event_timestamp_null_falls_back_to_first_seen(catalogue: Catalogue) -> None:
    case = next(c for c in RUN_CASES if c.id == "event timestamp null")
    event = _events_of(case, catalogue.first_events)["100"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["timestamp"])
    assert event["timestamp"] > "2025"


def test_every_value_sent_is_valid_json(catalogue: Catalogue) -> None:
    """No NaN, Infinity or invalid text ever reaches the wire."""
    for body in catalogue.bodies:
        for event in orjson.loads(body)["batch"]:  # orjson refuses NaN, Infinity, bad UTF-8
            assert not any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(event))


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_catalogue_has_at_least_30_cases_and_is_documented() -> None:
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)
    text = DOC.read_text(encoding="utf-8")
    missing = [case.id for case in CASES if f"| {case.id} |" not in text]
    assert not missing, f"cases missing from {DOC.name}: {missing}"
