"""Databricks: Spark SQL on a local pyspark (`local[2]`, one JVM for the session).

Databricks SQL is Spark SQL; what runs here is the SQL rudder_sync renders for Databricks. Two
catalogs share the session:

* `spark_catalog` (the default): plain Spark tables (parquet), where the diff's statements run;
* `iceberg`: Apache Iceberg tables in a Hadoop catalog on a local directory, for statements that
  need a table format with row-level SQL. Databricks keeps its tables in Delta, whose jars come
  from Maven, which is not reachable here; Iceberg's Spark runtime comes from PyPI
  (`snowpark-connect-deps-iceberg`, built for Spark 3.5, hence pyspark 3.5 here). Both formats
  run `MERGE INTO`, `UPDATE` and `DELETE`, each statement committed atomically, and neither has a
  multi-statement transaction: the semantics the Databricks state store is written for.

That wheel's Iceberg runtime lacks the Jackson classes Iceberg relocates into its own namespace
(`org.apache.iceberg.shaded.com.fasterxml.jackson`); `relocated_jackson` builds them, as
Iceberg's build does, from the Jackson jars pyspark ships (no download).

databricks-sql-connector does not talk to Spark's own Thrift server: it sends `Authorization:
Bearer` where Hive's HTTP servlet parses only Basic, and, that rewritten by a proxy, it refuses
the server's protocol version (HIVE_CLI_SERVICE_PROTOCOL_V9; it requires Databricks'
SPARK_CLI_SERVICE_PROTOCOL_V2 or later). So the connector layer stays on recorded results
(test_vendor_warehouses.py) and Spark is reached through pyspark.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from . import SETUP, missing

ICEBERG_CATALOG = "iceberg"
_JACKSON = ("jackson-core-", "jackson-databind-", "jackson-annotations-")
_SHADED = b"org/apache/iceberg/shaded/"
# bytes of each constant-pool entry after its tag (Utf8 entries carry their own length)
_CONSTANT_SIZES = {3: 4, 4: 4, 5: 8, 6: 8, 7: 2, 8: 2, 9: 4, 10: 4, 11: 4, 12: 4, 15: 3}
_CONSTANT_SIZES |= {16: 2, 17: 4, 18: 4, 19: 2, 20: 2}


def _relocate(text: bytes) -> bytes:
    return text.replace(b"com/fasterxml/jackson/", _SHADED + b"com/fasterxml/jackson/").replace(
        b"com.fasterxml.jackson.", _SHADED.replace(b"/", b".") + b"com.fasterxml.jackson."
    )


def _relocate_class(data: bytes) -> bytes:
    """A class file with every name in its constant pool relocated (what a shading plugin
    does); the rest of the file refers to the pool by index, so it stays as it is."""
    out = bytearray(data[:10])
    (count,) = struct.unpack(">H", data[8:10])
    index, pos = 1, 10
    while index < count:
        tag = data[pos]
        if tag == 1:  # Utf8
            (length,) = struct.unpack(">H", data[pos + 1 : pos + 3])
            text = _relocate(data[pos + 3 : pos + 3 + length])
            out += bytes([1]) + struct.pack(">H", len(text)) + text
            pos += 3 + length
        else:
            size = _CONSTANT_SIZES[tag]
            out += data[pos : pos + 1 + size]
            pos += 1 + size
            index += 1 if tag in (5, 6) else 0  # longs and doubles take two slots
        index += 1
    return bytes(out + data[pos:])


def relocated_jackson(pyspark_jars: Path, target: Path) -> Path:
    """Jackson as Iceberg's runtime expects it, from pyspark's own Jackson jars."""
    written: set[str] = set()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for prefix in _JACKSON:
            (source,) = sorted(pyspark_jars.glob(f"{prefix}[0-9]*.jar"))
            with zipfile.ZipFile(source) as jar:
                for entry in jar.infolist():
                    name = entry.filename
                    if (
                        name.endswith("/")
                        or name.endswith("module-info.class")
                        or name.startswith(("META-INF/versions/", "META-INF/MANIFEST"))
                    ):
                        continue
                    data = jar.read(name)
                    if name.endswith(".class"):
                        data = _relocate_class(data)
                    elif name.startswith("META-INF/services/"):
                        data = _relocate(data)
                    relocated = _relocate(name.encode()).decode()
                    if relocated not in written:
                        written.add(relocated)
                        out.writestr(relocated, data)
    return target


def iceberg_jars(root: Path) -> list[str]:
    """Iceberg's Spark runtime (Scala 2.12, as pyspark 3.5) and the Jackson it relocates."""
    import pyspark

    try:
        import snowpark_connect_deps_iceberg
    except ImportError:
        missing(
            "Iceberg's Spark runtime (snowpark-connect-deps-iceberg)", "pip install -e '.[test]'"
        )
    folder = Path(snowpark_connect_deps_iceberg.__file__).parent / "jars"
    runtime = sorted(folder.glob("iceberg-spark-runtime-3.5_2.12-*.jar"))
    if not runtime:
        missing("Iceberg's Spark 3.5 runtime jar", "pip install -e '.[test]'")
    jackson = relocated_jackson(Path(pyspark.__file__).parent / "jars", root / "jackson.jar")
    return [str(runtime[-1]), str(jackson)]


