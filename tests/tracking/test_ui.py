"""The MLflow UI in a real browser: the shared store's comparison (tests/conftest.py `champion`)
served by a real `mlflow server`, then the pages a person would open (runs, charts, compare,
registry) checked on their visible text with headless Chromium driven by Playwright.
Screenshots land in reports/ui/."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from resnet_mnist.core.distributed import free_port
from tests.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    Champion,
    needs_data,
    start_mlflow_server,
    stop_server,
)

SHOTS = REPO / "reports" / "ui"
WAIT_MS = 60_000  # the longest any one element may take to show up on this slow machine
EXPERIMENT = "resnet18-mnist"
MODEL = "resnet18-mnist"
RUN_NAMES = {"plain": "resnet18-plain-seed0", "residual": "resnet18-residual-seed0"}
# Keep the MLflow Assistant side panel (opened on first load since MLflow 3.x) closed, so the page
# gets the full width. Harmless if a later MLflow renames these keys: the panel just shows.
CLOSE_ASSISTANT = (
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
)
# True once the chart card titled `metric` draws a line with data for every one of the run names.
# (The legend names every run shown, data or not.) Looked up afresh on each poll: the cards re-render.
PLOTTED = """([metric, names]) => [...document.querySelectorAll(
        '[data-testid="experiment-view-compare-runs-card"]')]
    .filter(card => [...card.querySelectorAll('*')].some(
        e => e.childElementCount === 0 && e.textContent.trim() === metric))
    .some(card => [...card.querySelectorAll('.js-plotly-plot')].some(plot => names.every(
        name => (plot.data || []).some(trace => trace.name === name
            && (trace.y || []).some(v => v !== null && v !== undefined)))))"""

# The chart cards in reading order: [title, top, bottom] in viewport pixels (title = its first
# leaf with text), and the section headings the page shows, top to bottom.
CARDS = """() => [...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')]
    .map(card => { const r = card.getBoundingClientRect();
        const title = [...card.querySelectorAll('*')]
            .find(e => e.childElementCount === 0 && e.textContent.trim());
        return [title ? title.textContent.trim() : '', r.top, r.bottom, r.left]; })
    .sort((a, b) => a[1] - b[1] || a[3] - b[3]).map(([t, top, bottom]) => [t, top, bottom])"""
SECTIONS = """(names) => [...document.querySelectorAll('*')]
    .filter(e => e.childElementCount === 0 && names.includes(e.textContent.trim()))
    .sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top)
    .map(e => e.textContent.trim())"""

pytestmark = [
    pytest.mark.slow,  # a tracking server and a browser
    needs_data,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: `make browser` installs Debian's chromium"
    ),
]


@dataclass(frozen=True)
class Tracked:
    """What the smoke comparison left on the server, read back through MLflow's API."""

    url: str
    experiment_id: str
    run_ids: dict[str, str]  # variant -> run id
    params: dict[str, dict[str, str]]  # variant -> params
    champion_version: str
    curves_url: str  # the "their curves:" link `compare` prints


