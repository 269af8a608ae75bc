"""MNIST's normalisation on real test digits presented as people bring them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from resnet_mnist.core import data as D
from resnet_mnist.core.presentations import by_name, pen_drawing, rendered
from resnet_mnist.inference.images import read_grey
from resnet_mnist.inference.normalise import NoInk, resize_whole, split_number, to_mnist


def framing(digit: np.ndarray) -> tuple[int, tuple[float, float]]:
    """The longest side of the ink's box and its centre of mass."""
    rows, cols = np.nonzero(digit)
    return max(np.ptp(rows), np.ptp(cols)) + 1, ndimage.center_of_mass(digit.astype(float))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of where each has ink above half."""
    a, b = a > 127, b > 127
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_a_digit_in_mnists_format_passes_through(mnist: D.Mnist) -> None:
    images = mnist.test_images[:1000]
    out = np.stack([to_mnist(x) for x in images])
    assert (out == images).all(axis=(1, 2)).mean() >= 0.995
    assert np.abs(out.astype(int) - images).mean() < 0.05


@pytest.mark.parametrize("name", ["pad-280", "pad-512-thin", "paper-pen", "photo-256", "photo-1024"])
def test_presented_digits_come_back_framed_as_mnist(mnist: D.Mnist, name: str) -> None:
    (presentation,) = by_name([name])
    images = mnist.test_images[:12]
    out = [to_mnist(read_grey(f)) for f in rendered(presentation, images)]
    for digit in out:
        side, (cy, cx) = framing(digit)
        assert 18 <= side <= 20 and abs(cy - 14) <= 1.5 and abs(cx - 14) <= 1.5
        assert digit.max() >= 250
    # the shape is the digit's own: it overlaps the original far more than other digits do
    own = np.mean([overlap(o, x) for o, x in zip(out, images, strict=True)])
    other = np.mean([overlap(o, x) for o, x in zip(out, np.roll(images, 1, 0), strict=True)])
    assert own > 0.35 and own > other + 0.15, (own, other)


def test_polarity_and_uneven_light_do_not_matter(mnist: D.Mnist) -> None:
    stroke = pen_drawing(mnist.test_images[0], 180, 12.0, 0.0)
    board = np.zeros((240, 300))
    board[30:210, 60:240] = stroke
    light = np.round(board * 255).astype(np.uint8)
    reference = to_mnist(light)
    assert np.array_equal(to_mnist(255 - light), reference)
    yy, xx = np.mgrid[0:240, 0:300]
    paper = 120 + 0.25 * xx + 0.2 * yy  # brighter to one corner (up to 243)
    lit = np.clip(paper * (1 - 0.7 * board), 0, 255).astype(np.uint8)
    assert overlap(to_mnist(lit), reference) > 0.85


def test_a_thin_pen_on_a_large_canvas_stays_visible(mnist: D.Mnist) -> None:
    board = np.zeros((1200, 1200))
    board[100:1100, 100:1100] = pen_drawing(mnist.test_images[0], 1000, 3.0, 0.0)
    digit = to_mnist(np.round(board * 255).astype(np.uint8))
    assert (digit > 127).sum() >= 40  # MNIST's own digits: about 100 such pixels
    assert overlap(digit, mnist.test_images[0]) > 0.3


def test_nothing_to_read_is_a_clear_error() -> None:
    with pytest.raises(NoInk, match="one flat colour"):
        to_mnist(np.full((50, 50), 200, np.uint8))
    noise = np.random.default_rng(0).normal(128, 10, (64, 64)).clip(0, 255).astype(np.uint8)
    with pytest.raises(NoInk):
        to_mnist(noise)


def test_a_number_is_read_left_to_right(mnist: D.Mnist) -> None:
    row = np.zeros((40, 100), np.uint8)
    order = [3, 0, 1]  # placed out of index order: left to right is what counts
    for k, index in enumerate(order):
        row[6:34, 4 + k * 32 : 32 + k * 32] = mnist.test_images[index]
    digits = split_number(255 - row)
    assert len(digits) == 3
    for digit, index in zip(digits, order, strict=True):
        assert overlap(digit, mnist.test_images[index]) > 0.9
    # a stroke detached above the body (a 5's bar) belongs to the digit below it
    five = np.zeros((40, 40), np.uint8)
    five[14:36, 10:30] = 255
    five[4:8, 12:32] = 255
    assert len(split_number(five)) == 1


def test_the_naive_resize_is_kept_for_comparison(mnist: D.Mnist) -> None:
    digit = mnist.test_images[0]
    assert np.array_equal(resize_whole(digit), digit)
    assert np.array_equal(resize_whole(255 - digit), digit)
