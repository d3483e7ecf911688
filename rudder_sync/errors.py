"""Every error rudder_sync raises on purpose, in one tree.

Catch `RudderSyncError` for "rudder_sync refused or failed, and its message says why and the fix";
catch a branch for one concern. Each class stays importable from the module that raises it.

    RudderSyncError
    ├── ConfigError (ValueError)             config: the sync YAML cannot run
    ├── WarehouseSettingsError (ValueError)  warehouses.settings: a `warehouse:` section cannot work
    ├── ModelSqlError (ValueError)           warehouses.sql: the model is not one SELECT
    ├── ModelColumnsError (ValueError)       diff: the model lacks a column the sync names
    ├── WarehouseError (RuntimeError)        warehouses.base: the warehouse or the model failed
    ├── StateError (RuntimeError)            state: the sync's state file cannot be used
    ├── MissingWindowError (RuntimeError)    partitions: no snapshot of a window in this run
    └── RudderstackError                     rudderstack: delivery to RudderStack failed
        ├── RudderstackAuthError             the write key or the source was refused
        ├── RudderstackConfigError           the resource cannot work as configured
        ├── RudderstackRefusedError          the data plane refuses (nearly) every event
        ├── RudderstackUnavailableError      unreachable or overloaded for too long
        │   └── RudderstackUnreachableError  never reached at all in this run
        └── WindowFailedError                steps: delivery stopped inside one window of a run

The extra bases (ValueError, RuntimeError) are the ones these classes had before the tree; callers
that catch those still do. This module imports nothing from the package and not Dagster.
"""


class RudderSyncError(Exception):
    """Base of every error rudder_sync raises on purpose; the message names the problem and fix."""


class ConfigError(RudderSyncError, ValueError):
    """A sync configuration that cannot run; the message says where and how to fix it.

    `also` holds the other problems found in the same place (every invalid key of a sync), one
    line each, for `python -m rudder_sync check`; the message is the first one.
    """

    def __init__(self, message: str, also: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.also = also

    def __str__(self) -> str:
        if not self.also:
            return str(self.args[0]) if self.args else ""
        more = len(self.also)
        return f"{self.args[0]} (and {more} more problem{'s' if more > 1 else ''} in this sync)"

    @property
    def problems(self) -> list[str]:
        """Every problem, one line each: the message's, then the others'."""
        return [str(self.args[0]), *self.also]


class WarehouseSettingsError(RudderSyncError, ValueError):
    """A `warehouse:` section that cannot work; the message names the key and the fix."""


class ModelSqlError(RudderSyncError, ValueError):
    """The model is not one SELECT in the warehouse's dialect: what is wrong, and the fix."""

    def __init__(self, problem: str, fix: str = "correct the query") -> None:
        super().__init__(f"{problem}. Fix: {fix}.")
        self.problem, self.fix = problem, fix


class ModelColumnsError(RudderSyncError, ValueError):
    """The model does not return a column the sync config names."""


class WarehouseError(RudderSyncError, RuntimeError):
    """The warehouse could not be reached or the model could not run; the message names the
    warehouse (type, host, database; never a secret) and the fix."""


class StateError(RudderSyncError, RuntimeError):
    """The sync's state cannot be used; the message says why and what to do."""


class MissingWindowError(RudderSyncError, RuntimeError):
    """A partitioned diff found no model snapshot of its window in this run."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"no model snapshot of window {key} in this run. Fix: materialize the sync's "
            "snapshot together with its diff for the same partitions."
        )


class RudderstackError(RudderSyncError):
    """Delivery to RudderStack failed."""


class RudderstackAuthError(RudderstackError):
    """The gateway refused the write key or the source (401/404): no later request can pass."""


class RudderstackUnavailableError(RudderstackError):
    """The gateway stayed unreachable or overloaded for longer than retry_max_seconds."""


class RudderstackUnreachableError(RudderstackUnavailableError):
    """No connection to the data plane could be opened before it ever answered in this run."""


class RudderstackConfigError(RudderstackError):
    """The resource is configured in a way that cannot work (bad URL, missing key...)."""


class RudderstackRefusedError(RudderstackError):
    """The data plane refuses (nearly) every event for one reason: a problem of the data plane
    or the source, not of the rows, so the attempt is not counted against them (quarantine)."""


class WindowFailedError(RudderstackError):
    """Delivery stopped inside one window of a multi-window run; the windows before it are done."""