@pytest.fixture(scope="module")
def server(champion: Champion, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The MLflow UI over the shared store, as `make ui` serves a store: `mlflow server` on its
    sqlite database (the runs' artifacts are read where they lie)."""
    tmp = tmp_path_factory.mktemp("ui")
    port = free_port()
    proc = start_mlflow_server(tmp, port, backend=champion.uri)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def tracked(server: str, champion: Champion) -> Tracked:
    """What `resnet-mnist compare --train-missing` left in the store, read through the server."""
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    # Only the training runs: where the comparison run lives is not this test's business.
    train_runs = client.search_runs([experiment.experiment_id], "tags.run_type = 'train'")
    by_variant = {r.data.tags["variant"]: r for r in train_runs}
    assert {v: r.info.run_name for v, r in by_variant.items()} == RUN_NAMES
    champion_version = client.get_model_version_by_alias(MODEL, "champion")
    curves = re.search(r"^their curves: +(\S+)$", champion.compared, re.MULTILINE)
    assert curves, champion.compared
    # compare links to the UI where `make ui` serves it (port 5000); here it is on its own port
    return Tracked(
        url=server,
        experiment_id=experiment.experiment_id,
        run_ids={v: r.info.run_id for v, r in by_variant.items()},
        params={v: dict(r.data.params) for v, r in by_variant.items()},
        champion_version=str(champion_version.version),
        curves_url=curves.group(1).replace("http://127.0.0.1:5000", server),
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=120_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no stored UI state) per test."""
    context = browser.new_context(viewport={"width": 1600, "height": 1400})
    context.add_init_script(CLOSE_ASSISTANT)
    context.set_default_timeout(WAIT_MS)
    context.set_default_navigation_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    """A full-page screenshot in reports/ui/. MLflow's pages scroll inside their own panes, so
    'full page' is the viewport; the tall viewport above keeps most of each page in it."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def runs_url(tracked: Tracked, **query: str) -> str:
    return f"{tracked.url}/#/experiments/{tracked.experiment_id}/runs?" + urllib.parse.urlencode(
        {"workflowType": "machine_learning", **query}
    )


def test_runs_page_lists_both_trainings(tracked: Tracked, page: Page) -> None:
    # The experiment's own URL: MLflow 3.17 would open its GenAI overview without workflowType.
    page.goto(f"{tracked.url}/#/experiments/{tracked.experiment_id}?workflowType=machine_learning")
    try:
        expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible(timeout=WAIT_MS)
        for name in RUN_NAMES.values():
            expect(page.get_by_role("link", name=name, exact=True)).to_be_visible(timeout=WAIT_MS)
        # the comparison lives in its own experiment: here are the two trainings only
        expect(page.get_by_text("2 matching runs")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_role("link", name=re.compile("^compare-"))).to_have_count(0)
    finally:
        screenshot(page, "1-runs.png")


def first_screen(page: Page) -> list[str]:
    """The titles of the chart cards wholly inside the viewport, in reading order."""
    height = page.evaluate("() => window.innerHeight")
    return [title for title, top, bottom in page.evaluate(CARDS) if top >= 0 and bottom <= height]


def wait_plotted(page: Page, metric: str) -> None:
    try:
        page.wait_for_function(PLOTTED, arg=[metric, list(RUN_NAMES.values())], timeout=WAIT_MS)
    except PlaywrightTimeoutError:
        pytest.fail(f"the {metric} chart draws no line for one of {list(RUN_NAMES.values())}")


def test_the_curves_view_opens_on_train_loss_and_dev_accuracy(tracked: Tracked, page: Page) -> None:
    # The link `compare` prints: the experiment's saved "Training curves" view (tracking.views).
    page.goto(tracked.curves_url)
    try:
        expect(page.get_by_text("Training curves", exact=True).first).to_be_visible(timeout=WAIT_MS)
        for metric in ("train_loss", "dev_accuracy"):
            wait_plotted(page, metric)
        sections = page.evaluate(SECTIONS, ["Training curves", "Model metrics", "System metrics"])
        assert sections[:1] == ["Training curves"] and "Model metrics" in sections, sections
        assert first_screen(page)[:3] == ["train_loss", "dev_accuracy", "dev_loss"], page.evaluate(CARDS)
    finally:
        screenshot(page, "2-charts-curves.png")


def test_chart_view_plots_train_loss_and_dev_accuracy_for_both_runs(tracked: Tracked, page: Page) -> None:
    # The same page as the runs table with its "chart" toggle on (what the toggle puts in the URL).
    page.goto(runs_url(tracked, compareRunsMode="CHART"))
    search = page.get_by_placeholder("Search metric charts")
    try:
        expect(page.get_by_text("Model metrics")).to_be_visible(timeout=WAIT_MS)
        expect(search).to_be_visible(timeout=WAIT_MS)
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=WAIT_MS)
        wait_plotted(page, "dev_accuracy")
        # MLflow's own layout, in name order: the run's metrics open it (no per-digit section of
        # single dots above them: those scores are an evaluation table), dev accuracy on screen.
        sections = page.evaluate(SECTIONS, ["Model metrics", "System metrics"])
        assert sections[:1] == ["Model metrics"], sections
        assert not [title for title, _, _ in page.evaluate(CARDS) if "digit" in title]
        assert "dev_accuracy" in first_screen(page), page.evaluate(CARDS)
    finally:
        screenshot(page, "2-charts.png")
    # The section holds one chart per metric of every run shown, in name order, and draws only the
    # charts in view: search for each metric as a person would.
    for metric in ("train_loss", "dev_accuracy"):
        search.fill(metric)
        card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
            has=page.get_by_text(metric, exact=True)
        )
        try:
            expect(card).to_have_count(1, timeout=WAIT_MS)
            for name in RUN_NAMES.values():  # the legend: "<run name> (<metric>)"
                expect(card.get_by_text(f"{name} ({metric})", exact=True)).to_be_visible(timeout=WAIT_MS)
            wait_plotted(page, metric)
        finally:
            screenshot(page, f"2-chart-{metric}.png")


def test_compare_page_shows_both_runs_and_the_parameters_that_differ(tracked: Tracked, page: Page) -> None:
    variants = list(RUN_NAMES)  # plain, residual: the order of the compare page's columns
    query = urllib.parse.urlencode(
        {
            "runs": json.dumps([tracked.run_ids[v] for v in variants]),
            "experiments": json.dumps([tracked.experiment_id]),
        }
    )
    page.goto(f"{tracked.url}/#/compare-runs?{query}")
    differ = sorted(
        k for k in tracked.params["plain"] if tracked.params["plain"][k] != tracked.params["residual"].get(k)
    )
    assert "variant" in differ and "use_residual" in differ
    try:
        expect(page.get_by_text("Comparing 2 Runs from 1 Experiment")).to_be_visible(timeout=WAIT_MS)
        for name in RUN_NAMES.values():
            expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=WAIT_MS)
        diff_only = page.get_by_role("switch", name="Parameters - Show diff only")
        # The parameters table is the one in the section of its "Show diff only" switch.
        table = diff_only.locator("xpath=ancestor::div[.//table][1]//table")
        expect(table.get_by_role("rowheader", name="lr", exact=True)).to_be_visible(timeout=WAIT_MS)
        diff_only.click()
        expect(table.get_by_role("rowheader")).to_have_count(len(differ), timeout=WAIT_MS)
        for key in differ:
            row = table.get_by_role("row").filter(has=page.get_by_role("rowheader", name=key, exact=True))
            expect(row.get_by_role("cell")).to_have_text(
                [tracked.params[v][key] for v in variants], timeout=WAIT_MS
            )
        # The parallel coordinates plot above, which plots the differing parameters by default.
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=WAIT_MS)
    finally:
        screenshot(page, "3-compare.png")


def test_registry_page_shows_the_champion_alias(tracked: Tracked, page: Page) -> None:
    page.goto(f"{tracked.url}/#/models/{MODEL}")
    try:
        expect(page.get_by_role("heading", name=MODEL, exact=True)).to_be_visible(timeout=WAIT_MS)
        row = page.get_by_role("row").filter(
            has=page.get_by_role("link", name=f"Version {tracked.champion_version}", exact=True)
        )
        expect(row.get_by_text(re.compile(r"^@\s*champion$"))).to_be_visible(timeout=WAIT_MS)
    finally:
        screenshot(page, "4-registry.png")
