"""The web UI in a real headless Chromium (Debian's, driven by Playwright for Python; no browser
download), served by uvicorn over ClickHouse (chDB) holding runs that real emitters wrote through
the gateway. Screenshots of every page land in build/ui-screenshots/."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from demo_data import demo_stack

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "ui-screenshots"
RUN_A, RUN_B = f"br-a-{uuid.uuid4().hex[:6]}", f"br-b-{uuid.uuid4().hex[:6]}"
SPIKE_RUN = f"br-spike-{uuid.uuid4().hex[:6]}"
SPIKE_STEP, SPIKE_STEPS, SPIKE_VALUE = 2345, 4000, 100.0
# What uPlot strokes the first series with (SERIES_COLORS[0] in frontend/src/chart.js).
SERIES_RGB = (0x2F, 0x6F, 0xDE)


def _infra_required() -> bool:
    return any((os.environ.get(k) or "").lower() in ("1", "true", "yes", "on") for k in ("CI", "RUNWIRE_REQUIRE_INFRA"))


def _chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "chromium is not installed (Debian: apt-get install -y chromium; `make test` does it)"
    if _infra_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def stack_data(clickhouse_url):
    """(client, stack): two demo runs (2 nodes x 2 ranks, simulated GPUs), one run with a single
    spike among 4,000 steps, and an open alert on RUN_A's first GPU."""
    from runwire.ingest.alerts.lifecycle import Alert
    from runwire.ingest.alerts.store import AlertStore
    from runwire.run import Run

    with demo_stack(clickhouse_url, "ui_browser", [(RUN_A, 4.0), (RUN_B, 2.5)]) as (client, stack):
        run = Run(project="demo", name="spike", run_id=SPIKE_RUN, gateway=stack.gateway.address, gpu=False)
        for step in range(SPIKE_STEPS):
            run.log({"loss": SPIKE_VALUE if step == SPIKE_STEP else 1.0 + 0.001 * (step % 7)}, step=step)
        run.finish()
        deadline = time.monotonic() + 30
        while client.query("SELECT count() FROM metrics WHERE run_id = {r:String}",
                           parameters={"r": SPIKE_RUN}).result_rows[0][0] < SPIKE_STEPS:
            assert time.monotonic() < deadline, "the spike run was not stored"
            time.sleep(0.1)
        gpu_uuid, host, ts = client.query(
            "SELECT gpu_uuid, host, min(ts) + INTERVAL 1 SECOND FROM gpu_samples WHERE run_id = {r:String} "
            "GROUP BY gpu_uuid, host ORDER BY host, gpu_uuid LIMIT 1", parameters={"r": RUN_A}).result_rows[0]
        started = int((ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)).timestamp() * 1e9)
        AlertStore(client).write([Alert(
            alert_id="br-overheat", rule="gpu_overheat", severity="critical", state="firing", project="demo",
            run_id=RUN_A, host=host, gpu_uuid=gpu_uuid, rank=0, subject="", value=93.0, message="GPU at 93 C",
            started_ns=started, fired_ns=started, resolved_ns=None, updated_ns=time.time_ns(),
            observed_ns=time.time_ns())])
        yield client, stack


@pytest.fixture(scope="module")
def ui_url(stack_data):
    from runwire.storage.client import connect
    from runwire.storage.ui.app import STATIC, create_app
    from runwire.storage.ui.server import UIServer

    assert (STATIC / "app.js").is_file(), "the front end is not built: make install (npm ci && npm run build)"
    url, database = stack_data[1].clickhouse_url, stack_data[0].database
    app = create_app(lambda: connect(url, database, create=False, autogenerate_session_id=False))
    with UIServer(app, "127.0.0.1:0") as server:
        yield server.url


