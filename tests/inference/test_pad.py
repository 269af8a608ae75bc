"""The drawing pad in a real browser: `resnet-mnist pad` serving a trained model, Debian's Chromium
driven by Playwright drawing test digits with the mouse (each digit's skeleton replayed as strokes),
uploading a photo of one and a file that is no image. Screenshots land in reports/ui/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from resnet_mnist.core import data as D
from resnet_mnist.core.distributed import free_port
from resnet_mnist.core.presentations import by_name, rendered, skeleton
from tests.conftest import BIN, CHROMIUM, CHROMIUM_ARGS, REPO, child_env, cli, needs_data

SHOTS = REPO / "reports" / "ui"
WAIT_MS = 60_000  # the longest one answer may take on a slow machine
DRAWN = 4  # digits drawn with the mouse
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

pytestmark = [
    pytest.mark.slow,  # a training, a server and a browser
    needs_data,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: `make browser` installs it"),
]


def strokes(digit: np.ndarray, size: int = 200) -> list[list[tuple[int, int]]]:
    """The digit's skeleton at `size` px as pen strokes: each a walk along neighbouring pixels."""
    big = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR)) > 127
    left = {(int(r), int(c)) for r, c in zip(*np.nonzero(skeleton(big)), strict=True)}

    def neighbours(p: tuple[int, int]) -> list[tuple[int, int]]:
        return [(p[0] + dr, p[1] + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]

    paths = []
    while left:
        # start at an end of a line where there is one (fewest neighbours), then walk
        point = min(left, key=lambda p: (sum(q in left for q in neighbours(p)), p))
        path = [point]
        left.discard(point)
        while nxt := [q for q in neighbours(path[-1]) if q in left]:
            path.append(nxt[0])
            left.discard(nxt[0])
        if len(path) > 3:
            paths.append(path[::3] + [path[-1]])
    return paths


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A logged model that reads digits well, in a temp store: (home, store URI, model URI).

    Not the smoke preset's: its model is right on about 84 of the first 100 test digits and sure
    (> 0.9) of only a few of them, too weak a reader to tell the pad's faults from its own. Four
    times the images, two epochs and momentum: 96 of 100, 87 of them sure, in about a minute."""
    home = tmp_path_factory.mktemp("pad")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    out = cli(
        "train",
        "--preset",
        "smoke",
        *("--train-size", "2000", "--epochs", "2", "--momentum", "0.9"),
        cwd=home,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("resnet18-mnist").experiment_id])
    return home, uri, f"runs:/{run.info.run_id}/model"


@pytest.fixture(scope="module")
def pad(model: tuple[Path, str, str]) -> Iterator[str]:
    """`resnet-mnist pad` on a free loopback port; yields its URL once it serves the page."""
    home, uri, model_uri = model
    port = free_port()
    log = home / "pad.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "resnet-mnist"), "pad", "--model-uri", model_uri, "--port", str(port)],
            cwd=home,
            env=child_env({"MLFLOW_TRACKING_URI": uri}),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                with OPENER.open(url, timeout=5) as response:
                    if "resnet-mnist pad" in response.read().decode():
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the pad did not serve its page:\n" + log.read_text(errors="replace")[-3000:])
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(pad: str) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(pad)
            expect(page.locator("#model")).to_contain_text("runs:/", timeout=WAIT_MS)
            yield page
        finally:
            browser.close()


def answered(page: Page) -> str:
    """The digit shown once the page's last request has been answered."""
    expect(page.locator("body")).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
    return page.locator("#answer").inner_text().strip()


def test_digits_drawn_with_the_mouse_are_read(page: Page, model, mnist: D.Mnist) -> None:
    home, uri, model_uri = model
    # known digits: test digits the model reads right as MNIST stores them
    files = []
    for i in range(30):
        files.append(home / f"test{i}.png")
        Image.fromarray(mnist.test_images[i]).save(files[-1])
    out = cli(
        "predict",
        *map(str, files),
        "--model-uri",
        model_uri,
        "--format",
        "json",
        cwd=home,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    known = [
        i
        for i, r in enumerate(json.loads(out.stdout))
        if r["digit"] == mnist.test_labels[i] and r["probability"] > 0.9
    ][:DRAWN]
    assert len(known) == DRAWN
    box = page.locator("#pad").bounding_box()
    assert box is not None
    read = []
    SHOTS.mkdir(parents=True, exist_ok=True)
    for index in known:
        page.click("#clear")
        for path in strokes(mnist.test_images[index]):
            (r0, c0), rest = path[0], path[1:]
            page.mouse.move(box["x"] + 40 + c0, box["y"] + 40 + r0)
            page.mouse.down()
            for r, c in rest:
                page.mouse.move(box["x"] + 40 + c, box["y"] + 40 + r)
            page.mouse.up()
        read.append((answered(page), str(mnist.test_labels[index])))
        bars = page.locator("#bars .bar")
        expect(bars).to_have_count(10)
        page.screenshot(path=str(SHOTS / f"pad-drawn-{index}.png"))
    assert sum(a == b for a, b in read) >= DRAWN - 1, read


def test_a_photo_is_read_and_a_non_image_gets_the_message(
    page: Page, model, mnist: D.Mnist, tmp_path
) -> None:
    (photo,) = by_name(["photo-256"])
    images, labels = mnist.test_images[:10], mnist.test_labels[:10]
    answers = []
    for i, data in enumerate(rendered(photo, images)):
        path = tmp_path / f"photo{i}.jpg"
        path.write_bytes(data)
        page.set_input_files("#file", str(path))
        answers.append(answered(page) == str(labels[i]))
        assert page.locator("#message").inner_text() == ""
    page.screenshot(path=str(SHOTS / "pad-photo.png"))
    assert sum(answers) >= 7, answers
    (tmp_path / "notes.txt").write_text("this is not a digit")
    page.set_input_files("#file", str(tmp_path / "notes.txt"))
    expect(page.locator("#message")).to_contain_text("not an image PIL can read", timeout=WAIT_MS)
    assert page.locator("#answer").inner_text().strip() == ""
    page.screenshot(path=str(SHOTS / "pad-not-an-image.png"))
