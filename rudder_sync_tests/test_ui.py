"""The Dagster UI end to end: `dagster dev`, headless Chromium, a sync launched and read in the UI.

`dagster dev` runs on 127.0.0.1 against a temporary DAGSTER_HOME and a temporary project whose
data plane is the test gateway. Debian's Chromium (/usr/bin/chromium, installed by `.ci/run`),
driven by Playwright, opens the global asset lineage, checks each sync's three assets, clicks
"Materialize all", waits for the run to succeed (Dagster's GraphQL API is used only to wait), and
reads the counts from the materializations' metadata on the assets' Events pages, where the
diff's preview must fit the 1400 px window. Screenshots go to `screenshots/` (git-ignored);
with RUDDER_SYNC_DOCS_SCREENSHOT=1 the asset graph is also copied to docs/asset-graph.png, the
picture in the README.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Response, expect, sync_playwright

from .gateway import TestGateway
from .helpers import IDENTIFY_SYNC, TRACK_SYNC, WRITE_KEY, write_project

DAGSTER = str(Path(sys.executable).with_name("dagster"))
MODULE = "rudder_sync.definitions"  # `dagster dev -m MODULE` names the code location after it
pytestmark = pytest.mark.slow  # `dagster dev` and Chromium
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never a browser downloaded by Playwright
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "screenshots"
DOCS_SCREENSHOT = REPO / "docs" / "asset-graph.png"
DOCS_SCREENSHOT_ENV_VAR = "RUDDER_SYNC_DOCS_SCREENSHOT"
SYNCS = ("user_events", "user_traits")
STEPS = ("snapshot", "diff", "events")
USERS = 5
STARTUP_SECONDS = 90
RUN_SECONDS = 120
UI_TIMEOUT_MS = 60_000  # generous for a loaded machine; a page takes 1-3 s
LAUNCH_OPERATIONS = ("LaunchPipelineExecution", "LaunchMultipleRuns")
# Before each page load: Dagster's one-time "Join the Dagster community" dialog marked as seen (it
# is also skipped if it shows anyway), and no asset graph groups remembered as expanded.
FRESH_UI_SCRIPT = """
localStorage.setItem('communityNux', '"1"');
for (const key of Object.keys(localStorage)) {
  if (key.startsWith('asset-graph-open-graph-nodes')) localStorage.removeItem(key);
}
"""


@dataclass
class DagsterDev:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=10
        )
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]


@pytest.fixture
def dagster_dev(tmp_path: Path, gateway: TestGateway) -> Iterator[DagsterDev]:
    """`dagster dev` on a free 127.0.0.1 port, two syncs delivering to the test gateway."""
    syncs = {
        "user_events": dict(TRACK_SYNC, send_initial_results=True),
        "user_traits": IDENTIFY_SYNC,
    }
    project = write_project(tmp_path / "project", syncs, users=USERS)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUDDER", "DAGSTER"))}
    env.update(
        DAGSTER_HOME=str(home),
        RUDDER_SYNC_CONFIG=str(project.config_path),
        RUDDERSTACK_DATA_PLANE_URL=gateway.url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
    )
    port = _free_port()
    log = tmp_path / "dagster-dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [DAGSTER, "dev", "-m", MODULE, "-h", "127.0.0.1", "-p", str(port)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: webserver, daemon, code servers, runs
        )
    server = DagsterDev(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        _wait_until_loaded(server)
        yield server
    finally:
        _stop(process)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """Debian's headless Chromium with a fresh profile, through Playwright."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: this test drives Debian's Chromium. Install it with "
            "`apt-get install -y chromium` (.ci/run does)."
        )
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            context.add_init_script(FRESH_UI_SCRIPT)
            ui = context.pages[0] if context.pages else context.new_page()
            ui.add_locator_handler(
                ui.get_by_role("button", name="Skip", exact=True), lambda skip: skip.click()
            )
            ui.set_default_timeout(UI_TIMEOUT_MS)
            ui.set_default_navigation_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)  # expect's own default is 5 s
            yield ui
        finally:
            context.close()


@pytest.mark.timeout(300)
def test_materialize_both_syncs_from_the_ui(
    dagster_dev: DagsterDev, page: Page, gateway: TestGateway
) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    try:
        _drive_the_ui(dagster_dev, page, gateway)
    except BaseException:
        with suppress(Exception):
            page.screenshot(path=SCREENSHOTS / "failure.png")
        raise


