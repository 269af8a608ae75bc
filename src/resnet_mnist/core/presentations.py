"""Official test digits presented as people bring them: drawn with a pen on a canvas (a drawing
pad), written in ink on paper and photographed (a JPEG), cut out to their ink, scanned small,
written with a thick marker or a grey pencil, and as MNIST stores them. `Look` spans the whole
space of such presentations (the property tests draw from it); `PRESENTATIONS` are fixed points
of it that the docs measure.

Each rendering is a pure function of the digit and a seed, so a set is the same on every machine.
A drawing follows the digit's skeleton with a pen of its own width, as a pad's strokes do; a photo
has paper of uneven light and texture, ink of varying darkness, a small rotation and JPEG
compression. Only the test split is used, so no set overlaps what a model was trained on.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

JPEG_MAGIC = b"\xff\xd8"
#: Zhang-Suen's neighbours P2..P9, clockwise from north, as (row, column) offsets.
_NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


@dataclass(frozen=True)
class Presentation:
    """One way of bringing a digit: a name for tables and how to render it (an encoded file)."""

    name: str
    description: str
    render: Callable[[np.ndarray, np.random.Generator], bytes]


def skeleton(shape: np.ndarray) -> np.ndarray:
    """The one-pixel centre lines of a binary shape (Zhang & Suen's thinning, vectorised)."""
    img = np.pad(shape.astype(bool), 1)
    while True:
        changed = False
        for first in (True, False):
            n = [np.roll(img, (-dr, -dc), axis=(0, 1)) for dr, dc in _NEIGHBOURS]
            count = sum(x.astype(int) for x in n)
            ring = n + n[:1]
            transitions = sum((~a & b).astype(int) for a, b in zip(ring[:-1], ring[1:], strict=True))
            p2, p4, p6, p8 = n[0], n[2], n[4], n[6]
            if first:
                clear = ~(p2 & p4 & p6) & ~(p4 & p6 & p8)
            else:
                clear = ~(p2 & p4 & p8) & ~(p2 & p6 & p8)
            remove = img & (count >= 2) & (count <= 6) & (transitions == 1) & clear
            if remove.any():
                img &= ~remove
                changed = True
        if not changed:
            return img[1:-1, 1:-1]


def pen_drawing(digit: np.ndarray, size: int, pen: float, angle: float) -> np.ndarray:
    """The digit traced by a round pen `pen` px wide, the digit `size` px tall, turned by `angle`
    degrees: float coverage in [0, 1] of shape (size, size), antialiased at the pen's edge."""
    from PIL import Image

    big = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)
    shape = ndimage.rotate(big, angle, reshape=False, order=1) > 127
    lines = skeleton(shape)
    if not lines.any():
        lines = shape
    distance = ndimage.distance_transform_edt(~lines)
    return np.clip(pen / 2 + 0.5 - distance, 0.0, 1.0)


