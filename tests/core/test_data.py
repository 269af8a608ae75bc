"""Data: IDX parsing and verification on tiny files, fetch sources, the real split, preprocessing."""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_mnist.core import data as D
from tests.conftest import idx_bytes, needs_data


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)


def test_parse_good_files(tmp_path: Path, tiny_files: dict[str, bytes]) -> None:
    write_files(D.raw_dir(tmp_path), tiny_files)
    mnist = D.load(tmp_path)
    assert mnist.train_images.shape == (60, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_labels.tolist() == [i % 10 for i in range(12)]


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28)))[:-5])
    with pytest.raises(D.DataError, match=r"wrong size 2363 bytes \(expected 2368"):
        D.parse_idx(path, 3)
    path.write_bytes(b"\x00\x00\x08")
    with pytest.raises(D.DataError, match="truncated header"):
        D.parse_idx(path, 3)


def test_wrong_magic_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28))))
    with pytest.raises(D.DataError, match="wrong magic number 0x00000803"):
        D.parse_idx(path, 1)


def test_wrong_hash_names_file_expected_and_actual(tmp_path: Path, tiny_files: dict[str, bytes]) -> None:
    files = dict(tiny_files)
    files["t10k-labels-idx1-ubyte"] = idx_bytes(np.ones(12))
    write_files(D.raw_dir(tmp_path), files)
    with pytest.raises(D.DataError) as info:
        D.load(tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and "SHA-256 mismatch" in message
    assert D.SHA256["t10k-labels-idx1-ubyte"] in message


def test_missing_file_says_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(D.DataError, match="resnet-mnist data fetch"):
        D.load(tmp_path)


def test_fetch_tries_sources_in_order_and_is_idempotent(tmp_path: Path, tiny_files: dict[str, bytes]) -> None:
    calls: list[str] = []

    def unreachable(dest: Path, names: list[str]) -> None:
        calls.append("unreachable")
        raise urllib.error.URLError("no route")

    def good(dest: Path, names: list[str]) -> None:
        calls.append("good")
        for name in names:
            (dest / name).write_bytes(tiny_files[name])

    target = D.fetch(tmp_path, [unreachable, good])
    assert calls == ["unreachable", "good"]
    assert sorted(p.name for p in target.iterdir()) == sorted(tiny_files)
    D.fetch(tmp_path, [unreachable, good])
    assert calls == ["unreachable", "good"], "a second fetch must do no work"


def test_fetch_rejects_corrupt_download_and_reports_all_sources(
    tmp_path: Path, tiny_files: dict[str, bytes]
) -> None:
    def corrupt(dest: Path, names: list[str]) -> None:
        for name in names:
            (dest / name).write_bytes(tiny_files[name][:-1] + b"\x01")

    def unreachable(dest: Path, names: list[str]) -> None:
        raise urllib.error.URLError("no route")

    with pytest.raises(D.DataError) as info:
        D.fetch(tmp_path, [corrupt, unreachable])
    message = str(info.value)
    assert "SHA-256 mismatch" in message and "no route" in message and "by hand" in message
    assert list(D.raw_dir(tmp_path).iterdir()) == [], "nothing half-written may remain"


def test_fetch_replaces_a_corrupted_file(tmp_path: Path, tiny_files: dict[str, bytes]) -> None:
    files = dict(tiny_files)
    files["train-labels-idx1-ubyte"] = b"garbage"
    write_files(D.raw_dir(tmp_path), files)
    fetched: list[list[str]] = []

    def good(dest: Path, names: list[str]) -> None:
        fetched.append(names)
        for name in names:
            (dest / name).write_bytes(tiny_files[name])

    D.fetch(tmp_path, [good])
    assert fetched == [["train-labels-idx1-ubyte"]]
    D.load(tmp_path)


@pytest.mark.slow
def test_mirror_source_fails_fast_when_unreachable(tmp_path: Path) -> None:
    source = D.mirror_source("http://127.0.0.1:9/", timeout=2)
    start = time.perf_counter()
    with pytest.raises(OSError):
        source(tmp_path, ["t10k-labels-idx1-ubyte"])
    assert time.perf_counter() - start < 5


@needs_data
def test_real_split_and_label_counts(mnist: D.Mnist) -> None:
    assert np.bincount(mnist.train_labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert np.bincount(mnist.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    full = D.book_split(mnist)
    assert {k: len(v) for k, v in full.items()} == {"train": 50000, "dev": 10000, "test": 10000}
    assert np.array_equal(full["dev"].images[0], mnist.train_images[50000])
    quick = D.book_split(mnist, 2000, 200, 200)
    assert {k: len(v) for k, v in quick.items()} == {"train": 2000, "dev": 200, "test": 200}
    assert np.array_equal(quick["dev"].labels, mnist.train_labels[50000:50200])
    assert np.array_equal(quick["test"].labels, mnist.test_labels[:200])


@needs_data
def test_subset_larger_than_split_is_refused(mnist: D.Mnist) -> None:
    with pytest.raises(D.DataError, match="dev_size=10001 is out of range"):
        D.book_split(mnist, 2000, 10001, 200)


@pytest.mark.parametrize("normalize,mean,std", [("seed", 1.0, 1.0), ("mnist", 0.1307, 0.3081)])
def test_preprocess_matches_torchvision_transforms(normalize: str, mean: float, std: float) -> None:
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    reference = transforms.Compose(
        [transforms.Resize(32), transforms.ToTensor(), transforms.Normalize(mean=[mean], std=[std])]
    )
    expected = torch.stack([reference(Image.fromarray(img)) for img in images])
    actual = D.Preprocess(normalize)(torch.from_numpy(images))
    assert actual.shape == (5, 1, 32, 32)
    # PIL and torch round a few pixels differently: at most one 8-bit level.
    assert (actual - expected).abs().max().item() <= 1.01 / 255 / std


def test_batches_are_seeded_shuffled_and_complete() -> None:
    images = torch.arange(10).float().view(10, 1)
    labels = torch.arange(10)
    first = [y.tolist() for _, y in D.batches(images, labels, 4, torch.Generator().manual_seed(3))]
    again = [y.tolist() for _, y in D.batches(images, labels, 4, torch.Generator().manual_seed(3))]
    assert first == again and [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10)) and sum(first, []) != list(range(10))
    sequential = [y.tolist() for _, y in D.batches(images, labels, 4)]
    assert sum(sequential, []) == list(range(10))


@pytest.mark.slow
def test_npm_source_gives_the_official_files(tmp_path: Path) -> None:
    import shutil

    if shutil.which("npm") is None:
        pytest.skip("npm not installed")
    D.npm_source()(tmp_path, ["t10k-labels-idx1-ubyte"])
    D.verify_file(tmp_path / "t10k-labels-idx1-ubyte")
