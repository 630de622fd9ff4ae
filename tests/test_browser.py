"""End to end in a real browser: a Prefect server, a `recforge run` against it, the run's page and the report.

Starts ``prefect server start`` on a free local port with a temporary PREFECT_HOME, runs the CLI in a subprocess
with PREFECT_API_URL pointing at it, then drives Debian's Chromium (``/usr/bin/chromium``, installed by
``.ci/run``) through Playwright: the flow run's Artifacts tab must list the leaderboard and report artifacts, the
leaderboard artifact must show the models, the report artifact must link to the report file, and the report's
plots must have rendered. Screenshots go to ``var/screenshots/`` (or ``$RECFORGE_SCREENSHOTS``). Everything
started here is stopped, also on failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI keeps these as artifacts; docs/images/ holds a committed pair taken by this test (copy them there by hand).
SCREENSHOTS = Path(os.environ.get("RECFORGE_SCREENSHOTS", REPO_ROOT / "var" / "screenshots"))
CHROMIUM = Path("/usr/bin/chromium")
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
RUN_CONFIG = """
[run]
models = ["popularity", "item_knn"]
top_n = 10

[run.source]
kind = "synthetic"
synthetic_users = 300
synthetic_items = 200
synthetic_events = 6000
"""
# Generous: a cold server start migrates its database (~25 s on 2 busy cores), and the UI loads ~4 MB of JS.
SERVER_START_SECONDS = 180
PREFECT_SERVER = [sys.executable, "-m", "prefect", "server", "start"]
UI_TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _api(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/api{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process`` and everything it started (it leads its own process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Prefect server on 127.0.0.1; yields its base URL and the environment that points at it."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # The UI asks this address for data; without it the page would call the default port 4200.
        PREFECT_UI_API_URL=f"{base}/api",
    )
    log_path = home / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [*PREFECT_SERVER, "--host", "127.0.0.1", "--port", str(port), "--no-scheduler", "--no-late-runs"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so _stop reaches the uvicorn workers too
        )
        try:
            deadline = time.monotonic() + SERVER_START_SECONDS
            while True:
                if server.poll() is not None:
                    pytest.fail(f"prefect server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    _api(base, "/health")
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    if time.monotonic() > deadline:
                        pytest.fail(
                            f"prefect server not up after {SERVER_START_SECONDS} s:\n{log_path.read_text()[-3000:]}"
                        )
                    time.sleep(1)
            yield {"base": base, **{k: v for k, v in env.items() if k.startswith("PREFECT_")}}
        finally:
            _stop(server)


@pytest.fixture(scope="module")
def recorded_run(prefect_server: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`recforge run` on small synthetic data against the server; returns the flow run id and report path."""
    work = tmp_path_factory.mktemp("recforge-run")
    config = work / "run.toml"
    config.write_text(RUN_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RECFORGE_"))}
    env.update({k: v for k, v in prefect_server.items() if k != "base"})
    env["PREFECT_API_URL"] = f"{prefect_server['base']}/api"
    command = [sys.executable, "-m", "flows.cli", "run", "--config", str(config)]
    command += ["--db-url", f"sqlite:///{work / 'rf.db'}", "--output-dir", str(work / "var")]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        _stop(process)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-4000:]
    report_lines = [line for line in text.splitlines() if line.startswith("Report: ")]
    assert report_lines, f"`recforge run` printed no 'Report: <path>' line:\n{text[-3000:]}"
    report = Path(report_lines[-1].removeprefix("Report: ").strip())
    assert report.is_file() and report.is_relative_to(work / "var" / "reports")
    runs = _api(prefect_server["base"], "/flow_runs/filter", {"limit": 10})
    assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
    return {"flow_run_id": runs[0]["id"], "report": report, "output": text}


@pytest.fixture()
def browser_context(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium with a fresh profile (Playwright's persistent context owns --user-data-dir)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, see .ci/run)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            context.set_default_timeout(UI_TIMEOUT_MS)
            yield context
        finally:
            context.close()


def _artifact_card(page: Any, key: str) -> Any:
    """The card of the artifact with this key on a flow run's Artifacts tab (a link to the artifact's page)."""
    cards = page.locator("a[href*='/artifacts/artifact/']")
    return cards.filter(has=page.get_by_text(key, exact=True)).first


def _table_cell(page: Any, text: str) -> Any:
    """A table cell whose whole text is ``text`` (the UI renders each cell's value as markdown inside the td)."""
    return page.locator("td", has=page.get_by_text(text, exact=True)).first


def test_dashboard_shows_leaderboard_and_report_link(
    prefect_server: dict[str, str], recorded_run: dict[str, Any], browser_context: Any
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser_context.new_page()
    page.goto(f"{prefect_server['base']}/runs/flow-run/{recorded_run['flow_run_id']}")
    page.get_by_text("Artifacts", exact=True).first.click()
    leaderboard_card = _artifact_card(page, "leaderboard")
    report_card = _artifact_card(page, "report")
    leaderboard_card.wait_for(state="visible")
    report_card.wait_for(state="visible")
    assert page.get_by_text("Models side by side", exact=False).first.is_visible()
    # The UI scrolls inside its own pane, so a full-page shot is just the viewport: make it tall enough to show
    # the run graph and both artifact sections.
    page.set_viewport_size({"width": 1400, "height": 1200})
    report_card.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "dashboard-run.png"))

    # The leaderboard table artifact renders the models as table cells.
    leaderboard_card.click()
    _table_cell(page, "item_knn").wait_for(state="visible")
    assert _table_cell(page, "popularity").is_visible()
    assert _table_cell(page, "collaborative_filtering").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "dashboard-leaderboard.png"), full_page=True)

    # The report link artifact renders a link to the report file.
    page.go_back()
    page.get_by_text("Artifacts", exact=True).first.click()
    _artifact_card(page, "report").click()
    report_uri = recorded_run["report"].resolve().as_uri()
    link = page.locator(f"a[href='{report_uri}']")
    link.wait_for(state="visible")
    assert "Run report" in link.inner_text()


def test_report_plots_render(recorded_run: dict[str, Any], browser_context: Any) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser_context.new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(recorded_run["report"].resolve().as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all("img.plot", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    # Timings, metric bars, metric@K and popularity/coverage at least (no training curves for these models).
    assert len(widths) >= 4 and all(w > 0 for w in widths), widths
    assert page.locator("tr.highlight td", has_text="item_knn").first.is_visible()  # the champion's row
    assert page.locator(".section-error").count() == 0
    assert page.locator("#samples .user").count() == 4
    # The top of the report (header, overview, leaderboard, metric bars) and the popularity section: the whole
    # page is ~6000 px tall, too big a picture for the docs.
    height = page.evaluate("document.querySelector('#cutoffs').getBoundingClientRect().top + window.scrollY")
    page.screenshot(
        path=str(SCREENSHOTS / "report.png"), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": height}
    )
    page.locator("#popularity").screenshot(path=str(SCREENSHOTS / "report-popularity.png"))
