"""The test engines: a local stand-in for each vendor warehouse, started once per test session.

* `snowflake`: fakesnow's server (Snowflake's REST protocol on DuckDB) and the real
  snowflake-connector-python;
* `bigquery`: bqemulator (REST and the Storage Read API's gRPC, on DuckDB) and the real
  google-cloud-bigquery clients;
* `redshift`: the test PostgreSQL server behind a start-up proxy, and the real redshift_connector;
* `databricks`: Spark SQL in a local pyspark (`local[2]`, a JVM).

Each fixture is session-scoped (its stand-in starts once) and registered in conftest.py. A
stand-in that is not installed skips its tests with the command that provides it; with CI=true it
fails them instead, so that CI cannot go green without running them.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = "scripts/setup_engines"


def missing(what: str, command: str) -> None:
    """Skip (fail in CI) a test whose stand-in is not installed, saying how to install it."""
    message = f"{what} is not available. Fix: {command}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """True once 127.0.0.1:port accepts connections (False after `seconds` or when `alive()`
    turns false: the process behind it died)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False
