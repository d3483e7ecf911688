"""Which alert conditions are open, per sync: one small JSON file per sync and condition.

They live in the sync's state folder (`<state>/alerts/<sync>/<condition>.json`), not in Dagster's
instance, so that a throwaway instance (`dagster job execute` from cron, without DAGSTER_HOME)
still alerts once when a condition starts and once when it clears. Each condition has one
writer (the step hooks, or the freshness sensor), and a file is replaced atomically.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson


@dataclass
class ConditionStatus:
    open: bool = False
    since: str | None = None  # when it opened
    run_id: str | None = None  # the run that opened it
    memory: dict[str, Any] = field(default_factory=dict)  # e.g. the last quarantine count


def status_path(state_dir: Path, sync: str, condition: str) -> Path:
    return state_dir / "alerts" / sync / f"{condition}.json"


def load_status(state_dir: Path, sync: str, condition: str) -> ConditionStatus:
    path = status_path(state_dir, sync, condition)
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return ConditionStatus()
    except orjson.JSONDecodeError:
        return ConditionStatus()  # a torn file from an old crash: start over (closed)
    return ConditionStatus(
        **{k: v for k, v in data.items() if k in ConditionStatus.__dataclass_fields__}
    )


def save_status(state_dir: Path, sync: str, condition: str, status: ConditionStatus) -> None:
    path = status_path(state_dir, sync, condition)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{condition}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as file:
        file.write(orjson.dumps(asdict(status)))
    os.replace(temporary, path)
