"""Databricks' commits stopped at every statement boundary: the next open finishes them.

Databricks has no multi-statement transaction; the store journals each commit of two or more
writes and runs the journal again when the state opens (databricks_store.py). Here the stand-in
connection (engines/databricks.py over Spark with Iceberg tables) loses the connection right
before the statement at one boundary of one journaled commit, as a run killed there would stop:
after the journal's INSERT, after each of its statements, before the journal's DELETE. The next
run (or open) must finish the commit: no change lost, none logged twice, an attempt counted
once, and every change sent under one messageId however many runs it took.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rudder_sync.state import SALT_KEY
from rudder_sync.warehouse_state.state import open_warehouse_state
from rudder_sync.warehouses import build_warehouse

from .engines.databricks import SparkConnection, SparkCursor
from .engines.state import ENGINES, SCHEMA, StateEngine
from .gateway import TestGateway
from .helpers import rudderstack_for, run_sync
from .test_quarantine import REASON, bad_plan
from .test_warehouse_state_engines import SYNCS

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("engines"), pytest.mark.timeout(1200)]

_JOURNAL_INSERT = re.compile(r"^INSERT INTO `[^`]+`\.`[^`]+__in__rs_journal` ")
_JOURNAL_DELETE = re.compile(r"^DELETE FROM `[^`]+`\.`[^`]+__in__rs_journal`")
_WRITE = re.compile(r"^(MERGE|INSERT|UPDATE|DELETE) ", re.IGNORECASE)
_JOURNALED = re.compile(r"\((\d+), '((?:[^'\\]|\\.)*)'\)")


class Boundaries:
    """Counts the statement boundaries of journaled commits as the stand-in runs them, and
    loses the connection at the one it is armed with (once)."""

    def __init__(self) -> None:
        self.target: int | None = None
        self.seen = 0
        self.plan: list[str] | None = None
        self.position = 0
        self.hits: list[tuple[tuple[str, ...], int]] = []

    def arm(self, target: int | None) -> None:
        self.target, self.seen = target, 0

    def before(self, sql: str) -> None:
        from databricks.sql.exc import RequestError

        if _JOURNAL_INSERT.match(sql):
            self.plan = [_shape(s) for _, s in _JOURNALED.findall(sql)]
            self.position = 0
            return
        if self.plan is None or not _WRITE.match(sql):
            return  # not inside a journaled commit (a replay at open runs none), or a read
        boundary, self.seen = self.seen, self.seen + 1
        if boundary == self.target:
            self.target = None
            self.hits.append((tuple(self.plan), self.position))
            self.plan = None
            raise RequestError("the connection was lost (test: a run stopped here)")
        if _JOURNAL_DELETE.match(sql):
            self.plan = None
        else:
            self.position += 1


def _shape(statement: str) -> str:
    """`MERGE pending`: a journaled statement's verb and the state table it writes."""
    text = statement.replace("\\'", "'")
    verb = text.split()[0].upper()
    table = re.search(r"`[^`]+__(meta|snapshot|pending|rejected_rows|delivery_log)`", text)
    return f"{verb} {table.group(1) if table else '?'}"


@pytest.fixture
def databricks(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[StateEngine, Boundaries]]:
    """The Databricks state engine, its connections counting journaled boundaries."""
    from databricks import sql as dbsql

    engine = next(ENGINES["databricks"](request))
    spark = request.getfixturevalue("spark_engine")
    boundaries = Boundaries()

    class Cursor(SparkCursor):
        def execute(self, operation: str, parameters: Any = None) -> SparkCursor:
            boundaries.before(operation)
            return super().execute(operation, parameters)

    class Connection(SparkConnection):
        def cursor(self) -> SparkCursor:
            return Cursor(self.session)

    monkeypatch.setattr(dbsql, "connect", lambda **kwargs: Connection(spark, **kwargs))
    yield engine, boundaries


