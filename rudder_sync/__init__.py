"""rudder_sync: reverse ETL from a DuckDB warehouse to RudderStack, as Dagster assets.

`RudderstackSyncComponent` (a Dagster Component for `dg` projects) is imported on first use, so
`import rudder_sync` stays light; `dg` finds it through the package's registry entry point.
`RudderSyncError` is the base of every error rudder_sync raises on purpose (the tree: `errors.py`).
`__version__` is the installed distribution's version (events' `context.library`, the User-Agent).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import RudderSyncError

try:
    __version__ = version("rudder_sync")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from .component import RudderstackSyncComponent

__all__ = ["RudderSyncError", "RudderstackSyncComponent", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "RudderstackSyncComponent":
        from .component import RudderstackSyncComponent

        return RudderstackSyncComponent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
