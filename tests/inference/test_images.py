"""Files, folders and globs as a person names them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_mnist.inference.images import PredictError, expand, read_grey


def test_folders_and_globs_expand_to_their_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/2.png", "a/1.JPG", "a/b/3.png", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = list(expand([tmp_path / "a"]))
    assert found == [tmp_path / "a" / "1.JPG", tmp_path / "a" / "2.png", tmp_path / "a" / "b" / "3.png"]
    assert list(expand([str(tmp_path / "a" / "**" / "*.png")])) == [
        tmp_path / "a" / "2.png",
        tmp_path / "a" / "b" / "3.png",
    ]
    # a named file is kept whatever its suffix (reading it says what is wrong), and so is a name
    # that matches nothing
    assert list(expand([tmp_path / "a" / "notes.txt", tmp_path / "gone*.png"])) == [
        tmp_path / "a" / "notes.txt",
        tmp_path / "gone*.png",
    ]


def test_bytes_and_files_read_alike(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    assert np.array_equal(read_grey(tmp_path / "x.png"), pixels)
    assert np.array_equal(read_grey((tmp_path / "x.png").read_bytes()), pixels)
    with pytest.raises(PredictError, match="upload: not an image"):
        read_grey(b"plain text")
    with pytest.raises(PredictError, match="no such file"):
        read_grey(tmp_path / "missing.png")
    with pytest.raises(PredictError, match="a folder, not an image"):
        read_grey(tmp_path)
