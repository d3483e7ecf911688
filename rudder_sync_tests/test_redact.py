"""Privacy: values listed under `redact:` appear nowhere outside RudderStack.

The end-to-end test runs a sync with recognisable e-mails, user IDs and keys (in-process runs on an
on-disk DAGSTER_HOME, a dry run then a delivery with a rejected event and a rejected row, and a
`dagster job execute`), then searches Dagster's storage (sqlite files, decompressing what Dagster
compresses, and every event of every run), the logs (captured output and the event log) and the
files the IO manager stored, for the raw values; the test gateway still receives them. The same
run without `redact` must find them in each of those places, or the search proves nothing.
"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import zlib
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from dagster import DagsterInstance, materialize
from dagster._core.instance.ref import InstanceRef

from rudder_sync.assets import IO_MANAGER_KEY, build_sync_assets
from rudder_sync.component import RudderstackSyncAttributes, RudderstackSyncComponent
from rudder_sync.config import ConfigError, parse_config
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.redact import BLANK, VECTORIZED_ROWS, redaction_of
from rudder_sync.warehouses import build_warehouse

from .gateway import TestGateway
from .helpers import DAGSTER, WRITE_KEY, Project, asset_metadata, rudderstack_for, table_rows

SYNC = "traits"
USERS = 4
# Recognisable values: no byte sequence of Dagster's own holds them by chance.
KEYS = [f"pk-7c1e-{i:04d}" for i in range(1, USERS + 2)]
USER_IDS = [f"uid-3f9a-{i:04d}" for i in range(1, USERS + 1)]
EMAILS = [f"alice.{i:04d}@private-example.org" for i in range(1, USERS + 1)]
RAW = {"key": KEYS, "userId": USER_IDS, "email": EMAILS}
REJECTED_USER = USER_IDS[1]  # the gateway refuses its event: rejected, then quarantined


def _sync(**extra: Any) -> dict[str, Any]:
    return {
        "model": "select id, user_id, anon_id, email, plan from users",
        "primary_key": "id",
        "type": "identify",
        "user_id": "user_id",
        "anonymous_id": "anon_id",
        "mapping": {"email": "email", "plan": "plan"},
        "max_attempts": 1,
        **extra,
    }


def _project(root: Path, top: dict[str, Any], sync: dict[str, Any]) -> Project:
    """USERS users with IDs, plus one row without any ID (a rejected row, its key shown)."""
    root.mkdir(parents=True)
    path = root / "rudder_sync.yaml"
    body = {"warehouse": "warehouse.duckdb", "state": "state", **top, "syncs": {SYNC: sync}}
    path.write_text(yaml.safe_dump(body))
    project = Project(root=root, config_path=path)
    rows = [(KEYS[i], USER_IDS[i], f"an-{i}", EMAILS[i], "free") for i in range(USERS)]
    rows.append((KEYS[USERS], None, None, "nobody@none.invalid", "free"))
    with duckdb.connect(str(project.warehouse)) as conn:
        conn.execute(
            "create table users (id varchar, user_id varchar, anon_id varchar, email varchar, "
            "plan varchar)"
        )
        conn.executemany("insert into users values (?, ?, ?, ?, ?)", rows)
    return project


# -- finding the values ----------------------------------------------------------------------------


def _found(text: str | bytes, where: str) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [
        f"{where}: {kind}"
        for kind, values in RAW.items()
        if any(v.encode() in data for v in values)
    ]


def _blob(value: Any) -> bytes:
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)
        try:
            return raw + zlib.decompress(raw)
        except zlib.error:
            return raw
    return str(value).encode("utf-8", "surrogateescape")


def find_in_files(root: Path) -> list[str]:
    """Every file under `root` holding a raw value: its bytes, the rows of a sqlite file
    (decompressed), the values of a Parquet file (compressed on disk)."""
    found: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += _found(data, str(path))
        if data.startswith(b"SQLite format 3\x00"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                tables = conn.execute("select name from sqlite_master where type='table'")
                for (table,) in tables.fetchall():
                    for row in conn.execute(f'select * from "{table}"'):
                        found += _found(b" ".join(_blob(v) for v in row), f"{path} {table}")
        elif path.suffix == ".parquet":
            found += _found(pd.read_parquet(io.BytesIO(data)).to_csv(), f"{path} (values)")
    return found


def find_in_instance(instance: DagsterInstance) -> list[str]:
    """Every log message, error and metadata value of every run of the instance."""
    found: list[str] = []
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            found += _found(entry.user_message, f"run {run.run_id} log")
            data = getattr(entry.dagster_event, "event_specific_data", None)
            for name in ("materialization", "asset_check_evaluation"):
                if (part := getattr(data, name, None)) is not None:
                    values = {k: getattr(v, "value", v) for k, v in part.metadata.items()}
                    found += _found(repr(values), f"run {run.run_id} {name}")
    return found


def _materialize(
    project: Project, instance: DagsterInstance, url: str | None, dry_run: bool
) -> Any:
    config = project.config()
    result = materialize(
        build_sync_assets(config.syncs[SYNC], config.state),
        resources={
            "warehouse": build_warehouse(config.warehouse),
            "rudderstack": rudderstack_for(url),
            IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
        },
        instance=instance,
        run_config={"ops": {f"{SYNC}__events": {"config": {"dry_run": dry_run}}}},
    )
    assert result.success
    return result


def _job(project: Project, url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUDDER", "DAGSTER_"))}
    env.update(
        RUDDER_SYNC_CONFIG=str(project.config_path),
        RUDDERSTACK_DATA_PLANE_URL=url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
        DAGSTER_HOME=str(home),
    )
    return subprocess.run(
        [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC],
        env=env,
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _run_everything(tmp_path: Path, top: dict[str, Any], sync: dict[str, Any]) -> dict[str, Any]:
    """In-process: a dry run, then a delivery; then `dagster job execute` of a second project
    (on a DAGSTER_HOME of its own: the first one's deliveries would make its new state look
    lost). What each place holds, and what the gateway received."""
    home, cli_home = tmp_path / "dagster_home", tmp_path / "dagster_home_cli"
    home.mkdir()
    cli_home.mkdir()
    with TestGateway(write_key=WRITE_KEY) as gateway:
        gateway.reject_events_where(lambda e: e.get("userId") == REJECTED_USER, "invalid event")
        instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
        project = _project(tmp_path / "in_process", top, sync)
        dry = _materialize(project, instance, gateway.url, dry_run=True)
        delivered = _materialize(project, instance, gateway.url, dry_run=False)
        done = _job(_project(tmp_path / "cli", top, sync), gateway.url, cli_home)
        assert done.returncode == 0, done.stderr[-3000:]
        events = list(gateway.events)
    found = {
        "event log": find_in_instance(instance),
        "cli output": _found(done.stdout + done.stderr, "dagster job execute output"),
        "dagster storage": find_in_files(home) + find_in_files(cli_home),
        "stored frames": find_in_files(project.state_dir / "outputs")
        + find_in_files(tmp_path / "cli" / "state" / "outputs"),
    }
    instance.dispose()
    return {"found": found, "events": events, "dry": dry, "delivered": delivered}


def _assert_delivered_real_values(events: list[dict[str, Any]]) -> None:
    """The events the gateway accepted carry the real values (all users but the refused one)."""
    accepted = {e["userId"]: e["context"]["traits"]["email"] for e in events}
    expected = dict(zip(USER_IDS, EMAILS, strict=True))
    del expected[REJECTED_USER]
    assert accepted == expected, accepted


@pytest.mark.slow
def test_redacted_values_appear_nowhere_but_in_the_events(tmp_path: Path) -> None:
    ran = _run_everything(tmp_path, {"redact": ["email"]}, _sync(redact=["user_id", "id"]))
    leaks = [hit for hits in ran["found"].values() for hit in hits]
    assert not leaks, "raw values outside RudderStack:\n" + "\n".join(leaks)
    _assert_delivered_real_values(ran["events"])

    # what the user sees instead: stable masks, the same for one value in every place
    sync = parse_config(
        {"redact": ["email"], "syncs": {SYNC: _sync(redact=["user_id", "id"])}}
    ).syncs[SYNC]
    redaction = redaction_of(sync)
    sample = asset_metadata(ran["dry"], SYNC, "events")["sample_added"]
    user = [redaction.mask(u, "userId") for u in USER_IDS].index(sample["userId"])
    traits = sample["context"]["traits"]
    assert traits == {"email": redaction.mask(EMAILS[user], "email"), "plan": "free"}
    diff_meta = asset_metadata(ran["delivered"], SYNC, "diff")
    assert diff_meta["redacted"] == "user_id, id, email"
    preview = table_rows(diff_meta["preview"])
    assert {row["id"] for row in preview} == {redaction.key(k)[:9] + "…" for k in KEYS[:USERS]}
    assert diff_meta["rejected_sample"][0]["key"] == redaction.key(KEYS[USERS])
    events_meta = asset_metadata(ran["delivered"], SYNC, "events")
    quarantined = {row["key"] for row in events_meta["quarantined_rows"]}
    assert redaction.key(KEYS[1]) in quarantined
    assert redaction.key(KEYS[1]).startswith("sha256:") and len(redaction.key(KEYS[1])) == 19


@pytest.mark.slow
def test_without_redact_the_search_finds_every_value(tmp_path: Path) -> None:
    """The control: the same runs without `redact` leave the values in every place searched."""
    ran = _run_everything(tmp_path, {}, _sync())
    for place, hits in ran["found"].items():
        kinds = {hit.rsplit(": ", 1)[1] for hit in hits}
        expected = {"key", "email", "userId"} if place != "cli output" else {"key"}
        assert expected <= kinds, f"{place}: found only {sorted(kinds)}"
    _assert_delivered_real_values(ran["events"])


def test_store_frames_false_keeps_columns_and_no_rows(tmp_path: Path) -> None:
    project = _project(tmp_path / "p", {"store_frames": False}, _sync())
    with TestGateway(write_key=WRITE_KEY) as gateway:
        result = _materialize(project, DagsterInstance.ephemeral(), gateway.url, dry_run=False)
        assert len(gateway.events) == USERS
    diff = pd.read_parquet(project.state_dir / "outputs" / SYNC / "diff" / "latest.parquet")
    events = pd.read_parquet(project.state_dir / "outputs" / SYNC / "events" / "latest.parquet")
    assert diff.empty and {"id", "user_id", "email"} <= set(diff.columns)
    assert events.empty and {"id", "status", "message_id"} <= set(events.columns)
    metadata = asset_metadata(result, SYNC, "diff")
    assert metadata["added"] == USERS and metadata["dagster/row_count"] == USERS
    assert "store_frames: false" in metadata["output_frame"]


def test_redact_all_blanks_values_and_hashes_keys(tmp_path: Path) -> None:
    project = _project(tmp_path / "p", {"redact": "all"}, _sync())
    result = _materialize(project, DagsterInstance.ephemeral(), None, dry_run=True)
    sample = asset_metadata(result, SYNC, "events")["sample_added"]
    assert sample["userId"] == sample["anonymousId"] == BLANK
    assert sample["context"]["traits"] == {"email": BLANK, "plan": BLANK}
    diff = pd.read_parquet(project.state_dir / "outputs" / SYNC / "diff" / "latest.parquet")
    assert set(diff["email"]) == {BLANK}
    assert all(key.startswith("sha256:") for key in diff["id"])
    assert len(set(diff["id"])) == USERS  # rows stay apart


@pytest.mark.parametrize(
    ("top", "sync_redact", "message"),
    [
        (
            {},
            ["emial"],
            "sync 'traits': key 'redact' names 'emial', which is no event field or "
            "model column of the sync (did you mean 'email'?)",
        ),
        (
            {"redact": ["phone"]},
            None,
            "key 'redact' names 'phone', which is no event field or model column of any sync",
        ),
        ({}, "email", "key 'redact' must be a list of event fields or model columns, or 'all'"),
        ({"store_frames": "no"}, None, "key 'store_frames' must be true or false"),
    ],
)
def test_bad_redact_keys_fail_at_load_in_one_line(
    top: dict[str, Any], sync_redact: Any, message: str
) -> None:
    extra = {} if sync_redact is None else {"redact": sync_redact}
    with pytest.raises(ConfigError) as caught:
        parse_config({**top, "syncs": {SYNC: _sync(**extra)}})
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert "Fix:" in str(caught.value)


def test_names_are_fields_or_columns_and_masks_are_stable() -> None:
    """`email` (field and column), `traits.email`, `user_id` (column) and `userId` (field)
    name the same places; the mask depends on the sync and the value only."""

    def places(names: list[str], name: str = SYNC) -> frozenset[str]:
        return redaction_of(parse_config({"syncs": {name: _sync(redact=names)}}).syncs[name]).places

    assert places(["email"]) == places(["traits.email"]) == frozenset({"email"})
    assert places(["user_id"]) == places(["userId"]) == frozenset({"userId"})
    sync = parse_config({"syncs": {SYNC: _sync(redact=["email"])}}).syncs[SYNC]
    redaction = redaction_of(sync)
    assert redaction.mask("a@b.c", "email") == redaction.mask("a@b.c", "email")
    assert redaction.mask("a@b.c", "email") != redaction.mask("a@b.d", "email")
    assert redaction.mask(None, "email") is None and redaction.mask("x", "plan") == "x"
    other = parse_config({"syncs": {"other": _sync(redact=["email"])}}).syncs["other"]
    assert redaction_of(other).mask("a@b.c", "email") != redaction.mask("a@b.c", "email")


def test_component_takes_redact_and_store_frames(tmp_path: Path) -> None:
    """The Component's top level takes the keys as the sync YAML does, and its schema has them."""
    component = RudderstackSyncComponent(
        syncs={SYNC: _sync(redact=["id"])}, redact=["email"], store_frames=False
    )
    sync = component.project(tmp_path).syncs[SYNC]
    assert (sync.redact, sync.store_frames) == (["id", "email"], False)
    properties = RudderstackSyncAttributes.model_json_schema()["properties"]
    assert {"redact", "store_frames"} <= set(properties)
    with pytest.raises(ConfigError, match="did you mean 'email'"):
        RudderstackSyncComponent(syncs={SYNC: _sync()}, redact=["emails"]).project(tmp_path)