def _encode(pixels: np.ndarray, kind: str, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if kind == "JPEG":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def as_stored(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """28x28, white on black, as MNIST stores it (a PNG)."""
    return _encode(digit, "PNG")


def canvas(side: int, pens: tuple[float, float], sizes: tuple[float, float], invert: bool = False):
    """A drawing pad `side` px square: a pen `pens` px wide, the digit `sizes` of the side tall,
    anywhere on it, turned up to 12 degrees; white on black (or black on white if `invert`)."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> bytes:
        size = int(side * rng.uniform(*sizes))
        stroke = pen_drawing(digit, size, rng.uniform(*pens), rng.uniform(-12, 12))
        board = np.zeros((side, side))
        top, left = rng.integers(0, side - size + 1, size=2)
        board[top : top + size, left : left + size] = stroke
        pixels = np.round(board * 255).astype(np.uint8)
        return _encode(255 - pixels if invert else pixels, "PNG")

    return render


def photo(side: int, sizes: tuple[float, float]):
    """Ink on paper, photographed: a `side` px RGB JPEG, light paper of uneven brightness and
    texture, dark ink of varying strength, the digit `sizes` of the side tall, turned up to 10
    degrees, anywhere in the frame."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> bytes:
        from PIL import Image

        size = int(side * rng.uniform(*sizes))
        big = np.asarray(
            Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64
        )
        ink = np.clip(ndimage.rotate(big, rng.uniform(-10, 10), reshape=False, order=1) / 255.0, 0.0, 1.0)
        sheet = np.zeros((side, side))
        top, left = rng.integers(0, side - size + 1, size=2)
        sheet[top : top + size, left : left + size] = ink
        yy, xx = np.mgrid[0:side, 0:side] / side - 0.5
        light = rng.uniform(170, 225) + rng.uniform(-30, 30) * xx + rng.uniform(-30, 30) * yy
        light -= rng.uniform(0, 40) * (xx * xx + yy * yy)  # vignetting
        texture = ndimage.gaussian_filter(rng.normal(0, rng.uniform(4, 9), (side, side)), 1.0)
        paper = light + texture
        darkness = rng.uniform(0.45, 0.8)  # ink takes this share of the paper's light
        grey = paper * (1.0 - darkness * sheet)
        tint = rng.uniform(0.92, 1.0, size=3)
        rgb = np.clip(grey[..., None] * tint + rng.normal(0, 2, (side, side, 3)), 0, 255).astype(np.uint8)
        return _encode(rgb, "JPEG", quality=int(rng.integers(60, 92)))

    return render


@dataclass(frozen=True)
class Look:
    """Every parameter of how one digit is brought: how tight it is framed, how large, which ink
    on which paper, and what the camera, the scanner and the light did to it. The default is the
    digit cropped to its ink, black on white, 120 px tall, with nothing done to it."""

    size: int = 120  #: the digit's longest side, px (a small scan: 8 or 16)
    margin: float = 0.0  #: paper on each side, in units of the digit's longest side
    dark_ink: bool = True  #: dark ink on light paper (else light ink on dark, as a screen)
    contrast: float = 0.85  #: how far the ink is from the paper, as a share of full range
    paper: float = 0.92  #: the paper's brightness (of a dark screen: 1 - this)
    pen: float = 0.0  #: the pen's width changed by this many MNIST pixels (thick marker > 0)
    angle: float = 0.0  #: degrees, turned counter-clockwise
    squeeze: float = 1.0  #: width scaled by this (the height kept)
    light: float = 0.0  #: uneven light: the paper darkens by up to this share towards a corner
    blur: float = 0.0  #: out of focus: Gaussian sigma in MNIST pixels
    noise: float = 0.0  #: paper grain and sensor noise: its standard deviation, share of range
    jpeg: int = 0  #: JPEG quality (0: a lossless PNG)


def transformed(digit: np.ndarray, look: Look) -> np.ndarray:
    """The digit's ink (floats in [0, 1], white on black) as `look` draws it, before any paper:
    the pen widened, squeezed, turned, scaled so its longest side is `look.size` px, cut to its
    ink. This is the digit a person meant; `present` puts it on paper."""
    from PIL import Image

    ink = digit.astype(np.float64) / 255.0
    up = 4  # work at 4x MNIST's pixels so that the pen and rotation change smoothly
    ink = np.asarray(
        Image.fromarray(ink.astype(np.float32), mode="F").resize((28 * up, 28 * up), Image.Resampling.BICUBIC)
    ).clip(0.0, 1.0)
    if look.pen > 0:
        ink = ndimage.grey_dilation(ink, footprint=_disk(look.pen * up / 2))
    elif look.pen < 0:
        ink = ndimage.grey_erosion(ink, footprint=_disk(-look.pen * up / 2))
    if look.angle:
        ink = ndimage.rotate(ink, look.angle, reshape=True, order=1).clip(0.0, 1.0)
    ink = _cut(ink)
    h, w = ink.shape
    w = w * look.squeeze
    scale = look.size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = Image.fromarray(ink.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    return _cut(np.asarray(resized, dtype=np.float64).clip(0.0, 1.0))


def seen(digit: np.ndarray, look: Look) -> np.ndarray:
    """The digit's ink as the camera sees it, before paper, light, noise or JPEG: `transformed`,
    on its margin, out of focus by `look.blur`."""
    ink = transformed(digit, look)
    pad = round(look.margin * max(ink.shape))
    side = max(ink.shape)
    ink = np.pad(ink, pad)
    return ndimage.gaussian_filter(ink, look.blur * side / 20) if look.blur else ink


def present(digit: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """The digit brought as `look` says: a greyscale uint8 image, as read from the file a person
    would save (a JPEG's losses included)."""
    ink = seen(digit, look)
    h, w = ink.shape
    yy, xx = np.mgrid[0:h, 0:w]
    corner = rng.integers(0, 4)
    ramp = ((yy / max(h - 1, 1)) if corner & 1 else 1 - yy / max(h - 1, 1)) + (
        (xx / max(w - 1, 1)) if corner & 2 else 1 - xx / max(w - 1, 1)
    )
    light = 1.0 - look.light * ramp / 2
    if look.dark_ink:
        grey = look.paper * light * (1.0 - look.contrast / look.paper * ink)
    else:
        grey = (1.0 - look.paper) * light + look.contrast * ink * light
    grey = grey + rng.normal(0.0, look.noise, grey.shape) if look.noise else grey
    pixels = np.round(np.clip(grey, 0.0, 1.0) * 255).astype(np.uint8)
    if look.jpeg:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=look.jpeg)
        pixels = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))
    return pixels


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(np.ceil(radius)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx * xx + yy * yy <= radius * radius + 0.25


def _cut(ink: np.ndarray) -> np.ndarray:
    """The ink's bounding box (anything above 1 % of full strength)."""
    rows, cols = np.nonzero(ink > 0.01)
    return ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def looked(look: Look) -> Callable[[np.ndarray, np.random.Generator], bytes]:
    """A presentation's renderer from one fixed look (a PNG, or a JPEG if `look.jpeg`)."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> bytes:
        pixels = present(digit, look, rng)
        return _encode(pixels, "JPEG" if look.jpeg else "PNG", quality=95)

    return render


def scan(side: int, shown: int):
    """A small scan: the digit framed tight in `side` x `side` px (black on white, greys as a
    scanner averages them), shown `shown` px large by nearest-neighbour enlargement (a screenshot
    of a zoomed scan)."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> bytes:
        from PIL import Image

        ink = transformed(digit, Look(size=side))
        square = np.zeros((side, side))
        top, left = (side - ink.shape[0]) // 2, (side - ink.shape[1]) // 2
        square[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
        pixels = np.round(255 * (1 - 0.9 * square)).astype(np.uint8)
        big = Image.fromarray(pixels).resize((shown, shown), Image.Resampling.NEAREST)
        return _encode(np.asarray(big), "PNG")

    return render


#: The sets the docs measure. Sizes are of the frame's side; pens in pixels.
PRESENTATIONS = (
    Presentation("mnist", "28x28 as MNIST stores them", as_stored),
    Presentation(
        "pad-280",
        "drawn on a 280 px pad, pen 14-22 px, digit 40-90 % of it",
        canvas(280, (14, 22), (0.4, 0.9)),
    ),
    Presentation(
        "pad-512-thin",
        "drawn on a 512 px pad, thin pen 3-6 px, digit 25-80 %",
        canvas(512, (3, 6), (0.25, 0.8)),
    ),
    Presentation(
        "paper-pen",
        "black pen on white, 400 px, pen 5-10 px, digit 30-70 %",
        canvas(400, (5, 10), (0.3, 0.7), invert=True),
    ),
    Presentation("photo-256", "ink on paper, 256 px RGB JPEG, digit 33-66 %", photo(256, (1 / 3, 2 / 3))),
    Presentation("photo-1024", "ink on paper, 1024 px RGB JPEG, digit 15-50 %", photo(1024, (0.15, 0.5))),
    Presentation("tight", "cropped to its ink (no margin), black on white, 168 px", looked(Look(size=168))),
    Presentation("scan-8", "a tight 8x8 scan, shown 224 px large", scan(8, 224)),
    Presentation("scan-16", "a tight 16x16 scan, shown 224 px large", scan(16, 224)),
    Presentation(
        "marker",
        "thick marker (pen 3 MNIST px wider), tight with a 10 % margin, 200 px",
        looked(Look(size=200, margin=0.1, pen=3.0)),
    ),
    Presentation(
        "pencil",
        "grey pencil on paper: 30 % contrast, grain, uneven light, 240 px JPEG",
        looked(Look(size=240, margin=0.3, contrast=0.3, pen=-0.5, noise=0.03, light=0.2, jpeg=85)),
    ),
)


def by_name(names: list[str] | None = None) -> list[Presentation]:
    """The presentations named (all when `names` is empty); an unknown name is a ValueError."""
    known = {p.name: p for p in PRESENTATIONS}
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise ValueError(f"unknown presentation(s) {unknown}; known: {', '.join(known)}")
    return [known[n] for n in names] if names else list(PRESENTATIONS)


def rendered(
    presentation: Presentation, images: np.ndarray, first: int = 0, seed: int = 0
) -> Iterator[bytes]:
    """The encoded files of `images` (official test digits from index `first`) in this
    presentation; digit i's rendering depends only on (seed, presentation, first + i)."""
    key = zlib.crc32(presentation.name.encode())
    for i, digit in enumerate(images):
        yield presentation.render(digit, np.random.default_rng([seed, key, first + i]))


def save(folder: Path, images: np.ndarray, labels: np.ndarray, names: list[str] | None = None) -> list[Path]:
    """Each presentation's files of `images` under `folder/NAME/INDEX-LABEL.png|jpg`, to look at
    or to give to `predict` and the pad; written whole or not at all (a temporary name first)."""
    paths = []
    for presentation in by_name(names):
        target = folder / presentation.name
        target.mkdir(parents=True, exist_ok=True)
        for index, (data, label) in enumerate(zip(rendered(presentation, images), labels, strict=True)):
            suffix = "jpg" if data[:2] == JPEG_MAGIC else "png"
            path = target / f"{index:05d}-{int(label)}.{suffix}"
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            partial.replace(path)
            paths.append(path)
    return paths
