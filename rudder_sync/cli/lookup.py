"""`python -m rudder_sync lookup SYNC KEY [--json] [--window WINDOW] [CONFIG]`: one record's story.

Prints what the sync's state holds for one primary key: its committed snapshot, the model's row
of the latest snapshot, its pending, rejected or quarantined changes, and every delivery in the
delivery log (`rudder_sync.lookup`). It reads the state without changing it: a local file
read-only, an in-warehouse state in a read-only transaction. Row values go to stdout only (they
are what the command is for); no secret is printed.

Exit status: 0 when the key was found, 1 when it was never seen or the state cannot be read
(one line saying why, with the fix), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import CONFIG_ENV_VAR, config_path_from_env, load_config
from ..errors import RudderSyncError
from ..lookup import lookup, render


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rudder_sync lookup",
        description="Show what a sync's state holds for one primary key: its snapshot, pending, "
        "rejected or quarantined changes, and every delivery (messageId, time, run, status). "
        "Exit status 1 when the key was never seen.",
    )
    parser.add_argument("sync", metavar="SYNC", help="the sync's name")
    parser.add_argument(
        "key", metavar="KEY", help="the primary key's value as text (an integer as digits)"
    )
    parser.add_argument(
        "config",
        nargs="?",
        type=Path,
        metavar="CONFIG",
        help=f"the sync YAML (default: ${CONFIG_ENV_VAR}, else the packaged demo)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--window", metavar="WINDOW", help="partitioned syncs: this window only (default: all)"
    )
    parser.add_argument("--dry-run-state", action="store_true", help="read the dry runs' own state")
    args = parser.parse_args(argv)
    try:
        project = load_config(args.config or config_path_from_env())
        result = lookup(project, args.sync, args.key, args.window, args.dry_run_state)
    except RudderSyncError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.as_json(), indent=2, sort_keys=False))
    else:
        print(render(result))
    return 0 if result.found else 1
