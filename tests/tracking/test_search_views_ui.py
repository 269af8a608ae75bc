"""The study's saved views in a real browser: the tiny tuned study (tests/conftest.py
`tuned_study`) served by a real `mlflow server`, each view opened from the link `study` prints,
and what its charts draw read from the page (headless Chromium driven by Playwright).
Screenshots land in reports/ui/.

Marked `ray` although it starts no Ray itself: the store it reads is built with Ray, and only
the one xdist worker that runs Ray tests may build it (two Ray instances starting at once on one
machine failed CI).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from resnet_mnist.core.distributed import free_port
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, TunedStudy, start_mlflow_server, stop_server
from tests.tracking.test_ui import CLOSE_ASSISTANT, WAIT_MS, screenshot

pytestmark = [
    pytest.mark.slow,  # a study, a tracking server and a browser
    pytest.mark.ray,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: `make browser` installs Debian's chromium"
    ),
]

# The parallel-coordinates chart (MLflow draws it with d3's parcoords: axes in SVG, the runs'
# lines on a canvas): its axis names and how many pixels its lines paint; null until it paints.
PARALLEL = """(names) => { for (const chart of document.querySelectorAll('.parcoords')) {
        const texts = new Set([...chart.querySelectorAll('svg text')].map(t => t.textContent.trim()));
        const canvas = chart.querySelector('canvas.foreground');
        if (!canvas || !canvas.width) continue;
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let painted = 0;
        for (let i = 3; i < pixels.length; i += 4) painted += pixels[i] > 0;
        if (painted) return [names.filter(n => texts.has(n)), painted];
    } return null; }"""
AXES = ["lr", "momentum", "weight_decay", "warmup_steps", "best_dev_accuracy"]
# The chart card titled `title`: its text (title, axes, legend) and its traces as [type, fill,
# number of points].
CARD = """(title) => [...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')]
    .filter(card => [...card.querySelectorAll('*')].some(
        e => e.childElementCount === 0 && e.textContent.trim() === title))
    .map(card => [card.innerText, [...card.querySelectorAll('.js-plotly-plot')]
        .flatMap(p => (p.data || []).map(t => [t.type, t.fill || '', (t.y || t.x || []).length]))])"""


@pytest.fixture(scope="module")
def links(tuned_study: TunedStudy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The two view links the study printed, pointed at a real server over its store."""
    tmp = tmp_path_factory.mktemp("views-ui")
    port = free_port()
    proc = start_mlflow_server(tmp, port, backend=tuned_study.uri)
    printed = {
        name: re.search(rf"^{name}: +(\S+)$", tuned_study.printed, re.MULTILINE)
        for name in ("the searches", "the seeds by network")
    }
    assert all(printed.values()), tuned_study.printed
    try:
        yield {
            name: found.group(1).replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}")
            for name, found in printed.items()
            if found
        }
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=120_000
        )
        context = browser.new_context(viewport={"width": 1600, "height": 1400})
        context.add_init_script(CLOSE_ASSISTANT)
        context.set_default_timeout(WAIT_MS)
        try:
            yield context.new_page()
        finally:
            browser.close()


def test_the_search_view_draws_every_trial_and_cell_through_its_settings(
    links: dict[str, str], page: Page
) -> None:
    page.goto(links["the searches"])
    try:
        expect(page.get_by_text("Search: settings and dev accuracy").first).to_be_visible(timeout=WAIT_MS)
        # the 4 trials and 4 scored cells, listed by network (flat, not under their parents)
        for name in ("resnet8-plain-trial-0", "resnet8-residual-trial-1", "resnet8-plain-seed1"):
            expect(page.get_by_role("link", name=name, exact=True)).to_be_visible(timeout=WAIT_MS)
        try:
            axes, painted = page.wait_for_function(PARALLEL, arg=AXES, timeout=WAIT_MS).json_value()
        except PlaywrightTimeoutError:
            pytest.fail("no parallel-coordinates chart draws the runs' lines")
        # every searched setting and the dev accuracy is an axis, and the runs' lines are drawn
        assert axes == AXES and painted > 1000, (axes, painted)
    finally:
        screenshot(page, "4-search-view.png")


def test_the_seeds_view_groups_the_scored_runs_by_network(links: dict[str, str], page: Page) -> None:
    page.goto(links["the seeds by network"])
    try:
        expect(page.get_by_text("Group by: architecture")).to_be_visible(timeout=WAIT_MS)
        for network in ("resnet8-plain", "resnet8-residual"):
            expect(page.get_by_text(f"Group: {network}", exact=True)).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_role("link", name="resnet8-plain-trial-0", exact=True)).to_have_count(0)
        # one bar per network: the mean of its two seeds' final training loss
        page.wait_for_function(
            "(t) => ("
            + CARD
            + ")(t).some(([, traces]) => traces.some(([type, , n]) => type === 'bar' && n === 2))",
            arg="train_epoch_loss",
        )
        # the training loss: each network's mean line, with its min-max band filled in
        page.wait_for_function(
            "(t) => (" + CARD + ")(t).some(([, traces]) => traces.filter(([, fill]) => fill).length >= 2)",
            arg="train_loss",
        )
        ((text, _),) = page.evaluate(CARD, "train_loss")
        for network in ("resnet8-plain", "resnet8-residual"):
            assert f"{network} (train_loss)" in text, text
    finally:
        screenshot(page, "5-seeds-view.png")
