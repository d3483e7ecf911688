"""The README's walkthrough, as written: its YAML, its environment and its commands, from a project
folder of its own, against a real PostgreSQL table and the test gateway.

The YAML block and the `python -m rudder_sync ...` lines are read from README.md, so the
walkthrough cannot drift from what works.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .gateway import TestGateway
from .helpers import REPO, WRITE_KEY, cli_env
from .postgres import PgDatabase

pytestmark = pytest.mark.slow  # each step is a command in a subprocess

CUSTOMERS = (
    "create table public.customers (id bigint primary key, email text, plan text, country text,"
    " updated_at timestamptz)",
    "insert into public.customers select i, 'c' || i || '@example.com', 'free', 'DE', now()"
    " from generate_series(1, 5) as t(i)",
)


def walkthrough() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## Walkthrough", 1)[1].split("\n## ", 1)[0]


def commands(section: str) -> list[list[str]]:
    """The walkthrough's `python -m rudder_sync` lines, in order, without the venv's prefix."""
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    found = [line for line in lines if line.startswith(".venv/bin/python -m rudder_sync ")]
    return [shlex.split(line.split("#", 1)[0])[1:] for line in found]


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240
    )


def test_the_readme_walkthrough_delivers_from_a_postgres_table(
    tmp_path: Path, pg: PgDatabase, gateway: TestGateway
) -> None:
    section = walkthrough()
    project = tmp_path / "rudder_project"
    (project / ".dagster").mkdir(parents=True)
    yaml_block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert yaml_block, "the walkthrough has no YAML block"
    (project / "rudder_sync.yaml").write_text(yaml_block.group(1))
    dry_run = re.search(r"printf '(.*?)' > dry_run.yaml", section)
    assert dry_run, "the walkthrough no longer writes dry_run.yaml"
    (project / "dry_run.yaml").write_text(dry_run.group(1).encode().decode("unicode_escape"))
    pg.sql(*CUSTOMERS)
    env = cli_env(
        DAGSTER_HOME=str(project / ".dagster"),
        RUDDER_SYNC_CONFIG=str(project / "rudder_sync.yaml"),
        PG_URL=pg.url,
        RUDDERSTACK_DATA_PLANE_URL=gateway.url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
    )

    check, dry, first = commands(section)[:3]
    assert check[:3] == ["-m", "rudder_sync", "check"]
    checked = run(check, env, project)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    assert "dry_run.yaml" in dry
    dried = run(dry, env, project)
    assert dried.returncode == 0, dried.stderr[-3000:]
    assert gateway.events == []

    delivered = run(first, env, project)
    assert delivered.returncode == 0, delivered.stderr[-3000:]
    sent = sorted((e["userId"], e["context"]["traits"]["plan"]) for e in gateway.events)
    assert sent == [(f"customer-{i}", "free") for i in range(1, 6)]
    assert {e["type"] for e in gateway.events} == {"identify"}
    assert {e["context"]["country"] for e in gateway.events} == {"DE"}

    # step 7: one changed row, and only it is sent again
    pg.sql("update public.customers set plan = 'pro' where id = 3")
    again = run(first, env, project)
    assert again.returncode == 0, again.stderr[-3000:]
    later = [(e["userId"], e["context"]["traits"]["plan"]) for e in gateway.events[5:]]
    assert later == [("customer-3", "pro")]
    output = checked.stdout + dried.stderr + delivered.stderr + again.stderr
    assert WRITE_KEY not in output
    assert "pg-test-pw" not in output
