"""Image files as a person has them, read as greyscale: files, folders and globs; PNG, JPEG and
whatever else PIL reads; EXIF orientation, transparency, 16-bit; decompression bombs refused."""

from __future__ import annotations

import glob
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from resnet_mnist.runtime.errors import ProjectError

SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
GLOB_CHARS = frozenset("*?[")


class PredictError(ProjectError, RuntimeError):
    """An image or model that cannot be used; the message names it."""


def expand(arguments: Iterable[str | Path]) -> Iterator[Path]:
    """Each argument as the files it names: a file itself (whatever its suffix, so a wrong file
    is reported, not skipped), a folder's images (recursively, sorted), or a glob's matches (for a
    pattern the shell did not expand). A name that matches nothing is yielded as it is, so that
    reading it reports it on its own line."""
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
        elif not path.exists() and GLOB_CHARS & set(str(argument)):
            matches = sorted(Path(m) for m in glob.glob(str(argument), recursive=True))
            yield from (m for m in matches if m.is_file()) if matches else [path]
        else:
            yield path


def read_grey(source: Path | bytes, name: str | None = None) -> np.ndarray:
    """A file (or its bytes, for an upload) -> (H, W) uint8 greyscale as a person sees it.

    The EXIF orientation is applied; transparency is flattened onto the background that keeps the
    ink visible; 16-bit greyscale is scaled (not clipped) to 0-255; colour is dropped. An image
    too large to be a digit (PIL's decompression-bomb guard) is refused.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = called(source, name)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            return np.ascontiguousarray(np.asarray(_grey(ImageOps.exif_transpose(img)), dtype=np.uint8))
    except FileNotFoundError:
        raise PredictError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise PredictError(f"{label}: a folder, not an image") from None
    except Image.DecompressionBombError as exc:
        raise PredictError(f"{label}: refused, too many pixels for a digit image ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        # PIL names a file by its path but bytes by their buffer object: say what it means.
        why = str(exc) if isinstance(source, Path) else "an unknown format or damaged data"
        raise PredictError(f"{label}: not an image PIL can read ({why})") from None


def called(source: Path | bytes, name: str | None = None) -> str:
    """How messages name an input: its given name, its path, or "upload" for bare bytes."""
    return name or (str(source) if isinstance(source, Path) else "upload")


def _grey(img):
    """The image as 8-bit greyscale ("L"), keeping what a person sees as the digit."""
    from PIL import Image

    if img.mode.startswith("I"):  # 16-bit (or 32-bit integer) greyscale: scale, do not clip
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:] / 255.0
        ink = rgba[..., :3].mean(-1, keepdims=True)
        # The ink is what is opaque: flatten onto the opposite background so that it stays visible.
        weight = max(float(alpha.sum()), 1e-9)
        background = 255.0 if float((ink * alpha).sum()) / weight < 128 else 0.0
        flat = ink * alpha + background * (1 - alpha)
        return Image.fromarray(np.clip(flat[..., 0] + 0.5, 0, 255).astype(np.uint8))
    return img.convert("L")
