"""Config errors fail at load time and name the sync, the key and the fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from rudder_sync.config import ConfigError, load_config, parse_config

from .helpers import IDENTIFY_SYNC, TRACK_SYNC


def _config(**syncs: dict[str, Any]) -> dict[str, Any]:
    return {"warehouse": "w.duckdb", "state": "st", "syncs": syncs}


def _track(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(TRACK_SYNC)
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def _identify(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(IDENTIFY_SYNC)
    body.update({k: v for k, v in changes.items() if v is not ...})
    for key in [k for k, v in changes.items() if v is ...]:
        body.pop(key, None)
    return body


BAD_CONFIGS: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "unknown sync key",
        _config(s1=_track(primry_key="id")),
        ["sync 's1'", "unknown key 'primry_key'", "did you mean 'primary_key'"],
    ),
    (
        "missing primary key",
        _config(s1=_track(primary_key=...)),
        ["sync 's1'", "'primary_key' is missing", "Fix"],
    ),
    ("missing model", _config(s1=_track(model=...)), ["sync 's1'", "'model' is missing"]),
    ("empty model", _config(s1=_track(model="   ")), ["sync 's1'", "'model'", "empty"]),
    (
        "bad type",
        _config(s1=_track(type="pageview")),
        ["sync 's1'", "key 'type'", "track, identify, page, screen, group or alias"],
    ),
    (
        "events on identify",
        _config(s1=_identify(events={"added": "X"})),
        ["sync 's1'", "key 'events'", "track syncs only", "Fix"],
    ),
    (
        "send_initial_results on identify",
        _config(s1=_identify(send_initial_results=True)),
        ["sync 's1'", "'send_initial_results'", "always sends the initial"],
    ),
    (
        "no ID column",
        _config(s1=_track(user_id=..., anonymous_id=...)),
        ["sync 's1'", "no ID column", "'user_id'", "'anonymous_id'"],
    ),
    ("blank ID column", _config(s1=_track(user_id=" ")), ["sync 's1'", "'user_id' is blank"]),
    (
        "track without events",
        _config(s1=_track(events=...)),
        ["sync 's1'", "key 'events' is missing", "User Signed Up"],
    ),
    (
        "unknown change type",
        _config(s1=_track(events={"updated": "X"})),
        ["sync 's1'", "events.updated", "added, changed and removed"],
    ),
    (
        "blank event name",
        _config(s1=_track(events={"added": " "})),
        ["sync 's1'", "'events.added' is blank"],
    ),
    (
        "mapping not a mapping",
        _config(s1=_track(mapping=["email"])),
        ["sync 's1'", "key 'mapping'", "map event field names"],
    ),
    (
        "send_initial_results not a bool",
        _config(s1=_track(send_initial_results="maybe")),
        ["sync 's1'", "send_initial_results", "true or false"],
    ),
    (
        "CamelCase name",
        _config(UserEvents=_track()),
        ["sync 'UserEvents'", "snake_case", "'user_events'"],
    ),
    ("name with dash", _config(**{"user-events": _track()}), ["sync 'user-events'", "snake_case"]),
    ("name starting with digit", _config(**{"1sync": _track()}), ["sync '1sync'", "snake_case"]),
    (
        "SQL syntax error",
        _config(s1=_track(model="selec id from users")),
        ["sync 's1'", "key 'model' is not valid SQL", "selec"],
    ),
    (
        "two statements",
        _config(s1=_track(model="select 1 as id; select 2 as id")),
        ["sync 's1'", "exactly one query"],
    ),
    (
        "not a select",
        _config(s1=_track(model="delete from users")),
        ["sync 's1'", "must be a SELECT"],
    ),
    (
        "unknown top-level key",
        {"syncs": {"s1": _track()}, "warehous": "x"},
        ["unknown key 'warehous'", "did you mean 'warehouse'"],
    ),
    ("no syncs", {"warehouse": "w.duckdb"}, ["'syncs' is missing"]),
    ("empty syncs", {"syncs": {}}, ["'syncs' must map sync names"]),
    ("sync body not a mapping", _config(s1="select 1"), ["sync 's1'", "expected a mapping"]),
    (
        "unknown delivery key",
        {"syncs": {"s1": _track()}, "delivery": {"max_inflight": 2}},
        ["delivery", "unknown key 'max_inflight'", "did you mean 'max_in_flight'"],
    ),
    (
        "request body over the gateway limit",
        {"syncs": {"s1": _track()}, "delivery": {"max_request_kb": 9000}},
        ["delivery", "max_request_kb", "at most 4000"],
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(raw, expected) for _, raw, expected in BAD_CONFIGS],
    ids=[name for name, _, _ in BAD_CONFIGS],
)
def test_bad_config_names_sync_key_and_fix(raw: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir=Path("/tmp"))
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_duplicate_sync_names_in_yaml_fail(tmp_path: Path) -> None:
    # YAML itself keeps the last of two equal keys; names differing only in case clash for Dagster.
    path = tmp_path / "c.yaml"
    path.write_text(
        "syncs:\n"
        "  users:\n    model: select 1 as id, 'u' as uid\n    primary_key: id\n"
        "    type: identify\n    user_id: uid\n"
        "  Users:\n    model: select 1 as id, 'u' as uid\n    primary_key: id\n"
        "    type: identify\n    user_id: uid\n"
    )
    with pytest.raises(ConfigError, match="sync 'Users'"):
        load_config(path)


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    body = (
        "    model: select 1 as id, 'u' as uid\n    primary_key: id\n    type: identify\n"
        "    user_id: uid\n"
    )
    path.write_text("syncs:\n  users:\n" + body + "  users:\n" + body)
    with pytest.raises(ConfigError, match="duplicate key 'users'"):
        load_config(path)


def test_valid_config_resolves_paths_against_yaml_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "c.yaml"
    path.parent.mkdir()
    path.write_text(
        "warehouse: wh.duckdb\nstate: .state\nsyncs:\n  users:\n"
        "    model: select 1 as id, 'u' as uid\n    primary_key: id\n    type: identify\n"
        "    user_id: uid\n"
    )
    config = load_config(path)
    assert config.warehouse.path == tmp_path / "conf" / "wh.duckdb"
    assert config.state == tmp_path / "conf" / ".state"
    sync = config.syncs["users"]
    assert sync.type == "identify" and sync.sends("added") and not sync.sends("removed")


def test_track_sends_only_configured_change_types() -> None:
    config = parse_config(_config(s1=_track(events={"added": "A", "removed": "R"})))
    sync = config.syncs["s1"]
    assert [sync.sends(c) for c in ("added", "changed", "removed")] == [True, False, True]
    assert sync.event_name("removed") == "R"
    assert sync.carried_columns == ["user_id", "anon_id", "email", "plan"]


def test_delivery_settings_reach_the_resource(tmp_path: Path, monkeypatch: Any) -> None:
    from rudder_sync.definitions import rudderstack_from_env

    config = parse_config({"syncs": {"s1": _track()}, "delivery": {"retry_max_seconds": 7}})
    monkeypatch.delenv("RUDDERSTACK_DATA_PLANE_URL", raising=False)
    resource = rudderstack_from_env(config.delivery)
    assert resource.dry_run and resource.retry_max_seconds == 7 and resource.max_in_flight == 4


def test_missing_file_names_env_var(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RUDDER_SYNC_CONFIG"):
        load_config(tmp_path / "nope.yaml")


def test_packaged_demo_config_is_valid() -> None:
    from rudder_sync.config import default_config_path

    config = load_config(default_config_path())
    assert {s.type for s in config.syncs.values()} == {"track", "identify"}


# -- call types and fields (issue 11) ---------------------------------------------------------

_BASE = {"model": "select * from visits", "primary_key": "id", "user_id": "uid"}


def _call(type_: str, **changes: Any) -> dict[str, Any]:
    """A valid sync of the call type, with `changes` applied (`...` removes a key)."""
    body: dict[str, Any] = {**_BASE, "type": type_}
    body.update(
        {
            "page": {"name_column": "page"},
            "screen": {"name_column": "page"},
            "group": {"group_id": "account"},
            "alias": {"previous_id": "old_id"},
            "track": {"events": {"added": "A"}},
        }.get(type_, {})
    )
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return _config(s1=body)


CALL_TYPE_CONFIGS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("page without name_column", _call("page", name_column=...), ["'name_column' is missing"]),
    ("screen without name_column", _call("screen", name_column=...), ["'name_column' is missing"]),
    ("group without group_id", _call("group", group_id=...), ["'group_id' is missing"]),
    ("alias without previous_id", _call("alias", previous_id=...), ["'previous_id' is missing"]),
    ("name_column on track", _call("track", name_column="page"), ["'name_column' is only for"]),
    ("name_column on group", _call("group", name_column="page"), ["'name_column' is only for"]),
    ("group_id on identify", _call("identify", group_id="account"), ["'group_id' is only for"]),
    ("previous_id on page", _call("page", previous_id="old"), ["'previous_id' is only for"]),
    ("blank group_id", _call("group", group_id=" "), ["key 'group_id' is blank"]),
    ("events on page", _call("page", events={"added": "A"}), ["'events' is for track syncs"]),
    (
        "send_initial_results on group",
        _call("group", send_initial_results=True),
        ["'send_initial_results' is for track syncs", "always sends the initial"],
    ),
    ("send_on on track", _call("track", send_on=["added"]), ["'send_on' is not for track"]),
    ("send_on unknown value", _call("page", send_on=["viewed"]), ["key 'send_on.0'", "added"]),
    ("send_on empty", _call("page", send_on=[]), ["'send_on' is empty"]),
    ("send_on removed on group", _call("group", send_on=["removed"]), ["'removed' is for page"]),
    ("send_on removed on alias", _call("alias", send_on=["removed"]), ["'removed' is for page"]),
    (
        "send_on removed on identify",
        _call("identify", send_on=["added", "removed"]),
        ["'removed' is for page"],
    ),
    (
        "alias without user_id",
        _call("alias", user_id=..., anonymous_id="anon"),
        ["'user_id' is missing", "alias"],
    ),
    ("mapping on alias", _call("alias", mapping={"a": "a"}), ["'mapping' is not allowed on alias"]),
    (
        "event name column not a column mapping",
        _call("track", events={"added": {"col": "event"}}),
        ["key 'events'", "{column: <column>}"],
    ),
    (
        "blank event name column",
        _call("track", events={"added": {"column": " "}}),
        ["'events.added.column' is blank"],
    ),
    (
        "integrations All not a boolean",
        _call("track", integrations={"All": "false"}),
        ["'integrations.All' must be true or false", "routes the event to no destination"],
    ),
    (
        "integrations value not a boolean or mapping",
        _call("track", integrations={"All": False, "Amplitude": "yes"}),
        ["'integrations.Amplitude' must be true, false or a mapping"],
    ),
    (
        "integrations not a mapping",
        _call("track", integrations=["Amplitude"]),
        ["key 'integrations'", "All: false"],
    ),
    (
        "mapping paths collide",
        _call("track", mapping={"address": "a", "address.city": "c"}),
        ["'mapping.address' and 'mapping.address.city' collide", "rename one"],
    ),
    (
        "static path inside a mapped value",
        _call("page", mapping={"plan": "p"}, static={"plan.tier": 2}),
        ["'mapping.plan' and 'static.plan.tier' collide"],
    ),
    (
        "static and mapping set one field",
        _call("group", mapping={"plan": "p"}, static={"plan": "pro"}),
        ["'mapping.plan' and 'static.plan' set the same field"],
    ),
    ("empty path part", _call("track", mapping={"a..b": "c"}), ["'a..b' with an empty part"]),
    ("context library", _call("track", context={"library": "lib"}), ["writes context.library"]),
    ("context traits", _call("identify", context={"traits.x": "x"}), ["writes context.traits"]),
    (
        "context paths collide",
        _call("page", context={"campaign": "c", "campaign.name": "n"}),
        ["'context.campaign' and 'context.campaign.name' collide"],
    ),
    ("context blank column", _call("page", context={"ip": " "}), ["'context.ip' names a blank"]),
    (
        "exclude_nulls not a bool",
        _call("page", exclude_nulls="sometimes"),
        ["exclude_nulls", "true or"],
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(raw, expected) for _, raw, expected in CALL_TYPE_CONFIGS],
    ids=[name for name, _, _ in CALL_TYPE_CONFIGS],
)
def test_call_type_config_errors(raw: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir=Path("/tmp"))
    message = str(info.value)
    for fragment in [*expected, "sync 's1'", "Fix:"]:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("type_", ["track", "identify", "page", "screen", "group", "alias"])
def test_every_call_type_loads_with_its_defaults(type_: str) -> None:
    sync = parse_config(_call(type_)).syncs["s1"]
    sends = [sync.sends(c) for c in ("added", "changed", "removed")]
    expected = {
        "track": [True, False, False],
        "page": [True, False, False],
        "screen": [True, False, False],
    }.get(type_, [True, True, False])
    assert sends == expected


def test_send_on_and_field_columns() -> None:
    sync = parse_config(
        _call(
            "page",
            send_on=["added", "removed"],
            mapping={"address.city": "city"},
            static={"plan.tier": 2, "since": "2024-01-01"},
            context={"ip": "ip_address", "campaign.name": "campaign"},
            integrations={"All": False, "Amplitude": True},
        )
    ).syncs["s1"]
    assert [sync.sends(c) for c in ("added", "changed", "removed")] == [True, False, True]
    # every column the event carries is part of its content, in a stable order
    assert sync.carried_columns == ["uid", "city", "page", "ip_address", "campaign"]
    track = parse_config(
        _call("track", events={"added": {"column": "event"}, "changed": "Changed"})
    ).syncs["s1"]
    assert track.event_name("added") is None and track.event_name("changed") == "Changed"
    assert track.event_columns == {"added": "event"} and "event" in track.required_columns