@pytest.fixture(scope="module")
def browser():
    executable = _chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        if _infra_required():
            pytest.fail(f"playwright is not installed: {exc}", pytrace=False)
        pytest.skip(f"playwright is not installed: {exc}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, ui_url):
    """A fresh page on the UI; the test fails on any console error or uncaught exception."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=ui_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.set_default_timeout(20_000)
    yield page
    context.close()
    assert errors == [], errors


def screenshot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_drawn(page) -> None:
    page.wait_for_function("window.runwire && window.runwire.drawnAt !== null")


def series_pixels(page, selector: str) -> list[int]:
    """Per matching chart: how many canvas pixels carry the first series' colour (the mean line
    and its band). uPlot draws on a canvas, so this is what the user sees."""
    return page.evaluate("""([selector, rgb]) => [...document.querySelectorAll(selector)].map((box) => {
        const canvas = box.querySelector("canvas");
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i + 3] > 200 && Math.abs(data[i] - rgb[0]) < 40 && Math.abs(data[i + 1] - rgb[1]) < 40
              && Math.abs(data[i + 2] - rgb[2]) < 40) n++;
        }
        return n;
    })""", [selector, list(SERIES_RGB)])


# --- pages -----------------------------------------------------------------------------------------


def test_runs_page_filter_box_and_compare(page):
    page.goto("/#/runs")
    page.wait_for_selector(f"#runs tr[data-run='{RUN_A}']")
    assert page.locator("#total").inner_text() == "3 runs"
    screenshot(page, "runs")

    page.fill("#filter", "metrics.loss lt 2")
    page.press("#filter", "Enter")
    error = page.locator("#filter-error")
    error.wait_for(state="visible")
    lines = error.inner_text().splitlines()
    assert "(position 13)" in lines[0] and lines[2].index("^") == lines[1].index("lt")
    screenshot(page, "runs-filter-error")

    page.fill("#filter", f"attributes.run_id = '{RUN_B}'")
    page.press("#filter", "Enter")
    error.wait_for(state="hidden")
    page.wait_for_function("document.querySelectorAll('#runs tbody tr').length === 1")
    assert page.locator("#runs tbody tr").get_attribute("data-run") == RUN_B

    page.fill("#filter", "")
    page.press("#filter", "Enter")
    page.wait_for_function("document.querySelectorAll('#runs tbody tr').length === 3")
    page.click("#runs th[data-sort='duration']")
    page.wait_for_function("document.querySelector('#runs th[data-sort=duration]').classList.contains('sorted')")
    for run_id in (RUN_A, RUN_B):
        page.check(f"#runs tr[data-run='{run_id}'] input[type=checkbox]")
    page.click("#compare")
    page.wait_for_url("**/#/compare?*")
    page.wait_for_selector("#params-diff")


def test_run_page_draws_every_metric_gpus_and_layout(page, stack_data):
    metrics = sorted(r[0] for r in stack_data[0].query(
        "SELECT DISTINCT name FROM metrics WHERE run_id = {r:String}", parameters={"r": RUN_A}).result_rows)
    page.goto(f"/#/run/{RUN_A}")
    wait_drawn(page)
    page.wait_for_selector("#gpus .chart canvas")
    drawn = page.eval_on_selector_all("#charts .chart", "boxes => boxes.map(b => b.dataset.metric)")
    assert drawn == metrics
    assert all(n > 100 for n in series_pixels(page, "#charts .chart")), "a chart drew no curve"
    assert len(page.locator("#gpus .chart").all()) == 4  # 2 hosts x 2 GPUs
    assert all(n > 30 for n in series_pixels(page, "#gpus .chart")), "a GPU chart drew nothing"
    assert page.locator("#ranks tr").count() == 5  # header + 4 ranks
    assert "lr" in page.inner_text("main")

    # Hover: the band's exact values with the rank and step where they occurred.
    box = page.locator("#charts .chart[data-metric='loss'] .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    hover = page.locator("#charts .chart[data-metric='loss'] .hover")
    hover.wait_for(state="visible")
    assert "rank" in hover.inner_text() and "step" in hover.inner_text()

    page.select_option("#xaxis", "relative")
    wait_drawn(page)
    page.wait_for_function("window.runwire.charts.loss && window.runwire.charts.loss.xs()[0] < 60")
    page.check("#logscale")
    page.check("#perrank")
    page.wait_for_function("window.runwire.charts.loss && window.runwire.charts.loss.lineCount() === 5")
    page.select_option("#xaxis", "step")
    page.wait_for_function("window.runwire.charts.loss && window.runwire.charts.loss.xs()[0] === 0")
    page.uncheck("#logscale")
    page.uncheck("#perrank")
    page.wait_for_function("window.runwire.charts.loss && window.runwire.charts.loss.lineCount() === 1")
    screenshot(page, "run")


def test_zoom_requeries_and_shows_the_spike_points(page):
    page.goto(f"/#/run/{SPIKE_RUN}")
    wait_drawn(page)
    chart = "window.runwire.charts.loss"
    before = page.evaluate(f"{chart}.xs().length")
    assert before < 1000 and page.evaluate(f"{chart}.bandMax()") == SPIKE_VALUE  # kept in a bucket
    over = page.locator("#charts .chart[data-metric='loss'] .u-over")
    box = over.bounding_box()
    x0, x1 = page.evaluate(f"[{chart}.u.valToPos({SPIKE_STEP - 40}, 'x'), {chart}.u.valToPos({SPIKE_STEP + 40}, 'x')]")
    with page.expect_response(lambda r: "/curves?" in r.url and "lo=" in r.url) as response:
        page.mouse.move(box["x"] + x0, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + (x0 + x1) / 2, box["y"] + box["height"] / 2, steps=5)
        page.mouse.move(box["x"] + x1, box["y"] + box["height"] / 2, steps=5)
        page.mouse.up()
    assert response.value.ok
    page.wait_for_function(f"{chart}.zoomed && {chart}.xs().includes({SPIKE_STEP})")
    xs = page.evaluate(f"{chart}.xs()")
    assert len(xs) > 40 and xs == list(range(xs[0], xs[0] + len(xs)))  # every stored step: full resolution
    assert page.evaluate(f"{chart}.bandMax()") == SPIKE_VALUE
    screenshot(page, "run-zoomed")
    page.dblclick("#charts .chart[data-metric='loss'] .u-over")
    page.wait_for_function(f"!{chart}.zoomed && {chart}.xs().length === {before}")


def test_a_live_point_appears_within_3_seconds(page, stack_data):
    from runwire.run import Run

    run_id = f"br-live-{uuid.uuid4().hex[:6]}"
    run = Run(project="demo", name="live", run_id=run_id, gateway=stack_data[1].gateway.address, gpu=False)
    try:
        for step in range(20):
            run.log({"loss": 2.0 - step * 0.01}, step=step)
        run.flush()
        deadline = time.monotonic() + 20
        while stack_data[0].query("SELECT count() FROM metrics WHERE run_id = {r:String}",
                                  parameters={"r": run_id}).result_rows[0][0] < 20:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        page.goto(f"/#/run/{run_id}")
        wait_drawn(page)
        assert page.locator("#run-status").inner_text() == "RUNNING"
        assert page.evaluate("window.runwire.charts.loss.xs().includes(500)") is False
        logged = time.monotonic()
        run.log({"loss": 1.5}, step=500)
        page.wait_for_function("window.runwire.charts.loss.xs().includes(500)", timeout=3000)
        assert time.monotonic() - logged < 3.0
    finally:
        run.finish()
    page.wait_for_function("document.querySelector('#run-status').textContent === 'FINISHED'", timeout=10_000)


def test_compare_overlays_two_runs(page):
    page.goto(f"/#/compare?run={RUN_A}&run={RUN_B}")
    wait_drawn(page)
    assert page.evaluate("window.runwire.charts.loss.lineCount()") == 2
    lengths = page.evaluate("window.runwire.charts.loss.series.lines.map(l => l.y.filter(v => v !== null).length)")
    assert all(n > 5 for n in lengths)
    assert all(n > 100 for n in series_pixels(page, "#charts .chart"))
    assert page.locator("#final-best th").count() == 3  # the label column and two runs
    assert "loss (min)" in page.inner_text("#final-best")
    screenshot(page, "compare")


def test_fleet_and_alerts_pages(page):
    page.goto("/#/fleet")
    page.select_option("#window", "86400")
    page.wait_for_function("document.querySelectorAll('#fleet-tiles .tile').length === 4")
    assert page.locator("#hottest tr").count() == 5
    screenshot(page, "fleet")

    page.goto("/#/alerts")
    page.wait_for_selector("#alerts")
    row = page.locator("#alerts tr").nth(1)
    assert "gpu_overheat" in row.inner_text() and "firing" in row.inner_text()
    row.locator(f"a[href='#/run/{RUN_A}']").click()
    page.wait_for_url(f"**/#/run/{RUN_A}")
    wait_drawn(page)
    screenshot(page, "alerts-run")
    page.goto("/#/alerts")
    page.wait_for_selector("#alerts")
    screenshot(page, "alerts")


def test_login_page_when_tokens_are_configured(browser, stack_data):
    from runwire.storage.client import connect
    from runwire.storage.ui.app import create_app
    from runwire.storage.ui.server import UIServer

    url, database = stack_data[1].clickhouse_url, stack_data[0].database
    app = create_app(lambda: connect(url, database, create=False, autogenerate_session_id=False),
                     tokens={"demo": "demo-secret"})
    with UIServer(app, "127.0.0.1:0") as server:
        context = browser.new_context(base_url=server.url)
        page = context.new_page()
        page.goto("/#/runs")
        page.wait_for_selector("form.login")
        page.fill("form.login input", "wrong")
        page.click("form.login button")
        page.wait_for_selector("form.login")  # still asking
        page.fill("form.login input", "demo-secret")
        page.click("form.login button")
        page.wait_for_selector(f"#runs tr[data-run='{RUN_A}']")
        screenshot(page, "runs-after-login")
        context.close()
