"""A warehouse that fails under a run: the message tells a lost connection from a bad model.

Real failures only: a PostgreSQL server of this test's own, stopped while the model waits on it,
and a DuckDB model whose file is gone. Issue 26 item 7: the snapshot said "Fix: correct the model"
when the connection had dropped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from rudder_sync.warehouses.base import connection_lost

from .gateway import TestGateway
from .helpers import IDENTIFY_SYNC, REPO, rudderstack_for, run_sync, write_project
from .postgres import PgDatabase, execute, write_pg_project

CONNECTION_FIX = "Fix: the connection to the warehouse failed, not the model"


def _failure(result: Any) -> str:
    return "\n".join(
        event.event_specific_data.error.message
        for event in result.all_events
        if event.is_step_failure
    )


class ThrowawayServer:
    """A PostgreSQL server of one test (`.ci/postgres`), which the test may stop and restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        started = subprocess.run(
            [str(REPO / ".ci" / "postgres"), "start", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        if started.returncode != 0:
            reason = f"cannot start a PostgreSQL server here: {started.stderr.strip()[-500:]}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        self.url = started.stdout.strip().split("=", 1)[1]

    def stop(self) -> None:
        """`.ci/postgres stop`: an immediate shutdown, as when a server crashes or is killed."""
        subprocess.run([str(REPO / ".ci" / "postgres"), "stop", str(self.directory)], check=True)

    def restart(self) -> None:
        """Start the stopped server again, on the same port (pg_ctl reuses postmaster.opts)."""
        pg_ctl = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]
        command = [pg_ctl, "-D", str(self.directory / "data"), "-l", "restart.log", "-w"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run([*command, "restart"], check=True, cwd=self.directory, capture_output=True)


@pytest.fixture
def server() -> Iterator[ThrowawayServer]:
    # Not under tmp_path: as root the server runs as `postgres`, which cannot enter pytest's
    # private temporary directories.
    directory = Path(tempfile.mkdtemp(prefix="rs-pg-"))
    try:
        running = ThrowawayServer(directory)  # .ci/postgres gives it to `postgres`
        try:
            yield running
        finally:
            running.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
def test_a_server_stopped_under_the_model_says_connection_not_model(
    tmp_path: Path,
    server: ThrowawayServer,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    """The model waits on a lock (as behind a long migration) when the server goes down: the run
    says the connection failed and to run again; the next run, server back, loses nothing."""
    database = PgDatabase(url=server.url, name="postgres")
    database.seed_users(3)
    project = write_pg_project(tmp_path / "project", database, {"traits": IDENTIFY_SYNC})
    monkeypatch.setenv("RUDDER_SYNC_TEST_DB_URL", server.url)

    import adbc_driver_postgresql.dbapi as adbc

    locker = adbc.connect(server.url)
    locker.cursor().execute("lock table users in access exclusive mode")  # held: no autocommit

    def stop_once_the_model_waits() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            waiting = execute(
                server.url,
                "select count(*) from pg_stat_activity "
                "where wait_event_type = 'Lock' and query like '%from users%'",
            )
            if waiting[0][0]:
                server.stop()
                return
            time.sleep(0.05)

    stopper = threading.Thread(target=stop_once_the_model_waits, daemon=True)
    stopper.start()
    try:
        result = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
    finally:
        stopper.join()
        with contextlib.suppress(Exception):  # its server is gone
            locker.close()
    assert not result.success
    message = _failure(result)
    host_port = server.url.split("@", 1)[1]
    assert f"lost the connection to postgres {host_port}" in message, message
    assert CONNECTION_FIX in message and "run the sync again" in message
    assert "correct the model" not in message
    assert gateway.events == []

    server.restart()
    again = run_sync(project, "traits", rudderstack_for(gateway.url))
    assert again.success
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]


def test_a_duckdb_model_whose_file_is_gone_says_check_the_file_and_run_again(
    tmp_path: Path, gateway: TestGateway
) -> None:
    """A DuckDB IO error (a file the model reads is missing) is not a SQL error: its fix says
    to check the file and run again, and nothing is lost."""
    parquet = tmp_path / "users.parquet"
    project = write_project(tmp_path, {}, users=3)
    with duckdb.connect(str(project.warehouse)) as conn:
        conn.execute(
            f"copy (select id, user_id, anon_id, email, plan, country from users) to '{parquet}'"
        )
    sync = dict(IDENTIFY_SYNC, model=f"select * from read_parquet('{parquet}')")
    project = write_project(tmp_path, {"traits": sync}, users=0)
    parquet.rename(tmp_path / "moved.parquet")
    result = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
    assert not result.success
    message = _failure(result)
    assert "sync 'traits'" in message and "IO Error: No files found" in message
    assert "Fix: DuckDB could not read a file (the warehouse, or one the model reads)" in message
    assert "run the sync again (nothing was sent or committed, nothing is lost)" in message
    assert gateway.events == []
    (tmp_path / "moved.parquet").rename(parquet)
    assert run_sync(project, "traits", rudderstack_for(gateway.url)).success
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]


# What the real server and ADBC raised in the runs above (and while writing them), word for word:
# the classification vendor modules share is checked on them without a server.
LOST = [
    OSError(
        "[libpq] PQgetCopyData() failed: server closed the connection unexpectedly\n\tThis "
        "probably means the server terminated abnormally\n\tbefore or while processing the request."
    ),
    OSError(
        "[libpq] Execution error [PGRES_FATAL_ERROR]: FATAL:  terminating connection due to "
        "administrator command\n"
    ),
    RuntimeError("IO: Failed to prepare query: no connection to the server\n\nQuery was: select 1"),
    RuntimeError(
        'IO: [libpq] Failed to connect: connection to server at "127.0.0.1", port 1 failed: '
        "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?"
    ),
    ConnectionResetError(104, "Connection reset by peer"),
]
MODEL = [
    OSError("[libpq] Execution error [PGRES_FATAL_ERROR]: ERROR:  division by zero\n"),
    RuntimeError(
        'NOT_FOUND: Failed to prepare query: ERROR:  relation "nope" does not exist\nLINE 1: '
        "select * from nope\n\nQuery was: select * from nope. SQLSTATE: 42P01"
    ),
    OSError("ERROR:  canceling statement due to statement timeout"),
]


@pytest.mark.parametrize("error", LOST, ids=lambda e: str(e)[:40])
def test_connection_failures_are_told_apart(error: BaseException) -> None:
    assert connection_lost(error)


@pytest.mark.parametrize("error", MODEL, ids=lambda e: str(e)[:40])
def test_model_errors_are_not_connection_failures(error: BaseException) -> None:
    assert not connection_lost(error)
    assert connection_lost(error, words=["division by zero", "does not exist", "timeout"])
