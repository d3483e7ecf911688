"""Security: the write key never leaks, transport security holds, SQL stays the user's own.

The key test runs successful and failing syncs (`dagster job execute` and in-process runs on one
temporary DAGSTER_HOME) with a recognisable key, then searches everything they left behind:
output, Dagster's storage (decompressing what it compresses), the state folders, the stored
outputs and every materialization's metadata.
"""

from __future__ import annotations

import base64
import copy
import gc
import hashlib
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from dagster import DagsterInstance, EnvVar, ExecuteInProcessResult, materialize
from dagster._core.instance.ref import InstanceRef

from rudder_sync.assets import IO_MANAGER_KEY, build_sync_assets
from rudder_sync.config import ConfigError, load_config
from rudder_sync.definitions import rudderstack_from_env
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.rudderstack import RudderstackResource
from rudder_sync.warehouses import build_warehouse

from .gateway import TestGateway
from .helpers import (
    IDENTIFY_SYNC,
    FixedPortGateway,
    Project,
    failure_text,
    rudderstack_for,
    run_sync,
    sql,
    write_project,
)

DAGSTER = str(Path(sys.executable).with_name("dagster"))
SECRET = "rs-wk-Q7f3a9c2e1b-S3CR3T-do-not-leak"
SECRET_FORMS = {
    "key": SECRET.encode(),
    "basic token": base64.b64encode(f"{SECRET}:".encode()),
    "base64 key": base64.b64encode(SECRET.encode()),
}
URL_ENV, KEY_ENV = "RUDDERSTACK_DATA_PLANE_URL", "RUDDERSTACK_WRITE_KEY"
SYNC = "traits"


# -- finding the secret anywhere ------------------------------------------------------------------


def _hits(data: bytes, where: str) -> list[str]:
    return [f"{where}: {name}" for name, form in SECRET_FORMS.items() if form in data]


