"""Every RudderStack call type and field, end to end: real Dagster runs, DuckDB, the test gateway.

The gateway checks every accepted event against the OpenAPI spec of rudder-server's HTTP API;
each test also asserts the exact payload it received.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from rudder_sync.events import LIBRARY_NAME, LIBRARY_VERSION

from .gateway import TestGateway
from .helpers import Project, asset_metadata, rudderstack_for, run_sync, sql, write_project

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
LIBRARY = {"name": LIBRARY_NAME, "version": LIBRARY_VERSION}

VISITS_DDL = """
create or replace table visits (
    id integer, user_id varchar, anon_id varchar, page varchar, event_name varchar,
    account varchar, old_id varchar, city varchar, plan varchar, seats integer,
    ip varchar, locale varchar, note varchar
)
"""
VISITS = """
insert into visits values
    (1, 'u1', 'a1', 'Home', 'Signed Up', 'acc1', 'old1', 'Berlin', 'pro', 3,
     '10.0.0.1', 'de-DE', 'x'),
    (2, 'u2', null, 'Pricing', 'Upgraded', 'acc2', 'old2', null, 'free', null,
     '10.0.0.2', null, 'y')
"""
MODEL = "select * from visits"


def _project(tmp_path: Path, **syncs: dict[str, Any]) -> Project:
    bodies = {
        name: {"model": MODEL, "primary_key": "id", "user_id": "user_id", **body}
        for name, body in syncs.items()
    }
    project = write_project(tmp_path, bodies, users=0)
    sql(project.warehouse, VISITS_DDL)
    sql(project.warehouse, VISITS)
    return project


def _run(project: Project, name: str, gateway: TestGateway) -> Any:
    return run_sync(project, name, rudderstack_for(gateway.url))


def _sent(gateway: TestGateway) -> dict[str, dict[str, Any]]:
    """Events by userId, with messageId and timestamp checked for shape and then dropped."""
    assert gateway.schema_errors == []
    by_user = {}
    for event in gateway.events:
        event = dict(event)
        assert UUID.match(event.pop("messageId")), event
        assert ISO_UTC.match(event.pop("timestamp")), event
        by_user[event["userId"]] = event
    return by_user


# (sync body, the exact event the gateway receives for user u1)
CALLS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "page": (
        {
            "type": "page",
            "name_column": "page",
            "anonymous_id": "anon_id",
            "mapping": {"plan": "plan"},
        },
        {
            "type": "page",
            "name": "Home",
            "properties": {"plan": "pro"},
            "userId": "u1",
            "anonymousId": "a1",
            "context": {"library": LIBRARY},
        },
    ),
    "screen": (
        {"type": "screen", "name_column": "page", "mapping": {"plan": "plan"}},
        {
            "type": "screen",
            "name": "Home",
            "properties": {"plan": "pro"},
            "userId": "u1",
            "context": {"library": LIBRARY},
        },
    ),
    "group": (
        {"type": "group", "group_id": "account", "mapping": {"plan": "plan", "seats": "seats"}},
        {
            "type": "group",
            "groupId": "acc1",
            "traits": {"plan": "pro", "seats": 3},
            "userId": "u1",
            "context": {"library": LIBRARY},
        },
    ),
    "alias": (
        {"type": "alias", "previous_id": "old_id"},
        {"type": "alias", "previousId": "old1", "userId": "u1", "context": {"library": LIBRARY}},
    ),
    "track": (
        {
            "type": "track",
            "events": {"added": {"column": "event_name"}},
            "send_initial_results": True,
            "mapping": {"plan": "plan"},
        },
        {
            "type": "track",
            "event": "Signed Up",
            "properties": {"plan": "pro"},
            "userId": "u1",
            "context": {"library": LIBRARY},
        },
    ),
    "identify": (
        {"type": "identify", "mapping": {"plan": "plan"}, "context": {"ip": "ip"}},
        {
            "type": "identify",
            "userId": "u1",
            "context": {"library": LIBRARY, "ip": "10.0.0.1", "traits": {"plan": "pro"}},
        },
    ),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_each_call_type_sends_the_spec_payload(
    tmp_path: Path, gateway: TestGateway, call: str
) -> None:
    body, expected = CALLS[call]
    project = _project(tmp_path, calls=body)
    _run(project, "calls", gateway)
    sent = _sent(gateway)
    assert set(sent) == {"u1", "u2"}
    assert sent["u1"] == expected
    # the request bodies keep the field order RudderStack's SDKs use: type first
    assert all(next(iter(e)) == "type" for e in gateway.events)


def test_nested_paths_static_context_and_integrations(tmp_path: Path, gateway: TestGateway) -> None:
    project = _project(
        tmp_path,
        pages={
            "type": "page",
            "name_column": "page",
            "mapping": {"address.city": "city", "plan": "plan", "billing.seats": "seats"},
            "static": {"source": "warehouse", "billing.tier": 2, "tags": ["a", None], "on": True},
            "context": {"ip": "ip", "locale": "locale", "campaign.name": "plan"},
            "integrations": {"All": False, "Amplitude": True, "Mixpanel": {"project": "p1"}},
        },
    )
    _run(project, "pages", gateway)
    sent = _sent(gateway)
    assert sent["u1"]["properties"] == {
        "address": {"city": "Berlin"},
        "plan": "pro",
        "billing": {"seats": 3, "tier": 2},
        "source": "warehouse",
        "tags": ["a", None],
        "on": True,
    }
    assert sent["u1"]["context"] == {
        "library": LIBRARY,
        "ip": "10.0.0.1",
        "locale": "de-DE",
        "campaign": {"name": "pro"},
    }
    assert sent["u1"]["integrations"] == {
        "All": False,
        "Amplitude": True,
        "Mixpanel": {"project": "p1"},
    }
    # without exclude_nulls a null value is sent as null, nested or not
    assert sent["u2"]["properties"]["address"] == {"city": None}
    assert sent["u2"]["context"]["locale"] is None


def test_exclude_nulls_leaves_null_fields_out(tmp_path: Path, gateway: TestGateway) -> None:
    project = _project(
        tmp_path,
        traits={
            "type": "identify",
            "mapping": {"address.city": "city", "plan": "plan", "seats": "seats"},
            "static": {"source": None, "kept": "yes"},
            "context": {"ip": "ip", "locale": "locale"},
            "exclude_nulls": True,
        },
    )
    _run(project, "traits", gateway)
    sent = _sent(gateway)
    assert sent["u1"]["context"] == {
        "library": LIBRARY,
        "ip": "10.0.0.1",
        "locale": "de-DE",
        "traits": {"address": {"city": "Berlin"}, "plan": "pro", "seats": 3, "kept": "yes"},
    }
    # u2: city, seats and locale are null; the emptied `address` object goes too
    assert sent["u2"]["context"] == {
        "library": LIBRARY,
        "ip": "10.0.0.2",
        "traits": {"plan": "free", "kept": "yes"},
    }


@pytest.mark.parametrize(
    ("body", "column", "reason"),
    [
        (
            {
                "type": "track",
                "events": {"added": {"column": "event_name"}, "changed": "Changed"},
                "send_initial_results": True,
            },
            "event_name",
            "event name column 'event_name' null or blank",
        ),
        ({"type": "page", "name_column": "page"}, "page", "page name column 'page' null or blank"),
        (
            {"type": "screen", "name_column": "page"},
            "page",
            "screen name column 'page' null or blank",
        ),
        ({"type": "group", "group_id": "account"}, "account", "group ID column 'account'"),
        ({"type": "alias", "previous_id": "old_id"}, "old_id", "previous ID column 'old_id'"),
    ],
    ids=["track event name", "page name", "screen name", "group ID", "alias previous ID"],
)
def test_null_or_blank_call_field_rejects_the_row(
    tmp_path: Path, gateway: TestGateway, body: dict[str, Any], column: str, reason: str
) -> None:
    project = _project(tmp_path, calls=body)
    sql(
        project.warehouse,
        f"""insert into visits (id, user_id, {column}) values (3, 'u3', null), (4, 'u4', ' \t'),
            (5, 'u5', '')""",
    )
    result = _run(project, "calls", gateway)
    sent = _sent(gateway)
    assert set(sent) == {"u1", "u2"}  # never "None" or ""
    diff = asset_metadata(result, "calls", "diff")
    reasons = {r["key"]: r["reason"] for r in diff["rejected_sample"]}
    assert set(reasons) == {"3", "4", "5"}
    assert all(reason in text for text in reasons.values()), reasons
    # once fixed, the row is sent
    sql(project.warehouse, f"update visits set {column} = 'Fixed' where id = 3")
    _run(project, "calls", gateway)
    assert "u3" in _sent(gateway)


def test_alias_without_user_id_in_a_row_is_rejected(tmp_path: Path, gateway: TestGateway) -> None:
    project = _project(
        tmp_path, links={"type": "alias", "previous_id": "old_id", "anonymous_id": "anon_id"}
    )
    sql(project.warehouse, "insert into visits (id, anon_id, old_id) values (3, 'a3', 'old3')")
    result = _run(project, "links", gateway)
    assert set(_sent(gateway)) == {"u1", "u2"}
    (rejected,) = asset_metadata(result, "links", "diff")["rejected_sample"]
    assert rejected["key"] == "3" and "an alias call needs one" in rejected["reason"]


def test_page_sends_added_only_by_default(tmp_path: Path, gateway: TestGateway) -> None:
    project = _project(tmp_path, pages={"type": "page", "name_column": "page"})
    _run(project, "pages", gateway)
    assert len(gateway.events) == 2  # the first run sends the initial set
    sql(project.warehouse, "update visits set page = 'Docs' where id = 1")
    sql(project.warehouse, "delete from visits where id = 2")
    sql(project.warehouse, "insert into visits (id, user_id, page) values (3, 'u3', 'Blog')")
    result = _run(project, "pages", gateway)
    assert [(e["userId"], e["name"]) for e in gateway.events[2:]] == [("u3", "Blog")]
    diff = asset_metadata(result, "pages", "diff")
    assert (diff["changed"], diff["changed_to_send"], diff["removed_to_send"]) == (1, 0, 0)


def test_page_send_on_removed_sends_the_last_values(tmp_path: Path, gateway: TestGateway) -> None:
    project = _project(
        tmp_path,
        pages={
            "type": "page",
            "name_column": "page",
            "send_on": ["removed"],
            "mapping": {"plan": "plan"},
            "context": {"ip": "ip"},
        },
    )
    _run(project, "pages", gateway)
    assert gateway.events == []  # added is not in send_on
    sql(project.warehouse, "delete from visits where id = 1")
    _run(project, "pages", gateway)
    (removed,) = _sent(gateway).values()
    assert removed == {
        "type": "page",
        "name": "Home",
        "properties": {"plan": "pro"},
        "userId": "u1",
        "context": {"library": LIBRARY, "ip": "10.0.0.1"},
    }


def test_group_sends_added_and_changed_by_default(tmp_path: Path, gateway: TestGateway) -> None:
    project = _project(
        tmp_path, accounts={"type": "group", "group_id": "account", "mapping": {"plan": "plan"}}
    )
    _run(project, "accounts", gateway)
    sql(project.warehouse, "update visits set account = 'acc9' where id = 1")
    sql(project.warehouse, "update visits set plan = 'team' where id = 2")
    _run(project, "accounts", gateway)
    again = [(e["userId"], e["groupId"], e["traits"]) for e in gateway.events[2:]]
    assert sorted(again) == [("u1", "acc9", {"plan": "pro"}), ("u2", "acc2", {"plan": "team"})]
    # a removed row sends nothing on a group sync
    sql(project.warehouse, "delete from visits where id = 1")
    _run(project, "accounts", gateway)
    assert len(gateway.events) == 4


@pytest.mark.parametrize(
    ("update", "sends"),
    [
        ("set event_name = 'Renamed'", True),  # the event-name column
        ("set ip = '10.9.9.9'", True),  # a context column
        ("set note = 'other', page = 'Other'", False),  # columns the event does not carry
    ],
    ids=["event name column", "context column", "other columns"],
)
def test_carried_columns_make_a_change(
    tmp_path: Path, gateway: TestGateway, update: str, sends: bool
) -> None:
    project = _project(
        tmp_path,
        events={
            "type": "track",
            "events": {"changed": {"column": "event_name"}},
            "context": {"ip": "ip"},
        },
    )
    _run(project, "events", gateway)
    sql(project.warehouse, f"update visits {update} where id = 1")
    _run(project, "events", gateway)
    sent = _sent(gateway)
    assert set(sent) == ({"u1"} if sends else set())
    if sends:
        assert sent["u1"]["event"] == ("Renamed" if "event_name" in update else "Signed Up")


def test_static_or_integrations_change_is_a_change(tmp_path: Path, gateway: TestGateway) -> None:
    body = {"type": "identify", "static": {"source": "warehouse"}}
    project = _project(tmp_path, traits=body)
    _run(project, "traits", gateway)
    _run(project, "traits", gateway)
    assert len(gateway.events) == 2  # no change, nothing sent
    project = _project(tmp_path, traits={**body, "integrations": {"All": True}})
    _run(project, "traits", gateway)
    assert len(gateway.events) == 4
    project = _project(tmp_path, traits={**body, "integrations": {"All": True}, "static": {}})
    _run(project, "traits", gateway)
    assert len(gateway.events) == 6
    assert gateway.events[-1]["context"]["traits"] == {}


def test_diff_frame_shows_the_call_fields(tmp_path: Path, gateway: TestGateway) -> None:
    project = _project(
        tmp_path,
        accounts={
            "type": "group",
            "group_id": "account",
            "mapping": {"address.city": "city"},
            "context": {"ip": "ip"},
        },
    )
    result = _run(project, "accounts", gateway)
    frame = result.output_for_node("accounts__diff").set_index("id")
    assert frame.loc["1", "groupId"] == "acc1"
    assert frame.loc["1", "address.city"] == "Berlin"
    assert frame.loc["2", "context.ip"] == "10.0.0.2"


def test_track_removed_event_named_by_the_last_delivered_value(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = _project(
        tmp_path,
        events={
            "type": "track",
            "events": {"removed": {"column": "event_name"}},
            "mapping": {"plan": "plan"},
        },
    )
    _run(project, "events", gateway)
    sql(project.warehouse, "delete from visits where id = 2")
    _run(project, "events", gateway)
    (removed,) = _sent(gateway).values()
    assert (removed["event"], removed["properties"]) == ("Upgraded", {"plan": "free"})


def test_removed_row_stored_under_an_older_config_is_still_valid_json(
    tmp_path: Path, gateway: TestGateway
) -> None:
    """The last values of a row were kept with per-row fields; the config then drops them."""
    body = {"type": "track", "events": {"removed": "Gone"}, "mapping": {"plan": "plan"}}
    project = _project(tmp_path, events={**body, "context": {"ip": "ip"}})
    _run(project, "events", gateway)
    project = _project(tmp_path, events=body)
    sql(project.warehouse, "delete from visits where id = 1")
    _run(project, "events", gateway)
    (removed,) = _sent(gateway).values()
    assert (removed["event"], removed["properties"]) == ("Gone", {"plan": "pro"})


HISTORY = """
create or replace table page_history as select * from (values
 (1, 'u1', 'Home', timestamptz '2023-12-31 00:00+00', timestamptz '2024-01-03 12:00+00'),
 (1, 'u1', 'Docs', timestamptz '2024-01-03 12:00+00', null),
 (2, 'u2', 'Blog', timestamptz '2024-01-02 10:00+00', null),
 (3, 'u3', 'Shop', timestamptz '2023-12-30 00:00+00', timestamptz '2024-01-03 08:00+00')
) t(id, user_id, page, valid_from, valid_to)
"""


def test_partitioned_page_sync_sends_each_window(tmp_path: Path, gateway: TestGateway) -> None:
    project = write_project(
        tmp_path,
        {
            "pages": {
                "model": "select id, user_id, page from page_history where valid_from < "
                "$partition_end and (valid_to is null or valid_to >= $partition_end)",
                "primary_key": "id",
                "type": "page",
                "user_id": "user_id",
                "name_column": "page",
                "send_on": ["added", "removed"],
                "partitions": {"start": "2024-01-01", "cadence": "daily"},
            }
        },
        users=0,
    )
    sql(project.warehouse, HISTORY)
    run_sync(
        project, "pages", rudderstack_for(gateway.url), partition_range=("2024-01-01", "2024-01-04")
    )
    assert gateway.schema_errors == []
    sent = sorted((e["timestamp"][:10], e["userId"], e["name"]) for e in gateway.events)
    # windows end the next day; u1's page change on Jan 3 is `changed`, not in send_on
    assert sent == [
        ("2024-01-02", "u1", "Home"),
        ("2024-01-02", "u3", "Shop"),
        ("2024-01-03", "u2", "Blog"),
        ("2024-01-04", "u3", "Shop"),
    ]


def test_context_and_nested_numbers_stay_exact_on_the_wire(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = _project(
        tmp_path,
        traits={
            "type": "identify",
            "model": "select *, 12345678901234567890.120::decimal(38, 3) as amount from visits",
            "mapping": {"billing.amount": "amount"},
            "context": {"ip": "ip", "order.amount": "amount"},
        },
    )
    _run(project, "traits", gateway)
    assert gateway.schema_errors == []
    body = b"".join(r.body or b"" for r in gateway.requests)
    version = LIBRARY_VERSION.encode()
    expected_context = (
        b'"context":{"library":{"name":"rudder_sync","version":"' + version + b'"},'
        b'"ip":"10.0.0.1","order":{"amount":12345678901234567890.120},'
        b'"traits":{"billing":{"amount":12345678901234567890.120}}}'
    )
    assert expected_context in body


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"type": "page", "name_column": "title"}, "'title' (from 'name_column')"),
        ({"type": "group", "group_id": "org"}, "'org' (from 'group_id')"),
        ({"type": "alias", "previous_id": "prev"}, "'prev' (from 'previous_id')"),
        (
            {"type": "track", "events": {"added": {"column": "ev"}}},
            "'ev' (from 'events.added.column')",
        ),
        ({"type": "identify", "context": {"ip": "ip_addr"}}, "'ip_addr' (from 'context.ip')"),
    ],
    ids=["name_column", "group_id", "previous_id", "event name column", "context"],
)
def test_a_missing_call_column_fails_the_run_naming_its_key(
    tmp_path: Path, gateway: TestGateway, body: dict[str, Any], named: str
) -> None:
    project = _project(tmp_path, calls=body)
    result = run_sync(project, "calls", rudderstack_for(gateway.url), raise_on_error=False)
    assert not result.success
    assert any(named in line for line in result.run_logs), named  # type: ignore[attr-defined]
    assert gateway.events == []


def test_dry_run_shows_a_sample_call_and_sends_nothing(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = _project(
        tmp_path,
        screens={
            "type": "screen",
            "name_column": "page",
            "context": {"locale": "locale"},
            "integrations": {"All": True},
        },
    )
    result = run_sync(project, "screens", rudderstack_for(None))
    sample = asset_metadata(result, "screens", "events")["sample_added"]
    assert {k: sample[k] for k in ("type", "name", "properties", "context", "integrations")} == {
        "type": "screen",
        "name": "Home",
        "properties": {},
        "context": {"library": LIBRARY, "locale": "de-DE"},
        "integrations": {"All": True},
    }
    assert gateway.events == []
