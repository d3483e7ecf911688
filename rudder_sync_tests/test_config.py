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
