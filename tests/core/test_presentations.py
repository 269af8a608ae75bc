"""Test digits as people bring them: deterministic renderings of the real test split."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from resnet_mnist.core import data as D
from resnet_mnist.core.presentations import PRESENTATIONS, by_name, rendered, skeleton


def test_renderings_are_the_same_every_time_and_differ_per_digit(mnist: D.Mnist) -> None:
    for presentation in PRESENTATIONS:
        first = list(rendered(presentation, mnist.test_images[:3]))
        assert first == list(rendered(presentation, mnist.test_images[:3]))
        assert len(set(first)) == 3
        # digit i depends on its own index, not on where a batch starts
        assert list(rendered(presentation, mnist.test_images[1:3], first=1)) == first[1:]


def test_photos_are_rgb_jpegs_and_pads_are_pngs(mnist: D.Mnist) -> None:
    kinds = {}
    for presentation in PRESENTATIONS:
        data = next(rendered(presentation, mnist.test_images[:1]))
        with Image.open(io.BytesIO(data)) as image:
            kinds[presentation.name] = (image.format, image.mode, image.size)
    assert kinds["mnist"] == ("PNG", "L", (28, 28))
    assert kinds["pad-280"] == ("PNG", "L", (280, 280))
    assert kinds["photo-256"] == ("JPEG", "RGB", (256, 256))


def test_the_skeleton_of_a_bar_is_a_line() -> None:
    bar = np.zeros((20, 40), bool)
    bar[5:14, 3:37] = True
    lines = skeleton(bar)
    assert lines.any() and (lines & ~bar).sum() == 0
    assert lines.sum(axis=0)[8:32].max() == 1  # one pixel thick along the bar


def test_unknown_names_are_refused() -> None:
    assert [p.name for p in by_name(["photo-256", "mnist"])] == ["photo-256", "mnist"]
    with pytest.raises(ValueError, match="unknown presentation"):
        by_name(["sketch"])


def test_saved_sets_are_named_by_index_and_label(tmp_path, mnist: D.Mnist) -> None:
    from resnet_mnist.core.presentations import save

    paths = save(tmp_path, mnist.test_images[:2], mnist.test_labels[:2], ["pad-280", "photo-256"])
    names = sorted(str(p.relative_to(tmp_path)) for p in paths)
    labels = [int(y) for y in mnist.test_labels[:2]]
    assert names == [
        f"pad-280/00000-{labels[0]}.png",
        f"pad-280/00001-{labels[1]}.png",
        f"photo-256/00000-{labels[0]}.jpg",
        f"photo-256/00001-{labels[1]}.jpg",
    ]
    assert not list(tmp_path.rglob("*.partial"))
