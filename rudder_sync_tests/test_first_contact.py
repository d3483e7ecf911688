"""What a new user meets first: the README's quick start, runs kept for the UI, a quiet shell.

The quick start's command is read from README.md and run as written (minus the install), in a
copy of the checkout's `.dagster_home`; the instance it leaves behind is then opened the way
`dagster dev` opens it, and must hold the runs, the materializations and the checks.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus

from rudder_sync.definitions import build_definitions, load_project, rudderstack_from_env

from .helpers import DAGSTER, REPO

SYNCS = ("user_events", "user_traits")
STEPS = ("snapshot", "diff", "events")
# checks every run of the quick start's syncs records (later ones may add more)
CHECKS = {"diff": {"change_guard", "rejected_rows"}, "events": {"gateway_rejections"}}
# a warning line from Python's warnings module: "<file>:<line>: SomethingWarning: ..."
UNSTABLE_API = re.compile(r"^\S+:\d+: (BetaWarning|PreviewWarning)\b", re.M)


def quick_start_command() -> str:
    """Command 1 of the README's quick start (the one that runs the demo), as written."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    return commands[0]


def demo_parts(command: str) -> tuple[str, str]:
    """The `export DAGSTER_HOME=...` and the `dagster ...` parts (the install is left out)."""
    parts = [part.strip() for part in command.split(" && ")]
    export = [p for p in parts if p.startswith("export DAGSTER_HOME=")]
    dagster = [p for p in parts if p.startswith(".venv/bin/dagster ")]
    assert export and dagster, f"the quick start no longer sets DAGSTER_HOME and runs: {command}"
    return export[0], dagster[0].replace(".venv/bin/dagster", shlex.quote(DAGSTER), 1)


def shell_env(demo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUDDER", "DAGSTER_"))}
    env["RUDDER_SYNC_DEMO_DIR"] = str(demo)
    return env


def run_in_checkout(
    checkout: Path, script: str, env: dict[str, str]
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def test_the_quick_start_sets_a_dagster_home_the_checkout_provides() -> None:
    export, dagster = demo_parts(quick_start_command())
    assert export == 'export DAGSTER_HOME="$PWD/.dagster_home"'
    assert (REPO / ".dagster_home" / "dagster.yaml").is_file()
    # the folder's runs are git-ignored, its dagster.yaml is not
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".dagster_home/history/runs.db"], cwd=REPO, check=False
    )
    kept = subprocess.run(
        ["git", "check-ignore", "-q", ".dagster_home/dagster.yaml"], cwd=REPO, check=False
    )
    assert (ignored.returncode, kept.returncode) == (0, 1)


@pytest.mark.slow
def test_quick_start_runs_from_the_shell_are_in_the_instance_the_ui_reads(tmp_path: Path) -> None:
    """The quick start, then `dagster job execute` as the README shows it, in one shell: both
    runs, every materialization and every check are in $DAGSTER_HOME, and stderr holds no
    beta/preview warning caused by our definitions."""
    checkout = tmp_path / "checkout"
    (checkout / ".dagster_home").mkdir(parents=True)
    shutil.copy(REPO / ".dagster_home" / "dagster.yaml", checkout / ".dagster_home")
    env = shell_env(tmp_path / "demo")
    export, materialize = demo_parts(quick_start_command())
    job = f"{shlex.quote(DAGSTER)} job execute -m rudder_sync.definitions -j user_events"

    first = run_in_checkout(checkout, f"{export} && {materialize}", env)
    second = run_in_checkout(checkout, f"{export} && {job}", env)

    for result in (first, second):
        assert "DRY RUN for sync 'user_events'" in result.stdout + result.stderr
        assert "Using temporary directory" not in result.stderr, "DAGSTER_HOME was not used"
        assert "No dagster instance configuration file" not in result.stdout + result.stderr
        assert not UNSTABLE_API.findall(result.stderr), result.stderr[-3000:]

    # what `dagster dev` reads: the instance in the checkout's .dagster_home
    home = checkout / ".dagster_home"
    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert [run.status for run in runs] == [DagsterRunStatus.SUCCESS] * 2
        assert runs[0].job_name == "user_events"  # newest first: the job of the README
        for sync in SYNCS:
            for step in STEPS:
                key = AssetKey([sync, step])
                assert instance.get_latest_materialization_event(key) is not None, key
        checked = {
            (*check.asset_key.path, check.name)
            for run in runs
            for entry in instance.all_logs(
                run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
            )
            for check in [entry.dagster_event.asset_check_evaluation_data.asset_check_key]
        }
        expected = {
            (sync, step, name) for sync in SYNCS for step, names in CHECKS.items() for name in names
        }
        assert expected <= checked, expected - checked


def test_the_demo_definitions_raise_no_beta_or_preview_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: building and resolving the demo's definitions (partitioned sync included)."""
    for name in list(os.environ):
        if name.startswith(("RUDDER", "DAGSTER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RUDDER_SYNC_DEMO_DIR", str(tmp_path / "demo"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        project = load_project()
        defs = build_definitions(project, rudderstack_from_env(project.delivery))
        repository = defs.get_repository_def()
        repository.get_all_jobs()
        repository.asset_graph  # noqa: B018 - resolving the asset graph is the point
    assert "plan_history" in project.syncs, "the demo should include a partitioned sync"
    unstable = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if w.category.__name__ in ("BetaWarning", "PreviewWarning")
    ]
    assert unstable == []


def test_the_demo_says_its_row_without_ids_is_rejected_on_purpose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quick start's one warning about a row says that the row is there on purpose."""
    for name in list(os.environ):
        if name.startswith(("RUDDER", "DAGSTER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RUDDER_SYNC_DEMO_DIR", str(tmp_path / "demo"))
    project = load_project()
    defs = build_definitions(project, rudderstack_from_env(project.delivery))
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("user_traits").execute_in_process(instance=instance)
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    warned = [message for message in logs if "not sent" in message]
    assert len(warned) == 1
    assert warned[0].startswith("sync 'user_traits': row id=200 not sent: neither user ID nor")
    assert warned[0].endswith(
        "; on purpose: the demo's users row 200 has no ID, to show how a row that cannot be sent "
        "is reported (the diff's rejected_rows check)"
    )