def _drive_the_ui(dagster_dev: DagsterDev, page: Page, gateway: TestGateway) -> None:
    base = dagster_dev.url
    # The global asset lineage, every group expanded: each sync's three assets.
    _open_expanded_lineage(page, base)
    page.screenshot(path=SCREENSHOTS / "asset-graph.png")
    for sync in SYNCS:
        page.goto(f"{base}/locations/{MODULE}/asset-groups/{sync}")
        expect(page.get_by_text("Asset Group in", exact=False).first).to_be_visible()
        for step in STEPS:
            expect(page.get_by_text(step, exact=True), f"{sync}/{step}").to_have_count(1)

    # Launch from the UI: "Materialize all" on the global lineage (both syncs, one run). The run's
    # ID is read from the UI's own launch request (the toast that shows it is gone in seconds).
    _open_expanded_lineage(page, base)
    with page.expect_response(_is_launch) as launched:
        page.get_by_role("button", name="Materialize all").click()
    answer = launched.value.json()
    run_ids = _launched_runs(answer)
    assert len(run_ids) == 1, f"not one run launched: {answer}"
    run_id = run_ids[0]
    short_id = run_id[:8]
    status = _wait_for_run(dagster_dev, run_id)
    assert status == "SUCCESS", f"run {short_id} ended {status}\n{dagster_dev.log_tail()}"
    page.goto(f"{base}/runs/{run_id}")
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    steps = len(SYNCS) * len(STEPS)
    expect(page.get_by_text(f"Succeeded ({steps})", exact=True)).to_be_visible()
    page.screenshot(path=SCREENSHOTS / "run.png")

    # The counts, read from each materialization's metadata on the assets' Events pages.
    for sync in SYNCS:
        diff = _metadata(page, base, sync, "diff", short_id, "added", "changed", "removed")
        assert diff == {"added": str(USERS), "changed": "0", "removed": "0"}, (sync, diff)
        events = _metadata(
            page, base, sync, "events", short_id, "status", "events_accepted", "events_rejected"
        )
        expected = {"status": "delivered", "events_accepted": str(USERS), "events_rejected": "0"}
        assert events == expected, (sync, events)
        if sync == SYNCS[0]:
            page.screenshot(path=SCREENSHOTS / "events-metadata.png")

    # The diff's preview at 1400 px: the counts above it, nothing wider than the window, each
    # messageId (shortened) on one line. The screenshot is the one the docs and reports show.
    _check_diff_preview(page, base, SYNCS[0], short_id)

    # What the gateway received: the first run's rows, once each, as both kinds of call.
    received = sorted((e["type"], e.get("event"), e["userId"]) for e in gateway.events)
    users = [f"u{i}" for i in range(1, USERS + 1)]
    assert received == [("identify", None, u) for u in users] + [
        ("track", "User Signed Up", u) for u in users
    ]
    assert gateway.schema_errors == []

    _open_expanded_lineage(page, base)
    expect(page.get_by_text("Materialized", exact=True)).to_have_count(len(SYNCS) * len(STEPS))
    page.wait_for_timeout(1000)  # let the graph settle for the picture
    page.screenshot(path=SCREENSHOTS / "asset-graph-materialized.png")
    if os.environ.get(DOCS_SCREENSHOT_ENV_VAR):
        shutil.copyfile(SCREENSHOTS / "asset-graph-materialized.png", DOCS_SCREENSHOT)


def _open_expanded_lineage(page: Page, base: str) -> None:
    """The global asset lineage (/asset-groups) with every group expanded, the asset list hidden.

    With several groups the graph opens collapsed, one box per group (the page fixture forgets
    what a previous visit expanded); "Expand all groups" (Alt+E) opens them all and zooms to fit.
    Clicking one box instead zooms into it and the other box leaves the drawn part of the graph.
    """
    page.goto(f"{base}/asset-groups")
    expect(page.get_by_role("button", name="Materialize all")).to_be_enabled()
    collapsed = page.get_by_role("img", name="unfold_more", exact=True)
    expanded = page.get_by_role("img", name="unfold_less", exact=True)
    expect(collapsed).to_have_count(len(SYNCS))  # the graph is drawn: one box per sync
    hide_list = page.get_by_role("button", name="panel_show_right", exact=True)
    if hide_list.count():
        hide_list.click()
    for _attempt in range(3):
        page.keyboard.press("Alt+e")
        with suppress(AssertionError):  # the expanded groups go to the URL at once
            expect(page).to_have_url(re.compile(r"[?&]expanded="), timeout=5_000)
            break
    expect(expanded).to_have_count(len(SYNCS))
    expect(collapsed).to_have_count(0)
    for step in STEPS:
        expect(page.get_by_text(step, exact=True)).to_have_count(len(SYNCS))


def _is_launch(response: Response) -> bool:
    """The UI's GraphQL request that launches the run(s) of "Materialize all"."""
    request = response.request
    if request.method != "POST" or "/graphql" not in request.url:
        return False
    body = request.post_data_json
    return isinstance(body, dict) and body.get("operationName") in LAUNCH_OPERATIONS


