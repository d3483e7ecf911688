"""Refresh docs/asset-graph.png: the demo's asset graph as a new user sees it after the quick start.

Runs the README's quick start command (minus the install) in a scratch copy of `.dagster_home`,
starts `dagster dev` from the checkout on that DAGSTER_HOME, and takes a picture of the global
asset lineage (every group expanded) with Debian's Chromium through Playwright, as
rudder_sync_tests/test_ui.py does. Needs the test extras and /usr/bin/chromium.

    .venv/bin/python scripts/screenshot_asset_graph.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import suppress
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from rudder_sync_tests import test_ui as ui  # noqa: E402
from rudder_sync_tests.test_first_contact import (  # noqa: E402
    DAGSTER,
    demo_parts,
    quick_start_command,
    shell_env,
)

GROUPS = 3  # user_events, user_traits, plan_history
MATERIALIZED = 6  # the quick start's two syncs, three assets each
VIEWPORT = {"width": 1400, "height": 1300}  # tall enough for three groups at a readable zoom
TIMEOUT_MS = 60_000


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="asset-graph-"))
    checkout = scratch / "checkout"
    home = checkout / ".dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / ".dagster_home" / "dagster.yaml", home)
    env = shell_env(scratch / "demo")
    export, materialize = demo_parts(quick_start_command())
    subprocess.run(["bash", "-c", f"{export} && {materialize}"], cwd=checkout, env=env, check=True)

    port = ui._free_port()
    log = scratch / "dagster-dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [DAGSTER, "dev", "-h", "127.0.0.1", "-p", str(port)],  # [tool.dagster], as users do
            cwd=REPO,
            env=dict(env, DAGSTER_HOME=str(home)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ui.DagsterDev(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        ui._wait_until_loaded(server)
        picture = scratch / "asset-graph.png"
        _take_picture(server.url, scratch / "chromium-profile", picture)
        shutil.copyfile(picture, REPO / "docs" / "asset-graph.png")
        print(f"docs/asset-graph.png refreshed (scratch: {scratch})")
    finally:
        ui._stop(process)


def _take_picture(base: str, profile: Path, picture: Path) -> None:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(ui.CHROMIUM),
            headless=True,
            args=ui.CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        try:
            context.add_init_script(ui.FRESH_UI_SCRIPT)
            page = context.pages[0] if context.pages else context.new_page()
            page.add_locator_handler(
                page.get_by_role("button", name="Skip", exact=True), lambda skip: skip.click()
            )
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.goto(f"{base}/asset-groups")
            expect(page.get_by_role("button", name="Materialize all")).to_be_enabled()
            expect(page.get_by_role("img", name="unfold_more", exact=True)).to_have_count(GROUPS)
            hide_list = page.get_by_role("button", name="panel_show_right", exact=True)
            if hide_list.count():
                hide_list.click()
            for _attempt in range(3):
                page.keyboard.press("Alt+e")  # "Expand all groups", zoomed to fit
                with suppress(AssertionError):
                    expect(page).to_have_url(re.compile(r"[?&]expanded="), timeout=5_000)
                    break
            expect(page.get_by_role("img", name="unfold_less", exact=True)).to_have_count(GROUPS)
            expect(page.get_by_text("Materialized", exact=True)).to_have_count(MATERIALIZED)
            page.wait_for_timeout(2000)  # let the graph settle
            page.screenshot(path=str(picture))
        finally:
            context.close()


if __name__ == "__main__":
    main()