def _value_bytes(value: Any) -> bytes:
    """A stored value as bytes, decompressed when it is zlib data (Dagster's snapshots)."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw + zlib.decompress(raw)
        except zlib.error:
            return raw
    return str(value).encode("utf-8", "surrogateescape")


def _sqlite_hits(path: Path) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        found = []
        for table in tables:
            for row in conn.execute(f'select * from "{table}"'):
                for value in row:
                    found += _hits(_value_bytes(value), f"{path} table {table}")
        return found


def _duckdb_hits(path: Path) -> list[str]:
    """DuckDB compresses strings on disk: search the values, not only the bytes."""
    gc.collect()  # in-process runs: let go of any cursor still waiting for the collector
    with duckdb.connect(str(path), read_only=True) as conn:
        tables = [r[0] for r in conn.execute("select table_name from duckdb_tables()").fetchall()]
        found = []
        for table in tables:
            for row in conn.execute(f'select * from "{table}"').fetchall():
                found += _hits(_value_bytes(row), f"{path} table {table}")
        return found


def find_secret(root: Path) -> list[str]:
    """Every place under `root` holding the key, its Basic token or its base64 form."""
    found: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += _hits(data, str(path))
        if data.startswith(b"SQLite format 3\x00"):
            found += _sqlite_hits(path)
        elif path.suffix == ".duckdb" and data[8:12] == b"DUCK":
            found += _duckdb_hits(path)
    return found


def metadata_hits(instance: DagsterInstance) -> tuple[int, list[str]]:
    """Search every event of every run: messages, errors and materialization metadata."""
    found, materializations = [], 0
    for run in instance.get_runs():
        found += _hits(_value_bytes(run.run_config), f"run {run.run_id} config")
        for entry in instance.all_logs(run.run_id):
            found += _hits(_value_bytes(entry.user_message), f"run {run.run_id} log")
            event = entry.dagster_event
            if event is None:
                continue
            data = event.event_specific_data
            found += _hits(_value_bytes(getattr(data, "error", "")), f"run {run.run_id} error")
            materialization = getattr(data, "materialization", None)
            if materialization is not None:
                materializations += 1
                for key, value in materialization.metadata.items():
                    where = f"run {run.run_id} {materialization.asset_key} {key}"
                    found += _hits(_value_bytes(getattr(value, "value", value)), where)
    return materializations, found


def test_secret_finder_finds_what_it_must(tmp_path: Path) -> None:
    """The oracle: raw files, compressed sqlite blobs and DuckDB strings."""
    (tmp_path / "a.log").write_text(f"Authorization: Basic {SECRET_FORMS['basic token'].decode()}")
    with sqlite3.connect(tmp_path / "b.db") as conn:
        conn.execute("create table t (body blob)")
        conn.execute("insert into t values (?)", [zlib.compress(f"x{SECRET}x".encode())])
    with duckdb.connect(str(tmp_path / "c.duckdb")) as conn:
        conn.execute("create table t as select repeat(?, 200) as v from range(5000)", [SECRET])
    found = " ".join(find_secret(tmp_path))
    assert "a.log: basic token" in found
    assert "b.db table t: key" in found
    assert "c.duckdb table t: key" in found


# -- the write key appears nowhere ----------------------------------------------------------------


def _redacted(text: str) -> str:
    return text.replace(SECRET, "***").replace(SECRET_FORMS["basic token"].decode(), "***")


def _project(root: Path, name: str) -> Project:
    """A project with its own state (each data plane gets its own), 5 users, and its own sync
    name: one instance records them all, and a sync it saw deliver must not lose its state."""
    return write_project(root / name, {f"{SYNC}_{name}": IDENTIFY_SYNC}, users=5)


def _sync_of(project: Project) -> str:
    return next(iter(project.config().syncs))


def _job(project: Project, url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUDDER", "DAGSTER_"))}
    env.update(
        {
            "RUDDER_SYNC_CONFIG": str(project.config_path),
            URL_ENV: url,
            KEY_ENV: SECRET,
            "DAGSTER_HOME": str(home),
        }
    )
    return subprocess.run(
        [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", _sync_of(project)],
        env=env,
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _in_process(project: Project, instance: DagsterInstance, **settings: Any) -> Any:
    """A run whose key is read through EnvVar, recorded in the on-disk instance."""
    config = project.config()
    resource = RudderstackResource(
        data_plane_url=EnvVar(URL_ENV), write_key=EnvVar(KEY_ENV), **settings
    )
    return materialize(
        build_sync_assets(config.syncs[_sync_of(project)], config.state),
        resources={
            "warehouse": build_warehouse(config.warehouse),
            "rudderstack": resource,
            IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
        },
        instance=instance,
        raise_on_error=False,
    )


@pytest.mark.slow
def test_write_key_appears_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    echo = f"bad event from key {SECRET} (Basic {SECRET_FORMS['basic token'].decode()})"
    outputs: list[str] = []
    outcomes: dict[str, bool] = {}

    # `dagster job execute`: a success with rejected events whose message echoes the key, a 401
    with TestGateway(write_key=SECRET) as gateway:
        gateway.reject_events_where(lambda e: e.get("userId") == "u2", echo)
        ok = _project(tmp_path, "ok")
        done = _job(ok, gateway.url, home)
        outputs += [done.stdout, done.stderr]
        outcomes["success"] = done.returncode == 0
        assert len(gateway.events) == 4, done.stderr[-3000:]
        with duckdb.connect(str(ok.state_dir / f"{_sync_of(ok)}.duckdb"), read_only=True) as conn:
            errors = conn.execute("select error from delivery_log where error is not null")
            assert [r[0] for r in errors.fetchall()] == [f"gateway 400: {_redacted(echo)}"]
    with TestGateway(write_key="another-key") as gateway:
        refused = _job(_project(tmp_path, "401"), gateway.url, home)
        outputs += [refused.stdout, refused.stderr]
        outcomes["401"] = refused.returncode == 0
        assert "the write key was rejected (401" in refused.stdout + refused.stderr

    # in-process, key through EnvVar: plain http to a remote host, a disabled source, 5xx and
    # 429 answers that echo the key
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv(URL_ENV, "http://rudder.example.com")
    insecure = _in_process(_project(tmp_path, "http"), instance)
    outcomes["plain http"] = insecure.success
    assert "refusing plain http to rudder.example.com" in failure_text(insecure)
    with TestGateway(disabled_write_key=SECRET) as gateway:
        monkeypatch.setenv(URL_ENV, gateway.url)
        outcomes["404"] = _in_process(_project(tmp_path, "404"), instance).success
    with TestGateway(write_key=SECRET) as gateway:
        monkeypatch.setenv(URL_ENV, gateway.url)
        gateway.fail_next(500, times=3, body=echo)
        gateway.fail_next(429, times=1_000, retry_after=3600, body=echo)
        result = _in_process(
            _project(tmp_path, "5xx"), instance, backoff_initial_seconds=0.01, max_in_flight=1
        )
        outcomes["5xx then 429"] = result.success
        assert "429 bad event from key ***" in failure_text(result)
    captured = capfd.readouterr()
    outputs += [captured.out, captured.err]

    assert outcomes == {
        "success": True,
        "401": False,
        "plain http": False,
        "404": False,
        "5xx then 429": False,
    }
    leaks = [hit for i, text in enumerate(outputs) for hit in _hits(text.encode(), f"output {i}")]
    leaks += find_secret(tmp_path)
    materializations, in_events = metadata_hits(instance)
    assert len(instance.get_runs()) == 5
    assert materializations >= 3 + 4 * 2  # all assets of the success, two of each failed run
    instance.dispose()
    assert not leaks + in_events, "the write key leaked:\n" + "\n".join(leaks + in_events)


# -- transport security ---------------------------------------------------------------------------


def _non_loopback_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))
        except OSError:
            pytest.skip("no non-loopback IPv4 address")
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("no non-loopback IPv4 address")
    return address


def test_plain_http_to_a_remote_host_needs_allow_insecure_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resource as `dagster job execute` builds it from the environment and the YAML."""
    with FixedPortGateway(host=_non_loopback_address(), write_key=SECRET) as gateway:
        monkeypatch.setenv(URL_ENV, gateway.url)
        monkeypatch.setenv(KEY_ENV, SECRET)
        project = _project(tmp_path, "p")
        with pytest.raises(ConfigError) as refused:  # when the definitions load, before any run
            rudderstack_from_env(project.config().delivery)
        message = str(refused.value)
        assert f"refusing plain http to {gateway.host}" in message
        assert "allow_insecure_http" in message and SECRET not in message
        assert gateway.requests == []

        document = yaml.safe_load(project.config_path.read_text())
        document["delivery"] = {"allow_insecure_http": True}
        project.config_path.write_text(yaml.safe_dump(document))
        resource = rudderstack_from_env(project.config().delivery)
        assert run_sync(project, _sync_of(project), resource).success
        assert len(gateway.events) == 5


