"""MNIST's own normalisation for a person's digit: what the model saw in training, made from
whatever image they bring (a drawing pad's canvas, a photo of paper, a scan).

LeCun et al. size-normalised every digit to fit a 20x20 box keeping its aspect ratio (antialiased,
so grey levels appear) and placed it in 28x28 with its centre of mass at the centre. A model
trained on MNIST has seen only that framing, so resizing a whole photo to 28x28 (a digit that fills
a fifth of it becomes a few pixels in a corner) is what makes it fail. The steps here:

1. polarity from the border (MNIST's ink is white on black);
2. the background as a smooth surface fitted to the pixels that are not ink (uneven light), and
   the paper's texture and JPEG noise as its robust spread: on a noisy background only what stands
   clearly above it is ink, and specks far smaller than the digit are dropped;
3. the ink's bounding box; a pen too thin to survive the shrink to 20 px is thickened first;
4. the longest side to 20 px (antialiased), the ink's peak to full white;
5. placed in 28x28 by its centre of mass.

A digit already in MNIST's format (clean black background, a 20 px box, centred) passes through
unchanged: every step above is then the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from resnet_mnist.runtime.errors import ProjectError

FRAME = 28  #: MNIST's image side
BOX = 20  #: the side of the box MNIST's digits were size-normalised into
CENTRE = 14.0  #: where MNIST puts a digit's centre of mass (pixel-index coordinates, measured)
STROKE = 1.6  #: thinnest pen, in pixels of the 20 px box, that keeps a digit readable
WORKING = 4 * BOX  #: ink boxes larger than this are reduced (by block maximum) before the rest
NOISE_FREE = 0.5 / 255  #: a background spread below this is an exactly uniform canvas
SPECK = 0.05  #: ink components lighter than this share of the heaviest one are noise


class NoInk(ProjectError, ValueError):
    """An image with nothing on it that stands out from its background."""


@dataclass(frozen=True)
class Ink:
    """Ink strength in [0, 1] (white ink on black, background removed), full resolution."""

    strength: np.ndarray
    noisy: bool  #: the background had texture or noise (so faint greys were dropped as paper)


def to_mnist(grey: np.ndarray) -> np.ndarray:
    """A greyscale image (H, W), uint8 or floats in [0, 1], of one digit -> 28x28 uint8 as MNIST."""
    return frame(ink_map(grey).strength)


def ink_map(grey: np.ndarray) -> Ink:
    """Where the ink is and how strong, whatever the polarity, light and paper."""
    g = np.asarray(grey, dtype=np.float64)
    if g.ndim != 2 or min(g.shape) < 1:
        raise NoInk(f"expected a 2-D greyscale image, got shape {g.shape}")
    if np.asarray(grey).dtype == np.uint8 or g.max() > 1.0:
        g = g / 255.0
    if np.median(_border(g)) > 0.5:
        g = 1.0 - g
    background = _background(g)
    residual = g - background
    spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    peak = float(np.percentile(residual, 99.9))
    noisy = spread > NOISE_FREE
    if noisy:
        # Paper, texture, JPEG noise: only what stands clearly above them is ink.
        floor = max(5.0 * spread, 0.2 * peak)
        strength = np.clip((residual - floor) / max(peak - floor, 1e-6), 0.0, 1.0)
        strength = _drop_specks(strength)
    else:
        # A clean canvas: every grey is the pen's antialiasing, kept; but on an unevenly lit
        # one, what is left of the gradient after the fit is rounding (under 1.5 levels), not ink.
        floor = 0.0 if np.ptp(background) < 1 / 255 else 1.5 / 255
        strength = np.where(residual > floor, residual, 0.0)
        top = float(strength.max())
        if top <= 0.0:
            raise NoInk("no ink found: the image is one flat colour")
        if top < 0.98:
            strength = strength / top
        strength = np.clip(strength, 0.0, 1.0)
    if not (strength > 0).any() or peak <= 3.0 * spread:
        raise NoInk("no ink found: nothing stands out from the background")
    return Ink(strength, noisy)


def frame(strength: np.ndarray) -> np.ndarray:
    """Ink strength (H, W) -> 28x28 uint8: box to 20 px, centred by mass (steps 3-5 above)."""
    rows, cols = np.nonzero(strength > 0)
    if rows.size == 0:
        raise NoInk("no ink found")
    ink = strength[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    if max(ink.shape) > WORKING:
        ink = _block_max(ink, int(np.ceil(max(ink.shape) / WORKING)))
    ink = _thicken(ink, BOX / max(ink.shape))
    scale = BOX / max(ink.shape)
    if abs(scale - 1.0) > 0.02:
        ink = _resize(ink, scale)
    top = float(ink.max())
    if top <= 0.0:
        raise NoInk("no ink found")
    if top < 0.98:
        ink = ink / top
    return _place(ink)


def _border(g: np.ndarray) -> np.ndarray:
    """The pixels of a band around the image (3 % of its short side, at least one pixel)."""
    w = max(1, round(0.03 * min(g.shape)))
    return np.concatenate([g[:w].ravel(), g[-w:].ravel(), g[:, :w].ravel(), g[:, -w:].ravel()])


def _background(g: np.ndarray) -> np.ndarray:
    """A quadratic surface fitted to the pixels that are not ink, refitted as the ink is found:
    uneven light is smooth, the ink is not, so the ink never pulls the surface up."""
    h, w = g.shape
    step = max(1, int(np.ceil(max(h, w) / 64)))
    small = g[::step, ::step]
    ys, xs = np.mgrid[0 : small.shape[0], 0 : small.shape[1]]
    ys = ys * (step / max(h, 1)) - 0.5
    xs = xs * (step / max(w, 1)) - 0.5
    design = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], -1).reshape(-1, 6)
    values = small.ravel()
    keep = values <= np.median(values)
    coef = np.zeros(6)
    for _ in range(5):
        if keep.sum() < 6:
            break
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        residual = values - design @ coef
        spread = 1.4826 * float(np.median(np.abs(residual[keep] - np.median(residual[keep]))))
        keep = residual <= max(2.5 * spread, NOISE_FREE)
    Y, X = np.mgrid[0:h, 0:w]
    Xn, Yn = X / max(w, 1) - 0.5, Y / max(h, 1) - 0.5
    surface = (
        coef[0] + coef[1] * Xn + coef[2] * Yn + coef[3] * Xn * Xn + coef[4] * Xn * Yn + coef[5] * Yn * Yn
    )
    return np.asarray(surface)


def _drop_specks(strength: np.ndarray) -> np.ndarray:
    """Zero ink components much lighter than the heaviest one (texture and noise that passed)."""
    labels, count = ndimage.label(strength > 0, structure=np.ones((3, 3)))
    if count <= 1:
        return strength
    mass = ndimage.sum(strength, labels, index=np.arange(1, count + 1))
    keep = np.concatenate([[False], mass >= SPECK * mass.max()])
    return np.where(keep[labels], strength, 0.0)


def _block_max(ink: np.ndarray, k: int) -> np.ndarray:
    """Reduce by `k` keeping each block's strongest ink, so a thin pen survives the reduction."""
    h, w = ink.shape
    padded = np.zeros((-(-h // k) * k, -(-w // k) * k))
    padded[:h, :w] = ink
    return padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).max(axis=(1, 3))


def _thicken(ink: np.ndarray, scale: float) -> np.ndarray:
    """Dilate a pen that would be thinner than `STROKE` px once scaled by `scale`.

    The stroke width is four times the mean distance of the ink to its edge (exact for a long
    band); MNIST's own pens are 2-4 px wide in the 20 px box.
    """
    core = ink > 0.5
    if not core.any():
        core = ink > 0
    width = 4.0 * float(ndimage.distance_transform_edt(np.pad(core, 1))[1:-1, 1:-1][core].mean())
    if width * scale >= STROKE:
        return ink
    radius = int(np.ceil((STROKE / scale - width) / 2))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = xx * xx + yy * yy <= radius * radius
    return ndimage.grey_dilation(np.pad(ink, radius), footprint=disk)


def _resize(ink: np.ndarray, scale: float) -> np.ndarray:
    """Antialiased resize to `scale` (the longest side then `BOX` px)."""
    from PIL import Image

    h, w = ink.shape
    size = (max(1, min(BOX, round(w * scale))), max(1, min(BOX, round(h * scale))))
    resized = Image.fromarray(ink.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)


def _place(ink: np.ndarray) -> np.ndarray:
    """Paste into 28x28 with the centre of mass at MNIST's centre, kept whole inside the frame."""
    cy, cx = ndimage.center_of_mass(ink)
    h, w = ink.shape
    top = int(np.clip(round(CENTRE - cy), 0, FRAME - h))
    left = int(np.clip(round(CENTRE - cx), 0, FRAME - w))
    out = np.zeros((FRAME, FRAME))
    out[top : top + h, left : left + w] = ink
    return np.ascontiguousarray(np.round(out * 255.0).astype(np.uint8))


def split_number(grey: np.ndarray) -> list[np.ndarray]:
    """A row of digits (a number on paper, a form field) -> each digit as 28x28, left to right.

    The digits are the ink's connected components; components that overlap horizontally by half
    the narrower one's width are one digit (a 5's detached bar, a 4 drawn in two strokes). Digits
    that touch are one component and so are read as one digit: that is where this fails.
    """
    ink = ink_map(grey).strength
    labels, count = ndimage.label(ink > 0, structure=np.ones((3, 3)))
    mass = ndimage.sum(ink, labels, index=np.arange(1, count + 1))
    spans = sorted(
        (found[1].start, found[1].stop, index + 1)
        for index, found in enumerate(ndimage.find_objects(labels))
        if found is not None and mass[index] >= SPECK * mass.max()
    )
    groups: list[tuple[int, int, list[int]]] = []
    for start, stop, label in spans:
        if groups:
            g_start, g_stop, members = groups[-1]
            if min(stop, g_stop) - max(start, g_start) >= 0.5 * min(stop - start, g_stop - g_start):
                groups[-1] = (min(start, g_start), max(stop, g_stop), [*members, label])
                continue
        groups.append((start, stop, [label]))
    return [frame(np.where(np.isin(labels, members), ink, 0.0)) for _, _, members in groups]


def resize_whole(grey: np.ndarray) -> np.ndarray:
    """The naive way, kept to measure what the normalisation buys: the whole image resized to
    28x28, inverted when its border is brighter than its centre."""
    from PIL import Image

    pixels = np.asarray(
        Image.fromarray(np.asarray(grey, dtype=np.uint8)).resize((FRAME, FRAME), Image.Resampling.BILINEAR),
        dtype=np.uint8,
    )
    if _border(pixels).mean() > 127:
        pixels = 255 - pixels
    return np.ascontiguousarray(pixels)
