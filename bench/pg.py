"""PostgreSQL helpers for the benchmarks: a fresh database, statements, the server's CPU time.

The server's CPU time matters when work moves into the warehouse: a client that gets faster by
making the server work harder must show it. It is read from the postmaster's process tree (so
only for a server on this machine): the CPU of its live children plus that of the children it
has reaped (backends end with their connection, their CPU then lands in the postmaster's
``children_user`` / ``children_system``).
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil

LOCAL_HOSTS = (None, "", "localhost", "127.0.0.1", "::1")


def sql(url: str, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements in autocommit (one call each); the last one's rows."""
    import adbc_driver_postgresql.dbapi as adbc

    rows: list[tuple[Any, ...]] = []
    with adbc.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
            rows = list(cursor.fetchall()) if cursor.description else []
    return rows


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def through(url: str, port: int | None = None) -> Any:
    """Without ``port``: the URL's (host, port). With it: the URL sent to 127.0.0.1:port."""
    parts = urlsplit(url)
    if port is None:
        return parts.hostname or "127.0.0.1", parts.port or 5432
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def fresh_database(server: str, name: str) -> str:
    """Drop and create database ``name`` on the server; its URL."""
    sql(server, f"drop database if exists {name} with (force)", f"create database {name}")
    return with_database(server, name)


class ServerCpu:
    """CPU seconds the PostgreSQL server's processes have used so far (None if not local)."""

    def __init__(self, url: str) -> None:
        import adbc_driver_postgresql.dbapi as adbc

        self.postmaster: psutil.Process | None = None
        if urlsplit(url).hostname not in LOCAL_HOSTS:
            return
        with adbc.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute("select pg_backend_pid()")
            backend = int(cursor.fetchone()[0])  # type: ignore[index]
            with contextlib.suppress(psutil.Error):  # not visible here (another PID namespace)
                parent = psutil.Process(psutil.Process(backend).ppid())
                if "postgres" in parent.name():
                    self.postmaster = parent

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        try:
            own = self.postmaster.cpu_times()
            total = own.user + own.system + own.children_user + own.children_system
            for child in self.postmaster.children():
                with contextlib.suppress(psutil.Error):
                    times = child.cpu_times()
                    total += times.user + times.system
        except psutil.Error:
            return None
        return total
