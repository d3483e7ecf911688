"""Redshift: the test PostgreSQL server, reached by the real redshift_connector through a
start-up proxy.

Redshift speaks PostgreSQL's wire protocol, but redshift_connector 2.2 does not connect to a stock
PostgreSQL: it sends Redshift-only start-up parameters (`client_protocol_version`,
`driver_version`, ...) that PostgreSQL refuses, it cannot parse Debian's `server_version`
("15.18 (Debian ...)"), it asks for SSL, and its SCRAM login hands scramp an empty mechanism
name. `StartupProxy` (127.0.0.1 TCP -> the server's unix socket, where `.ci/postgres` trusts
local users) drops those parameters, answers the SSL request with "no" (the connector then needs
`ssl=False`) and reports `server_version` as Redshift does ("8.0.2"); everything after the
start-up passes unchanged. Password authentication is therefore not exercised here.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from . import missing


class StartupProxy:
    """127.0.0.1 TCP -> PostgreSQL's unix socket, rewriting the start-up as the module says."""

    KEEP = {b"user", b"database", b"application_name"}

    def __init__(self, socket_path: str):
        self.socket_path = socket_path

    def __enter__(self) -> StartupProxy:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _read(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def _serve(self, client: socket.socket) -> None:
        try:
            while True:
                (length,) = struct.unpack("!i", self._read(client, 4))
                body = self._read(client, length - 4)
                if struct.unpack("!i", body[:4])[0] != 80877103:  # not an SSLRequest
                    break
                client.sendall(b"N")
            parts = body[4:].split(b"\0")
            params = dict(zip(parts[0::2], parts[1::2], strict=False))
            kept = b"".join(k + b"\0" + v + b"\0" for k, v in params.items() if k in self.KEEP)
            packet = struct.pack("!i", 196608) + kept + b"\0"
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.socket_path)
            server.sendall(struct.pack("!i", len(packet) + 4) + packet)
            while True:  # up to ReadyForQuery
                kind = self._read(server, 1)
                (length,) = struct.unpack("!i", self._read(server, 4))
                body = self._read(server, length - 4)
                if kind == b"S" and body.startswith(b"server_version\0"):
                    body = b"server_version\x008.0.2\0"
                client.sendall(kind + struct.pack("!i", len(body) + 4) + body)
                if kind in (b"Z", b"E"):
                    break
        except (OSError, ConnectionError):
            client.close()
            return

        def pipe(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(server, client), daemon=True).start()
        pipe(client, server)


@dataclass(frozen=True)
class RedshiftEngine:
    port: int  # the proxy's, on 127.0.0.1
    server_url: str  # the PostgreSQL server behind it (for set-up through ADBC)

    def yaml_keys(self, database: str) -> dict[str, Any]:
        """The sync YAML's keys for a database of the server (password: any, from the env)."""
        return {"host": "127.0.0.1", "port": self.port, "database": database, "user": "postgres"}

    def connect(self, database: str) -> Any:
        import redshift_connector

        conn = redshift_connector.connect(
            host="127.0.0.1", port=self.port, database=database, user="postgres",
            password="unused-trust", ssl=False,
        )  # fmt: skip
        conn.autocommit = True
        return conn


@pytest.fixture(scope="session")
def redshift_engine() -> Iterator[RedshiftEngine]:
    try:
        import redshift_connector  # noqa: F401
    except ImportError:
        missing("redshift_connector", "pip install -e '.[test]'")
    from rudder_sync_tests.postgres import execute, server_url

    url = server_url()
    ((directories, port),) = execute(
        url, "select current_setting('unix_socket_directories'), current_setting('port')"
    )
    path = f"{directories.split(',')[0].strip()}/.s.PGSQL.{port}"
    with StartupProxy(path) as proxy:
        yield RedshiftEngine(port=proxy.port, server_url=url)
