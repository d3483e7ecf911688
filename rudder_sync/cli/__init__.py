"""The `python -m rudder_sync` dispatcher: COMMAND -> `rudder_sync.cli.<module>.main(argv)`.

Adding a command is a module with a `main(argv: list[str]) -> int` and a line in COMMANDS.
"""

from __future__ import annotations

import importlib

# command -> (module under rudder_sync.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "check": (
        "check",
        "check a project's config (and with --connect its warehouse and data "
        "planes): every problem, one line each with its fix",
    ),
    "lookup": ("lookup", "show one record's snapshot, pending changes and deliveries (one key)"),
    "run": ("run", "run syncs now, in this process, as `dagster job execute` does (fast)"),
    "state": ("state", "move a sync's in-warehouse state to its local file, or drop its tables"),
}


def usage() -> str:
    lines = ["usage: python -m rudder_sync COMMAND [ARGS...]", "", "commands:"]
    width = max((len(name) for name in COMMANDS), default=0)
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in sorted(COMMANDS.items())]
    lines.append("")
    lines.append("python -m rudder_sync COMMAND --help shows a command's options.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"python -m rudder_sync: unknown command '{command}'.\n\n{usage()}")
        return 2
    module = importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")
    return int(module.main(rest) or 0)
