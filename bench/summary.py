"""The quick benchmarks in one go, each figure next to the one recorded in RESULTS.md.

Runs each quick benchmark with ``--no-record`` (RESULTS.md is left alone), reads the markdown
tables it prints, finds the table of the same columns in that benchmark's recorded section, and
prints one table: benchmark, row, column, recorded, now, now / recorded, and whether the change
is for the worse by more than ``--tolerance`` (a ratio column such as "/ bare" or "ours / floor"
is measured within each run, so it compares across machines better than seconds do).

    .venv/bin/python -m bench.summary               # ~5-8 min on 2 cores
    .venv/bin/python -m bench.summary --only startup,bench_small_runs
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from . import common

# section name in RESULTS.md -> the quick command (module and arguments)
QUICK: dict[str, list[str]] = {
    "startup": ["bench.bench_startup", "--repeat", "3"],
    "bench_small_runs_quick": ["bench.bench_small_runs", "--quick", "--repeat", "3"],
    "bench_diff": ["bench.bench_diff", "--rows", "100000", "--reuse"],
    "bench_delivery": ["bench.bench_delivery", "--events", "200000", "--flat-events", "0"],
    "bench_initial": ["bench.bench_initial"],
}
# Columns that count things (the same in every run) or describe the machine, not a figure.
NOT_FIGURES = {
    "events",
    "rows",
    "changes",
    "requests",
    "arrived (distinct)",
    "avg body kb",
    "other cpu %",
    "target",
    "range s",
    "",
}
# Columns where more is better; in every other figure column less is better.
HIGHER_IS_BETTER = re.compile(r"/s|\bvs\b|pandas / ours|sdk time / ours", re.I)
NUMBER = re.compile(r"^[+-]?[\d,]*\.?\d+")


@dataclass
class Table:
    headers: list[str]
    rows: dict[str, list[str]]  # first cell -> cells


def tables(text: str) -> list[Table]:
    """Every markdown table in the text."""
    found: list[Table] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1]):
            headers = _cells(lines[i])
            rows: dict[str, list[str]] = {}
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = _cells(lines[i])
                rows[cells[0]] = cells
                i += 1
            found.append(Table(headers, rows))
        else:
            i += 1
    return found


def _cells(line: str) -> list[str]:
    return [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]


def number(cell: str) -> float | None:
    """The figure in a cell ("1,234", "2.25x", "0.60 s", "+1.20"), None for anything else."""
    cell = cell.strip()
    if " / " in cell or re.match(r"^[\d.]+-[\d.]+$", cell):
        return None  # several figures in one cell, or a range
    match = NUMBER.match(cell)
    return float(match.group(0).replace(",", "")) if match else None


def recorded_section(name: str) -> str:
    text = common.RESULTS.read_text() if common.RESULTS.exists() else ""
    match = re.search(
        rf"<!-- {re.escape(name)}:start -->(.*?)<!-- {re.escape(name)}:end -->", text, re.S
    )
    return match.group(1) if match else ""


def compare(name: str, fresh: str, tolerance: float) -> list[list[str]]:
    """Rows of the summary for one benchmark."""
    old_tables = {tuple(t.headers): t for t in tables(recorded_section(name))}
    out: list[list[str]] = []
    for table in tables(fresh):
        old = old_tables.get(tuple(table.headers))
        for key, cells in table.rows.items():
            before = old.rows.get(key) if old else None
            for column, cell in zip(table.headers[1:], cells[1:], strict=False):
                if column.lower() in NOT_FIGURES:
                    continue
                now = number(cell)
                if now is None:
                    continue
                index = table.headers.index(column)
                then = number(before[index]) if before and index < len(before) else None
                if then is None:
                    out.append([name, key, column, "-", cell, "-", "new"])
                    continue
                change = now / then if then else float("inf")
                worse = (
                    change < 1 - tolerance
                    if HIGHER_IS_BETTER.search(column)
                    else (change > 1 + tolerance)
                )
                out.append(
                    [
                        name,
                        key,
                        column,
                        before[index],
                        cell,
                        f"{change:.2f}",
                        "**worse**" if worse else "",
                    ]
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", help="comma-separated benchmarks: " + ", ".join(QUICK))
    parser.add_argument(
        "--tolerance", type=float, default=0.15, help="a change worse than this is flagged"
    )
    parser.add_argument("--quiet-timeout", type=float, default=30)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(QUICK)
    unknown = [n for n in names if n not in QUICK]
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(unknown)}")
    rows: list[list[str]] = []
    failed: list[str] = []
    for name in names:
        command = [sys.executable, "-m", *QUICK[name], "--no-record"]
        command += ["--quiet-timeout", str(args.quiet_timeout)]
        common.log(f"{name}: {' '.join(command[2:])}")
        started = time.monotonic()
        done = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True)
        common.log(f"  {time.monotonic() - started:.0f} s")
        if done.returncode != 0:
            failed.append(name)
            common.log(f"  failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
            continue
        rows += compare(name, done.stdout, args.tolerance)
    headers = ["benchmark", "row", "figure", "recorded", "now", "now / recorded", ""]
    print(common.markdown_table(headers, rows))
    worse = sum(1 for row in rows if row[-1])
    print(
        f"\n{len(rows)} figures, {worse} worse by more than {args.tolerance:.0%} "
        "(seconds and MB: more is worse; events/s and 'vs'/'/ ours' ratios: less is worse). "
        "Recorded figures may come from another machine or a quieter one: see each section's "
        "date, machine and other CPU % in bench/RESULTS.md."
        + (f" Failed: {', '.join(failed)}." if failed else "")
    )
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
