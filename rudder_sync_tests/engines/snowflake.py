"""Snowflake: fakesnow's server, reached by the real snowflake-connector-python over HTTP.

fakesnow answers Snowflake's REST protocol (login, query, Arrow result chunks) and runs the SQL
on DuckDB after translating it with sqlglot. `snowflake_engine` yields the endpoint as the sync
YAML's keys (`host`, `port`, `protocol`) plus the connector arguments of a direct connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from . import missing

INSTALL = "pip install -e '.[test]' (fakesnow[server]==0.12.1)"


@dataclass(frozen=True)
class SnowflakeEngine:
    host: str
    port: int
    protocol: str
    connect_args: dict[str, Any]  # for snowflake.connector.connect (a fake user and password)

    def yaml_keys(self) -> dict[str, Any]:
        """The sync YAML's endpoint keys for this server."""
        return {"host": self.host, "port": self.port, "protocol": self.protocol}

    def connect(self, **kwargs: Any) -> Any:
        import snowflake.connector

        return snowflake.connector.connect(**self.connect_args, **kwargs)


@pytest.fixture(scope="session")
def snowflake_engine() -> Iterator[SnowflakeEngine]:
    try:
        import fakesnow
        import snowflake.connector  # noqa: F401
    except ImportError:
        missing("fakesnow (the Snowflake stand-in)", INSTALL)
    with fakesnow.server() as kwargs:
        yield SnowflakeEngine(
            host=kwargs["host"],
            port=kwargs["port"],
            protocol=kwargs["protocol"],
            connect_args=kwargs,
        )
