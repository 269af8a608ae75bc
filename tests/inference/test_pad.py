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
from resnet_mnist.tracking.names import CHAMPION_URI
from tests.conftest import BIN, CHROMIUM, CHROMIUM_ARGS, REPO, Champion, child_env, cli, needs_data

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
def model(champion: Champion, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The shared store's champion, a model that reads digits well (tests/presets/reader.yaml):
    (a folder of this module's own, store URI, model URI)."""
    return tmp_path_factory.mktemp("pad"), champion.uri, CHAMPION_URI


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
        # a person's terminal shows what they asked for: the pad's one line, no download bars
        assert "Downloading artifacts" not in log.read_text(errors="replace")
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
            expect(page.locator("#model")).to_contain_text(CHAMPION_URI, timeout=WAIT_MS)
            yield page
        finally:
            browser.close()


def answered(page: Page) -> str:
    """The answer shown (a digit, or "not sure: …") once the page's last request is answered."""
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
        expect(bars).to_have_count(10, timeout=WAIT_MS)
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


def test_a_tight_photo_is_shown_and_read_and_a_non_digit_is_not_sure(
    page: Page, model, mnist: D.Mnist, tmp_path: Path
) -> None:
    """A photo of a digit cropped to its ink (no margin) takes the pad's place and is read; an
    image that is not a digit gets "not sure" where predict, at the pad's 0.5, says so too."""
    from resnet_mnist.core import nondigits

    _, uri, model_uri = model
    (tight,) = by_name(["tight"])
    read = []
    for i, data in enumerate(rendered(tight, mnist.test_images[:6])):
        path = tmp_path / f"tight{i}.png"
        path.write_bytes(data)
        page.set_input_files("#file", str(path))
        read.append(answered(page) == str(mnist.test_labels[i]))
        assert page.locator("#message").inner_text() == ""
    assert sum(read) >= 5, read
    # the pad shows the photo (white paper), not the drawing before it (black)
    brightness = page.evaluate(
        "() => { const c = document.getElementById('pad'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let s = 0;"
        " for (let i = 0; i < d.length; i += 4) s += d[i]; return s / (d.length / 4); }"
    )
    assert brightness > 128, brightness
    page.screenshot(path=str(SHOTS / "pad-tight.png"))

    others = []
    for i, (kind, data) in enumerate(nondigits.images(8)):
        others.append(tmp_path / f"{kind}{i}.png")
        others[-1].write_bytes(data)
    out = cli(
        "predict",
        *map(str, others),
        "--model-uri",
        model_uri,
        "--min-confidence",
        "0.5",
        "--format",
        "json",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]  # 1: one was refused as blank
    unsure = [Path(r["path"]) for r in json.loads(out.stdout) if r.get("sure") is False]
    assert unsure, f"the champion was sure of a digit on all of {len(others)} non-digits: {out.stdout}"
    page.set_input_files("#file", str(unsure[0]))
    assert answered(page).startswith("not sure: perhaps ")
    assert page.locator("#answer").get_attribute("data-sure") == "false"
    # the guesses' probabilities are shown
    expect(page.locator("#bars .bar")).to_have_count(10, timeout=WAIT_MS)
    page.screenshot(path=str(SHOTS / "pad-not-sure.png"))
