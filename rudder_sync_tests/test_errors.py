"""The error tree: one base, the classes still importable where they are raised, old bases kept."""

import subprocess
import sys
from pathlib import Path

import pytest

from rudder_sync import RudderSyncError, errors
from rudder_sync.config import ConfigError
from rudder_sync.diff import ModelColumnsError
from rudder_sync.partitions import MissingWindowError
from rudder_sync.rudderstack import (
    RudderstackAuthError,
    RudderstackConfigError,
    RudderstackError,
    RudderstackRefusedError,
    RudderstackUnavailableError,
    RudderstackUnreachableError,
)
from rudder_sync.state import StateError
from rudder_sync.steps import WindowFailedError
from rudder_sync.warehouses import WarehouseError
from rudder_sync.warehouses.settings import WarehouseSettingsError
from rudder_sync.warehouses.sql import ModelSqlError

from .gateway import TestGateway

TREE = [
    (ConfigError, ValueError),
    (WarehouseSettingsError, ValueError),
    (ModelSqlError, ValueError),
    (ModelColumnsError, ValueError),
    (WarehouseError, RuntimeError),
    (StateError, RuntimeError),
    (MissingWindowError, RuntimeError),
    (RudderstackError, Exception),
    (RudderstackAuthError, RudderstackError),
    (RudderstackConfigError, RudderstackError),
    (RudderstackRefusedError, RudderstackError),
    (RudderstackUnavailableError, RudderstackError),
    (RudderstackUnreachableError, RudderstackUnavailableError),
    (WindowFailedError, RudderstackError),
]


@pytest.mark.parametrize(("cls", "also"), TREE, ids=[cls.__name__ for cls, _ in TREE])
def test_every_error_derives_from_the_base_and_keeps_its_old_base(cls: type, also: type) -> None:
    assert issubclass(cls, RudderSyncError) and issubclass(cls, also)
    assert getattr(errors, cls.__name__) is cls
    assert cls.__name__ in errors.__doc__


def test_the_tree_names_every_class_in_errors_py() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, RudderSyncError)
    }
    assert defined == {cls.__name__ for cls, _ in TREE} | {"RudderSyncError"}


def test_errors_and_the_package_import_without_dagster() -> None:
    code = "import sys, rudder_sync, rudder_sync.errors; assert 'dagster' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_step_turns_our_errors_into_a_failure_that_names_the_sync() -> None:
    from dagster import Failure

    from rudder_sync.assets import failures_named
    from rudder_sync.config import parse_config

    from .helpers import TRACK_SYNC

    sync = parse_config({"syncs": {"users": TRACK_SYNC}}).syncs["users"]
    with pytest.raises(Failure) as caught, failures_named(sync):
        raise MissingWindowError("2024-01-01")
    assert caught.value.description.startswith("sync 'users': no model snapshot of window")
    with pytest.raises(Failure) as caught, failures_named(sync):
        raise RudderstackAuthError("401 from the gateway")
    assert "sync 'users': delivery stopped: 401 from the gateway. Changes that" in str(
        caught.value.description
    )
    with pytest.raises(KeyError), failures_named(sync):  # a bug keeps its traceback
        raise KeyError("x")


def test_a_401_names_the_write_key_variable_as_an_unreachable_url_names_its_own(
    tmp_path: Path, gateway: TestGateway
) -> None:
    from .helpers import IDENTIFY_SYNC, rudderstack_for, run_sync, write_project

    project = write_project(tmp_path, {"users": IDENTIFY_SYNC}, users=2)
    result = run_sync(
        project, "users", rudderstack_for(gateway.url, key="not-the-key"), raise_on_error=False
    )
    assert not result.success
    logs = "\n".join(result.run_logs)
    assert (
        "the write key was rejected (401 invalid write key). Fix: set RUDDERSTACK_WRITE_KEY" in logs
    )
    assert "not-the-key" not in logs