def test_a_new_states_meta_stopped_at_each_boundary_is_finished_at_the_next_open(
    databricks: tuple[StateEngine, Boundaries], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from databricks.sql.exc import RequestError

    engine, boundaries = databricks
    project = engine.write_project(tmp_path, {"traits": SYNCS["user_traits"]}, monkeypatch)
    warehouse = build_warehouse(project.config().warehouse).process_config_and_initialize()
    for k in range(4):  # a new state's meta: three MERGEs in one commit, four boundaries
        name = f"meta{k}"
        boundaries.arm(k)
        with pytest.raises(RequestError), open_warehouse_state(warehouse, name, "id", False):
            pass
        boundaries.arm(None)
        with open_warehouse_state(warehouse, name, "id", False) as state:
            meta = state.all_meta()
        assert {"schema_version", "hash_probe", SALT_KEY} <= set(meta), (k, meta)
    assert [(plan, k) for plan, k in boundaries.hits] == [
        (("MERGE meta",) * 3, k) for k in range(4)
    ]


def test_runs_stopped_at_each_boundary_of_each_commit_lose_nothing_and_keep_message_ids(
    databricks: tuple[StateEngine, Boundaries],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    """Run after run, one boundary further: run j stops at the j-th boundary of its journaled
    commits (the diff's, a rejected attempt's, the delivery's, the silent commit's), and the
    next run finishes that commit first. Each run changes one more user, so each has the same
    commits; one user is always refused by the gateway (its attempts count once per run)."""
    engine, boundaries = databricks
    engine.seed_users(40)
    engine.sql("update users set plan = 'bad' where id = 40")
    project = engine.write_project(tmp_path, {"traits": SYNCS["user_traits"]}, monkeypatch)
    warehouse = build_warehouse(project.config().warehouse).process_config_and_initialize()
    gateway.reject_events_where(bad_plan, REASON)
    run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)  # baseline
    expected = {(f"u{i}", "free") for i in range(1, 40)}
    stopped = 0
    for j in range(39):
        engine.sql(f"update users set plan = 'p{j}' where id = {j + 1}")
        expected.add((f"u{j + 1}", f"p{j}"))
        boundaries.arm(j)
        result = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
        if boundaries.target is not None:  # the run has fewer boundaries: all were stopped at
            boundaries.arm(None)
            break
        stopped += 1
        assert not result.success and len(boundaries.hits) == stopped
        with open_warehouse_state(warehouse, "traits", "id", False):
            pass  # the next open finishes the stopped commit: it is whole before anything reads
        _assert_whole(engine, boundaries.hits[-1])
    else:
        pytest.fail("a run still stopped after 39 boundaries")
    run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
    # every boundary of every journaled commit of a run was stopped at once
    kinds = {plan for plan, _ in boundaries.hits}
    for plan in kinds:
        assert sorted(k for p, k in boundaries.hits if p == plan) == list(range(len(plan) + 1))
    assert stopped == sum(len(plan) + 1 for plan in kinds)
    assert any("INSERT delivery_log" in plan and "DELETE pending" in plan for plan in kinds)
    assert ("MERGE pending", "INSERT delivery_log") in kinds  # a rejected attempt
    # nothing lost, nothing sent under a new messageId
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in gateway.events:
        ids[(event["userId"], event["context"]["traits"]["plan"])].add(event["messageId"])
    assert set(ids) == expected
    assert all(len(sent) == 1 for sent in ids.values()), ids
    log = engine.table("delivery_log", "traits")
    assert (  # each delivered change logged once (change IDs restart with each diff)
        engine.sql(
            f"select message_id from {log} where status = 'delivered' group by message_id "
            "having count(*) > 1"
        )
        == []
    )
    pending = engine.table("pending", "traits")
    ((pk, attempts),) = engine.sql(f"select __rs_pk, __rs_attempts from {pending}")
    (rejected,) = engine.sql(f"select count(*) from {log} where status = 'rejected' and pk = '40'")[
        0
    ]
    assert pk == "40" and int(attempts) == int(rejected) >= 2
    assert engine.sql(f"select count(*) from {engine.table('snapshot', 'traits')}") == [(39,)]
    journal = f'"{SCHEMA}"."traits__in__rs_journal"'
    assert engine.sql(f"select count(*) from {journal}") == [(0,)]


def _assert_whole(engine: StateEngine, hit: tuple[tuple[str, ...], int]) -> None:
    """What a half-applied commit would break: a delivered change still pending (the delivery
    commit), an attempt counted without its logged rejection or the other way round (a failed
    attempt's commit); and the journal is empty."""
    pending, log = engine.table("pending", "traits"), engine.table("delivery_log", "traits")
    delivered_pending = engine.sql(
        f"select count(*) from {pending} p join {log} l on l.message_id = p.__rs_message_id "
        "and l.status = 'delivered'"
    )
    assert delivered_pending == [(0,)], hit
    attempts = engine.sql(f"select __rs_attempts from {pending} where __rs_pk = '40'")
    rejected = engine.sql(f"select count(*) from {log} where status = 'rejected' and pk = '40'")
    assert [int(a) for (a,) in attempts] in ([], [int(rejected[0][0])]), (hit, attempts, rejected)
    journal = f'"{SCHEMA}"."traits__in__rs_journal"'
    assert engine.sql(f"select count(*) from {journal}") == [(0,)], hit