def _launched_runs(answer: Any) -> list[str]:
    """IDs of the runs in a launch mutation's answer (objects of type Run)."""
    if isinstance(answer, list):
        return [run for item in answer for run in _launched_runs(item)]
    if not isinstance(answer, dict):
        return []
    if answer.get("__typename") == "Run":
        return [answer["id"]]
    return [run for value in answer.values() for run in _launched_runs(value)]


def _metadata(
    page: Page, base: str, sync: str, step: str, short_id: str, *keys: str
) -> dict[str, str]:
    """Values of the latest materialization's metadata, as the asset's Events page shows them."""
    page.goto(f"{base}/assets/{sync}/{step}?view=events")
    expect(page.get_by_text(f"Materialized in run {short_id}", exact=True)).to_be_visible()
    values = {}
    for key in keys:
        # The metadata table's row whose first cell is the key (not rows of a nested preview).
        cell = page.locator(f"xpath=//tr[td[1][normalize-space(.)='{key}']]/td[2]")
        expect(cell, f"{sync}/{step} metadata {key}").to_have_count(1)
        values[key] = cell.inner_text().strip()
    return values


# The preview's table: how far right it reaches, which scrolling boxes around it overflow
# sideways, its column titles, and on how many lines each row's messageId is drawn.
PREVIEW_LAYOUT_JS = """(cell) => {
  const table = cell.querySelector('table');
  const overflowing = [];
  for (let box = cell; box; box = box.parentElement) {
    const x = getComputedStyle(box).overflowX;
    if ((x === 'auto' || x === 'scroll') && box.scrollWidth > box.clientWidth + 1) {
      overflowing.push(`${box.tagName}.${box.className} ${box.scrollWidth} > ${box.clientWidth}`);
    }
  }
  const rows = [...table.querySelectorAll('tr')];
  const titles = [...rows[0].children].map((c) => c.innerText.trim());
  const at = titles.indexOf('messageId');
  const lines = rows.slice(1).map((row) => {
    const range = document.createRange();
    range.selectNodeContents(row.children[at]);
    return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
  });
  return {right: table.getBoundingClientRect().right, window: window.innerWidth, overflowing,
          titles, lines};
}"""


def _check_diff_preview(page: Page, base: str, sync: str, short_id: str) -> None:
    """The diff's preview fits a 1400 px window; a screenshot of it is kept (diff-1400.png)."""
    page.goto(f"{base}/assets/{sync}/diff?view=events")
    expect(page.get_by_text(f"Materialized in run {short_id}", exact=True)).to_be_visible()
    keys = page.locator("xpath=//tr[td[2]]/td[1]").all_inner_texts()
    keys = [key.strip() for key in keys]
    assert keys.index("removed") < keys.index("preview"), keys  # the counts come first
    cell = page.locator("xpath=//tr[td[1][normalize-space(.)='preview']]/td[2]")
    expect(cell.locator("table")).to_have_count(1)
    cell.scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # let the layout settle for the picture
    page.screenshot(path=SCREENSHOTS / "diff-1400.png")
    layout = cell.evaluate(PREVIEW_LAYOUT_JS)
    assert layout["window"] == 1400, layout
    assert layout["overflowing"] == [], layout  # no sideways scrolling to read the preview
    assert layout["right"] <= layout["window"], layout
    assert layout["titles"][:3] == ["id", "change", "event"], layout
    assert "messageId" in layout["titles"] and "userId" in layout["titles"], layout
    assert layout["lines"] == [1] * USERS, layout  # each messageId on one line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_loaded(server: DagsterDev) -> None:
    """Until the webserver answers and the code location is loaded (or failed to load)."""
    query = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
        name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"dagster dev exited with {server.process.returncode}\n{server.log_tail()}")
        with suppress(httpx.HTTPError):
            entries = server.graphql(query)["workspaceOrError"].get("locationEntries") or []
            loaded = [e for e in entries if e["loadStatus"] == "LOADED"]
            if entries and len(loaded) == len(entries):
                for entry in loaded:
                    error = entry["locationOrLoadError"]
                    if error["__typename"] != "RepositoryLocation":
                        pytest.fail(f"code location {entry['name']} failed to load: {error}")
                return
        time.sleep(0.5)
    pytest.fail(f"dagster dev did not load within {STARTUP_SECONDS}s\n{server.log_tail()}")


def _wait_for_run(server: DagsterDev, run_id: str) -> str:
    """The run's final status (the daemon dequeues it, a subprocess runs it)."""
    query = "query($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }"
    deadline = time.monotonic() + RUN_SECONDS
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        run = server.graphql(query, runId=run_id)["runOrError"]
        status = run.get("status", run["__typename"])
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(0.5)
    return f"{status} (still, after {RUN_SECONDS}s)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop `dagster dev` and everything it started: SIGTERM to the group, then SIGKILL."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children still shutting down, or a stuck leader
    process.wait(timeout=10)
