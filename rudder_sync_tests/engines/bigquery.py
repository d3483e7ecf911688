"""BigQuery: bqemulator (REST and the Storage Read API's gRPC, on DuckDB), reached by the real
google-cloud-bigquery and google-cloud-bigquery-storage clients.

bqemulator pins `sqlglot<30.12` while fakesnow pins `sqlglot~=30.22`, so the two cannot share
one environment: the emulator lives in its own virtualenv, `.venv-bqemulator` (made by
`scripts/setup_engines`, or named by RUDDER_SYNC_BQEMULATOR_PYTHON), and runs as a subprocess
through `bqemulator_launcher.py` (which says what it changes). `bigquery_engine` yields the
endpoints as the sync YAML's keys.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import REPO, SETUP, free_port, missing, wait_for_port

PYTHON_ENV_VAR = "RUDDER_SYNC_BQEMULATOR_PYTHON"
PROJECT = "rudder-test"
LAUNCHER = Path(__file__).with_name("bqemulator_launcher.py")


@dataclass(frozen=True)
class BigQueryEngine:
    api_endpoint: str  # REST, http://127.0.0.1:N
    storage_api_endpoint: str  # gRPC, 127.0.0.1:M
    project: str
    pid: int = 0  # the emulator's process (its CPU time, for the benchmark)

    def yaml_keys(self) -> dict[str, Any]:
        """The sync YAML's keys for this emulator."""
        return {
            "project": self.project,
            "credentials": "anonymous",
            "api_endpoint": self.api_endpoint,
            "storage_api_endpoint": self.storage_api_endpoint,
        }

    def client(self, project: str | None = None) -> Any:
        """A client of the emulator, for this project (or another: the emulator makes any)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=project or self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.api_endpoint},
        )

    def run(self, *statements: str) -> list[dict[str, Any]]:
        """Run statements as query jobs, one by one; the last one's rows."""
        client = self.client()
        try:
            rows: list[dict[str, Any]] = []
            for statement in statements:
                rows = [dict(row.items()) for row in client.query(statement).result()]
            return rows
        finally:
            client.close()


def emulator_python() -> Path | None:
    configured = os.environ.get(PYTHON_ENV_VAR, "").strip()
    path = Path(configured) if configured else REPO / ".venv-bqemulator" / "bin" / "python"
    return path if path.exists() else None


class EmulatorError(RuntimeError):
    """bqemulator did not start (the message holds its log's tail)."""


@contextmanager
def running_emulator(python: Path, log: Path) -> Iterator[BigQueryEngine]:
    """bqemulator started by ``python`` (its own virtualenv) on two free loopback ports, its
    output in ``log``; stopped on exit. The tests' fixture and bench_warehouse_diff share it."""
    rest, grpc_port = free_port(), free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(python), str(LAUNCHER), "start", "--rest-port", str(rest), "--grpc-port",
             str(grpc_port), "--rest-host", "127.0.0.1", "--grpc-host", "127.0.0.1",
             "--project", PROJECT, "--ephemeral", "--log-level", "warning"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        alive = lambda: process.poll() is None  # noqa: E731
        if not (wait_for_port(rest, 120, alive) and wait_for_port(grpc_port, 60, alive)):
            tail = log.read_text(errors="replace")[-2000:]
            raise EmulatorError(f"bqemulator did not start ({python}):\n{tail}")
        engine = BigQueryEngine(
            api_endpoint=f"http://127.0.0.1:{rest}",
            storage_api_endpoint=f"127.0.0.1:{grpc_port}",
            project=PROJECT,
            pid=process.pid,
        )
        yield engine
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def bigquery_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEngine]:
    try:
        import google.cloud.bigquery  # noqa: F401
        import google.cloud.bigquery_storage  # noqa: F401
    except ImportError:
        missing("google-cloud-bigquery[bqstorage]", "pip install -e '.[test]'")
    python = emulator_python()
    if python is None:
        missing(f"bqemulator (the BigQuery stand-in; {PYTHON_ENV_VAR} unset)", f"{SETUP}")
    assert python is not None
    log = tmp_path_factory.mktemp("bqemulator") / "emulator.log"
    try:
        with running_emulator(python, log) as engine:
            yield engine
    except EmulatorError as exc:
        pytest.fail(str(exc), pytrace=False)
