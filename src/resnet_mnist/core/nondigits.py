"""Images that are not digits, made here (never downloaded): letters, smudges, textures and
drawings of things, each a pure function of its kind and a seed. A model that reads digits
answers every image with a digit; on these, how often it is *sure* of one is how often its
confidence misleads (`predict --non-digits`).
"""

from __future__ import annotations

import io
import string
from collections.abc import Callable, Iterator

import numpy as np
from scipy import ndimage

SIDE = 128  #: px, square

LETTERS = "".join(c for c in string.ascii_letters if c not in "oOlIzZsSgqbB")  # not digit-like


def _letter(rng: np.random.Generator) -> np.ndarray:
    """A letter in the default font, dark on light, at some size and angle."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (SIDE, SIDE), int(rng.integers(200, 256)))
    font = ImageFont.load_default(size=int(rng.integers(50, 100)))
    draw = ImageDraw.Draw(image)
    draw.text(
        (SIDE / 2, SIDE / 2),
        str(rng.choice(list(LETTERS))),
        fill=int(rng.integers(0, 60)),
        font=font,
        anchor="mm",
    )
    return np.asarray(image.rotate(float(rng.uniform(-20, 20)), fillcolor=255), dtype=np.uint8)


def _smudge(rng: np.random.Generator) -> np.ndarray:
    """A few soft blobs of ink, as a thumb or a wet finger leaves them."""
    ink = np.zeros((SIDE, SIDE))
    for _ in range(int(rng.integers(1, 4))):
        y, x = rng.uniform(0.25, 0.75, 2) * SIDE
        sy, sx = rng.uniform(6, 25, 2)
        yy, xx = np.mgrid[0:SIDE, 0:SIDE]
        ink += rng.uniform(0.4, 1.0) * np.exp(-((yy - y) ** 2 / (2 * sy**2) + (xx - x) ** 2 / (2 * sx**2)))
    return np.round(255 * (1 - 0.8 * np.clip(ink, 0, 1))).astype(np.uint8)


def _texture(rng: np.random.Generator) -> np.ndarray:
    """Cloth, grain, stripes or a grid: structure everywhere, no figure."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        grain = ndimage.gaussian_filter(rng.normal(0, 1, (SIDE, SIDE)), rng.uniform(1, 4))
        pattern = grain / (np.abs(grain).max() + 1e-9)
    elif kind == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
        pattern = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    else:
        period = rng.uniform(8, 24)
        pattern = np.sign(np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period))
    return np.round(128 + 100 * pattern).clip(0, 255).astype(np.uint8)


def _thing(rng: np.random.Generator) -> np.ndarray:
    """A drawing of a thing: a filled disc, a box, a triangle or a star, lit unevenly."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (SIDE, SIDE), int(rng.integers(180, 256)))
    draw = ImageDraw.Draw(image)
    c, r = rng.uniform(0.4, 0.6, 2) * SIDE, rng.uniform(0.2, 0.4) * SIDE
    fill = int(rng.integers(0, 100))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        draw.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=fill)
    elif kind == 1:
        draw.rectangle((c[0] - r, c[1] - 0.7 * r, c[0] + r, c[1] + 0.7 * r), fill=fill)
    else:
        points = 3 if kind == 2 else 10
        turn = rng.uniform(0, 2 * np.pi)
        radii = [r if kind == 2 or k % 2 == 0 else 0.45 * r for k in range(points)]
        corners = [
            (
                c[0] + q * np.cos(turn + 2 * np.pi * k / points),
                c[1] + q * np.sin(turn + 2 * np.pi * k / points),
            )
            for k, q in enumerate(radii)
        ]
        draw.polygon(corners, fill=fill)
    light = np.linspace(1.0, rng.uniform(0.7, 1.0), SIDE)[None, :]
    return np.round(np.asarray(image, dtype=np.float64) * light).astype(np.uint8)


KINDS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "letter": _letter,
    "smudge": _smudge,
    "texture": _texture,
    "thing": _thing,
}


def images(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """`count` images that are not digits, the kinds in turn: (kind, PNG bytes)."""
    from PIL import Image

    names = list(KINDS)
    for i in range(count):
        kind = names[i % len(names)]
        buffer = io.BytesIO()
        Image.fromarray(KINDS[kind](np.random.default_rng([seed, i]))).save(buffer, format="PNG")
        yield kind, buffer.getvalue()