def test_plain_http_to_loopback_is_allowed(tmp_path: Path, gateway: TestGateway) -> None:
    project = _project(tmp_path, "p")
    assert run_sync(project, _sync_of(project), rudderstack_for(gateway.url)).success
    assert len(gateway.events) == 5


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (needs the openssl command)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def tls_gateway(certificate: tuple[Path, Path]) -> Iterator[FixedPortGateway]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with FixedPortGateway(tls=context) as gateway:
        yield gateway


def test_tls_certificates_are_verified(
    tmp_path: Path, tls_gateway: FixedPortGateway, certificate: tuple[Path, Path]
) -> None:
    """A certificate nobody vouches for is refused before a byte of the request is sent."""
    project = _project(tmp_path, "p")
    resource = rudderstack_for(tls_gateway.url, retry_max_seconds=30)
    untrusted = run_sync(project, _sync_of(project), resource, raise_on_error=False)
    assert not untrusted.success
    text = failure_text(untrusted)
    assert "CERTIFICATE_VERIFY_FAILED" in text and "could not be verified" in text
    assert "gave up" not in text  # a certificate is not retried: retrying cannot fix it
    assert tls_gateway.requests == [] and tls_gateway.events == []
    assert not [f for f in RudderstackResource.model_fields if "verify" in f or "ssl" in f]