def test_long_columns_are_masked_as_each_value_is() -> None:
    """DuckDB hashes long text and integer columns: the same masks as `mask` gives one value."""
    sync = parse_config({"syncs": {SYNC: _sync(redact=["email", "id", "plan"])}}).syncs[SYNC]
    redaction = redaction_of(sync)
    rows = VECTORIZED_ROWS + 5
    emails = [None if i % 7 == 0 else f"é{i}@x.org" for i in range(rows)]
    frame = pd.DataFrame(
        {
            "id": pd.Series(range(rows), dtype="int64"),
            "change_type": "added",
            "will_send": True,
            "message_id": "m",
            "timestamp": "t",
            "user_id": "u",
            "anonymous_id": "a",
            "email": pd.Series(emails, dtype=pd.ArrowDtype(pa.string())),
            "plan": [True] * rows,
        }
    )
    masked = redaction.frame(frame, ["email", "plan"])
    shown = [None if pd.isna(v) else v for v in masked["email"]]
    assert shown == [redaction.mask(v, "email") for v in emails]
    assert not pd.api.types.is_object_dtype(masked["email"].dtype)  # still stored as Parquet
    assert list(masked["id"]) == [redaction.key(i) for i in range(rows)]
    assert set(masked["plan"]) == {redaction.mask(True, "plan")}
    assert [None if pd.isna(v) else v for v in frame["email"]] == emails  # input as it was