@contextmanager
def spark_session(root: Path, driver_memory: str = "1g") -> Iterator[Any]:
    """A SparkSession in UTC, its warehouse in ``root``, with the `iceberg` catalog beside the
    default one; stopped on exit. The tests' fixture and bench_warehouse_diff share it."""
    from pyspark.sql import SparkSession

    catalog = f"spark.sql.catalog.{ICEBERG_CATALOG}"
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("rudder_sync_tests")
        .config("spark.driver.memory", driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(root / "warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={root}")
        .config("spark.sql.ansi.enabled", "true")
        # Spark 3.5 would make `create table` without `using` a Hive table; 4.0 and Databricks
        # make it one of the default format
        .config("spark.sql.legacy.createHiveTableByDefault", "false")
        .config("spark.jars", ",".join(iceberg_jars(root)))
        .config(
            "spark.sql.extensions",
            "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        )
        .config(catalog, "org.apache.iceberg.spark.SparkCatalog")
        .config(f"{catalog}.type", "hadoop")
        .config(f"{catalog}.warehouse", str(root / "iceberg"))
        # each connection is a session of its own: without this, a session's catalog keeps the
        # table versions it loaded and misses another session's commits
        .config(f"{catalog}.cache-enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        spark.stop()


@pytest.fixture(scope="session")
def spark_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The test session's Spark (`spark_session`), started once."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        missing("pyspark (the Databricks stand-in)", "pip install -e '.[test]'")
    if shutil.which("java") is None:
        missing("a Java runtime for Spark (java)", f"sudo {SETUP}")
    with spark_session(tmp_path_factory.mktemp("spark")) as spark:
        yield spark


def to_arrow(frame: Any) -> Any:
    """A DataFrame's rows as an Arrow table (pyspark 3.5 has no public `toArrow`)."""
    import pyarrow as pa

    batches = frame._collect_as_arrow()  # noqa: SLF001 - what toArrow calls in pyspark 4
    schema = batches[0].schema if batches else None
    if schema is None:
        from pyspark.sql.pandas.types import to_arrow_schema

        schema = to_arrow_schema(frame.schema)
    return pa.Table.from_batches(batches, schema=schema)


# -- a stand-in for databricks-sql-connector over the SparkSession --------------------------------


def _type_name(kind: Any) -> str:
    """The type name the connector's `cursor.description` gives (`bigint`, `decimal`, ...)."""
    text = str(kind.simpleString())
    return text.split("(")[0].split("<")[0]


class SparkCursor:
    """The DB-API cursor of `databricks.sql` that rudder_sync uses, on a Spark session:
    `execute` with native named (`:name`, a dict) or positional (`?`, a list) parameters,
    `fetchall`, `fetchmany_arrow`, `description`, `rowcount`."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.description: list[tuple] | None = None
        self.rowcount = -1
        self._table: Any = None
        self._offset = 0

    def execute(self, operation: str, parameters: Any = None) -> SparkCursor:
        args = None
        if parameters:
            args = dict(parameters) if isinstance(parameters, dict) else list(parameters)
        from databricks.sql.exc import ServerOperationError
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException

        try:
            _activate(self.session)
            frame = self.session.sql(operation, args=args)
            self._table = to_arrow(frame)  # statements run here, at once, as on the server
        except (PySparkException, Py4JJavaError) as exc:
            # the connector's error for a statement the server refused, with Spark's message
            raise ServerOperationError(str(exc)) from exc
        self._offset = 0
        fields = frame.schema.fields
        self.description = [(f.name, _type_name(f.dataType), None, None, None, None, None)
                            for f in fields] or None  # fmt: skip
        names = [f.name for f in fields]
        self.rowcount = -1
        if "num_affected_rows" in names and self._table.num_rows:
            self.rowcount = int(self._table.column("num_affected_rows")[0].as_py())
        return self

    def fetchmany_arrow(self, size: int) -> Any:
        chunk = self._table.slice(self._offset, size)
        self._offset += chunk.num_rows
        return chunk

    def fetchall_arrow(self) -> Any:
        return self.fetchmany_arrow(max(0, self._table.num_rows - self._offset))

    def fetchall(self) -> list[tuple]:
        # by position: two columns may share a name (Spark names every scalar subquery alike)
        rest = self.fetchall_arrow()
        return list(zip(*(column.to_pylist() for column in rest.columns), strict=True))

    def close(self) -> None:
        self._table = None


def _activate(session: Any) -> None:
    """Make ``session`` the JVM thread's active one: Spark resolves catalogs through the active
    session's configuration, and a thread without one (a lock renewal, concurrent openers)
    would not find the `iceberg` catalog."""
    session._jvm.SparkSession.setActiveSession(session._jsparkSession)  # noqa: SLF001


class SparkConnection:
    """`databricks.sql.connect(...)` on the shared SparkSession: a session of its own (current
    catalog, schema and time zone, as the connector's `catalog`, `schema` and
    `session_configuration` set them); every statement commits as it runs (Databricks SQL has
    no multi-statement transactions: `commit` does nothing, as the connector's)."""

    def __init__(self, spark: Any, **kwargs: Any) -> None:
        self.session = spark.newSession()
        _activate(self.session)
        self.kwargs = kwargs
        config = kwargs.get("session_configuration") or {}
        if "TIMEZONE" in config:
            self.session.conf.set("spark.sql.session.timeZone", config["TIMEZONE"])
        if kwargs.get("catalog"):
            self.session.catalog.setCurrentCatalog(kwargs["catalog"])
        if kwargs.get("schema"):
            self.session.catalog.setCurrentDatabase(kwargs["schema"])
        self.closed = False

    def cursor(self) -> SparkCursor:
        return SparkCursor(self.session)

    def commit(self) -> None:
        """Nothing to commit: each statement committed when it ran."""

    def close(self) -> None:
        self.closed = True