def test_tls_delivery_with_a_trusted_certificate(
    tmp_path: Path,
    tls_gateway: FixedPortGateway,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # how httpx is told what to trust
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    project = _project(tmp_path, "p")
    assert run_sync(project, _sync_of(project), rudderstack_for(tls_gateway.url)).success
    assert len(tls_gateway.events) == 5


# -- identifiers from config are quoted; the model runs read-only ---------------------------------

HOSTILE: dict[str, str] = {
    "pk": 'id"; drop table snapshot; --',
    "uid": "user id",
    "anon": "select",
    "email": "e'mail",
    "plan": 'pl"an); drop table users; --',
    "ts": 'time"stamp',
    "mid": "msg'id",
}
HOSTILE_FIELDS = {'e\'mail "x"': "email", "plan'); drop table pending; --": "plan", "ü": "anon"}


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_identifiers_from_config_are_quoted(tmp_path: Path, gateway: TestGateway) -> None:
    selected = ", ".join(
        f"{source} as {_quoted(alias)}"
        for source, alias in [
            ("id", HOSTILE["pk"]),
            ("user_id", HOSTILE["uid"]),
            ("anon_id", HOSTILE["anon"]),
            ("email", HOSTILE["email"]),
            ("plan", HOSTILE["plan"]),
            ("updated_at", HOSTILE["ts"]),
            ("event_id", HOSTILE["mid"]),
        ]
    )
    names = {
        "added": "Robert'); DROP TABLE Students;--",
        "changed": 'Changed "quoted"',
        "removed": "Removed; --",
    }
    sync = {
        "model": f"select {selected} from users",
        "primary_key": HOSTILE["pk"],
        "type": "track",
        "user_id": HOSTILE["uid"],
        "anonymous_id": HOSTILE["anon"],
        "mapping": {field: HOSTILE[column] for field, column in HOSTILE_FIELDS.items()},
        "events": names,
        "send_initial_results": True,
        "timestamp": HOSTILE["ts"],
        "message_id": HOSTILE["mid"],
    }
    project = write_project(tmp_path, {SYNC: sync}, users=3)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    sql(
        project.warehouse,
        "update users set plan = 'pro' where id = 2; delete from users where id = 3",
    )
    run_sync(project, SYNC, rudderstack_for(gateway.url))

    sent = [(e["event"], e["userId"], e["anonymousId"]) for e in gateway.events]
    assert sorted(sent) == sorted(
        [(names["added"], f"u{i}", f"a{i}") for i in (1, 2, 3)]
        + [(names["changed"], "u2", "a2"), (names["removed"], "u3", "a3")]
    )
    first = gateway.events[0]
    assert first["properties"] == {
        'e\'mail "x"': "user1@example.com",
        "plan'); drop table pending; --": "free",
        "ü": "a1",
    }
    assert first["messageId"] == "e1" and first["timestamp"] == "2024-05-01T13:00:00.000000Z"
    assert gateway.events[3]["properties"]["plan'); drop table pending; --"] == "pro"
    with duckdb.connect(str(project.warehouse), read_only=True) as conn:
        assert conn.execute("select count(*) from users").fetchone() == (2,)
    state = project.state_dir / f"{SYNC}.duckdb"
    with duckdb.connect(str(state), read_only=True) as conn:
        tables = {r[0] for r in conn.execute("select table_name from duckdb_tables()").fetchall()}
        assert {"snapshot", "pending", "meta", "delivery_log"} <= tables
        assert conn.execute("select count(*) from snapshot where not __rs_deleted").fetchone() == (
            2,
        )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("select nextval('ids') as id, user_id from users", "read-only mode"),
        ("select __rs_pk as id, __rs_user_id as user_id from snapshot", "snapshot does not exist"),
    ],
    ids=["a model that would write", "a model reading the sync state"],
)
def test_model_runs_read_only_on_the_warehouse_alone(
    tmp_path: Path, gateway: TestGateway, model: str, message: str
) -> None:
    sync = {**copy.deepcopy(IDENTIFY_SYNC), "model": model, "mapping": {}}
    sync.pop("anonymous_id")
    project = write_project(tmp_path, {SYNC: sync}, users=3)
    sql(project.warehouse, "create sequence ids")
    before = _digest(project.warehouse)
    result: ExecuteInProcessResult = run_sync(
        project, SYNC, rudderstack_for(gateway.url), raise_on_error=False
    )
    assert not result.success
    assert "the model failed" in failure_text(result) and message in failure_text(result)
    assert _digest(project.warehouse) == before
    assert gateway.requests == []


def test_config_never_holds_the_key(tmp_path: Path) -> None:
    """The YAML has no place for the key: it can only come from the environment."""
    project = _project(tmp_path, "p")
    document = yaml.safe_load(project.config_path.read_text())
    document["write_key"] = SECRET
    project.config_path.write_text(yaml.safe_dump(document))
    with pytest.raises(ValueError, match="unknown key 'write_key'") as caught:
        load_config(project.config_path)
    assert SECRET not in str(caught.value)
