"""MNIST's own normalisation for a person's digit: what the model saw in training, made from
whatever image they bring (a drawing pad's canvas, a photo of paper, a scan, a digit cut out of a
form with no margin at all).

LeCun et al. size-normalised every digit to fit a 20x20 box keeping its aspect ratio (antialiased,
so grey levels appear) and placed it in 28x28 with its centre of mass at the centre. A model
trained on MNIST has seen only that framing, so resizing a whole photo to 28x28 (a digit that fills
a fifth of it becomes a few pixels in a corner) is what makes it fail. The steps here:

1. a small scan (under `SMALL` px) is upsampled smoothly first, so that every later step works on
   a picture of strokes rather than on a handful of pixels; a photo over `LARGE` px is averaged
   down by a whole factor, so that a phone's 12 megapixels cost what a megapixel does;
2. ink and paper are told apart by the histogram's two modes (Otsu's threshold on a lightly
   smoothed copy, so that noise and JPEG blocks do not split the paper in two). Which mode is the
   ink is read from the frame's border: the paper owns most of it, with a margin and also in a
   digit cut out to its ink (the ink touches every edge, but in a few places), except for a stroke
   that fills its narrow frame (a 1 cut out tight): there the mode that covers most of the frame
   and runs through it from top to bottom, the other left in the corners, is the ink. When the
   border is split evenly, the darker mode is the ink (pen on paper, the common case), and a small
   scan's is taken to be dark unless its border is clearly dark. Where the histogram has no two
   clean modes (a faint digit, a sliver of a noisy frame), the paper is its median and the ink is
   what lies far out on one side;
3. the paper as a smooth surface fitted to the paper's pixels (uneven light; a constant when
   there are too few of them, as beside a tight-cropped stroke), and the paper's texture and JPEG
   noise as the robust spread of what is left: on a noisy paper only what stands clearly above it
   is ink, and specks far smaller than the digit are dropped;
4. the ink's bounding box; a pen too thin to survive the shrink to 20 px is thickened first;
5. the longest side to 20 px (antialiased), the ink's peak to full white;
6. placed in 28x28 by its centre of mass.

An image with nothing on it is refused, saying which: one flat colour, or noise alone (the two
modes lie closer together than the noise is wide). A digit already in MNIST's format (clean black
background, a 20 px box, centred) passes through unchanged: every step above is then the identity.
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
VISIBLE = 0.5 / 255  #: ink fainter than this rounds to nothing in 8 bits: not part of the box
FLAT = 2.0 / 255  #: an image whose values span less than this is one flat colour
SPECK = 0.05  #: ink components lighter than this share of the heaviest one are noise
BIMODAL = 0.75  #: Otsu's effectiveness below this: no two clean modes (a flat histogram is 0.75)
DETECT = 5.0  #: then the ink lies this many of the paper's widths out
FAINT = 0.05  #: on a clean canvas, specks no stronger than this share of the ink's peak are dropped
UNDERSHOOT = 0.002  #: paper below its own level on more than this share: noise or JPEG, not clean
SMALL = FRAME  #: images whose longest side is shorter are upsampled (smoothly) to at least this
SEPARATION = 4.0  #: the two modes must lie this many noise widths apart to be ink and paper
BORDER_SURE = 0.05  #: the border decides when one mode owns this much more than half of it
SMALL_SURE = 0.3  #: the same for a small scan, whose border is most of its pixels
NARROW = 0.45  #: a frame narrower than this share of its height may be a 1 cut out to its ink
MARGIN_SURE = 0.4  #: a border 90 % one mode is a margin: its mode is the paper, whatever the frame
LARGE = 1024  #: images whose longest side exceeds this are averaged down by a whole factor first


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
    """Where the ink is and how strong, whatever the polarity, light, paper and framing."""
    g = np.asarray(grey, dtype=np.float64)
    if g.ndim != 2 or min(g.shape) < 1:
        raise NoInk(f"expected a 2-D greyscale image, got shape {g.shape}")
    if np.asarray(grey).dtype == np.uint8 or g.max() > 1.0:
        g = g / 255.0
    g = _reduced(g)
    if float(np.ptp(g)) < FLAT:
        raise NoInk("no ink found: the image is one flat colour")
    noise = _noise_width(g)
    g, k = _upsampled(g)
    sigma = max(0.7, min(g.shape) / 300)
    smooth = ndimage.gaussian_filter(g, sigma)
    high = _modes(smooth)
    if not _ink_is_bright(high, small=k > 1):
        g, smooth, high = 1.0 - g, 1.0 - smooth, ~high
    background, high, away = _paper(g, smooth, high)
    if k > 1:  # a small scan: no light to follow, and its paper is its darkest pixels
        background = np.full(g.shape, float(np.percentile(g, 5)))
    # The noise is what the finest detail shows; but a small scan's finest detail is its strokes'
    # edges, so there the paper's own spread counts if it is quieter (which also means that an
    # image smaller than MNIST's frame is too few pixels to tell noise from strokes: it is read,
    # and the answer's confidence says how sure). Of the noise, the smoothing (and a small
    # scan's upsampling) leaves this much:
    if k > 1:
        paper = (g - background)[away]
        noise = min(noise, 1.4826 * float(np.median(np.abs(paper - np.median(paper)))))
    smoothing = np.hypot(sigma / k, 0.5 if k > 1 else 0.0)
    _refuse_noise(noise / (2.0 * np.sqrt(np.pi) * max(smoothing, 0.5)), smooth - background, high)
    return _strength(g - background, high, away, background)


def _modes(smooth: np.ndarray) -> np.ndarray:
    """Which pixels belong to the brighter of the histogram's two modes (ink and paper).

    Split either as the image is, or, where the light is uneven, once a surface that follows the
    light is taken away (fitted to every pixel, outliers on either side refitted away).
    Whichever split separates more cleanly (Otsu's effectiveness) is the one between ink and
    paper, not one across the light. Where neither separates (a faint digit, a sliver of a noisy
    frame: the histogram is the paper's), the ink is what lies far out on one side of it."""
    flat = smooth - _background(smooth, np.ones(smooth.shape, dtype=bool), trim="both")
    (cut, effect), (flat_cut, flat_effect) = _otsu(smooth), _otsu(flat)
    if max(effect, flat_effect) < BIMODAL:
        # No two clean modes: a faint digit that is a sliver of a noisy frame. The paper is then
        # the median and its spread; the ink is what lies far out on one side of it.
        centre = float(np.median(flat))
        width = 1.4826 * float(np.median(np.abs(flat - centre)))
        bright, dark = flat > centre + DETECT * width, flat < centre - DETECT * width
        if width > 0 and (bright.any() or dark.any()):
            return bright if bright.sum() >= dark.sum() else ~dark
    return smooth > cut if effect >= flat_effect else flat > flat_cut


def _paper(g: np.ndarray, smooth: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, ...]:
    """The paper's surface fitted away from the ink, then the ink split again from what is left
    of the light and the surface refitted: (surface, ink, paper's pixels)."""
    away = _away_from(ink)
    background = _background(g, away)
    lifted = smooth - background
    cut, effect = _otsu(lifted)
    again = lifted > cut
    if effect >= BIMODAL and again.any() and not again.all():  # (else: no cleaner split)
        ink, away = again, _away_from(again)
        background = _background(g, away)
    return background, ink, away


def _strength(residual: np.ndarray, ink: np.ndarray, away: np.ndarray, background: np.ndarray) -> Ink:
    """Ink strength in [0, 1] from what stands above the paper (`residual`)."""
    paper = residual[away]
    spread = 1.4826 * float(np.median(np.abs(paper - np.median(paper))))
    peak = float(np.percentile(residual[ink], 95)) if ink.any() else float(residual.max())
    # A clean canvas never goes below its own paper; noise and a JPEG's ringing go both ways.
    undershoot = float((paper < -1.5 / 255).mean()) if paper.size else 0.0
    if spread > NOISE_FREE or undershoot > UNDERSHOOT:
        # Paper, texture, JPEG noise: only what stands clearly above them is ink.
        floor = min(max(5.0 * spread, 0.2 * peak), 0.6 * peak)
        strength = np.clip((residual - floor) / max(peak - floor, 1e-6), 0.0, 1.0)
        strength = _drop_specks(strength)
        noisy = True
    else:
        # A clean canvas: every grey is the pen's antialiasing, kept, down to what the paper
        # itself reaches (nothing on an exactly uniform one; on an unevenly lit one the rounding
        # of the gradient, on a JPEG its faint artefacts), and specks of those are dropped.
        far = away & ~ndimage.binary_dilation(ink, iterations=max(2, round(0.05 * min(ink.shape))))
        # (with no paper far from the ink, as round a digit cut out small, nothing to measure)
        floor = max(float(np.percentile(residual[far], 99)), 0.0) if far.sum() >= 20 else 0.0
        if np.ptp(background) >= 1 / 255:
            floor = max(floor, 1.5 / 255)
        strength = np.where(residual > floor, residual, 0.0)
        strength = _drop_specks(strength, faint=0.0 if floor > 0 else FAINT * max(peak, 1e-6))
        strength = _near_the_strokes(strength, FAINT * max(peak, 1e-6))
        top = float(strength.max())
        if top < 0.98:
            strength = strength / max(top, 1e-6)
        strength = np.clip(strength, 0.0, 1.0)
        noisy = False
    if not (strength > 0).any():
        raise NoInk("no ink found: nothing stands out from the background")
    return Ink(strength, noisy)


def frame(strength: np.ndarray) -> np.ndarray:
    """Ink strength (H, W) -> 28x28 uint8: box to 20 px, centred by mass (steps 3-5 above)."""
    rows, cols = np.nonzero(strength >= VISIBLE)
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


def _upsampled(g: np.ndarray) -> tuple[np.ndarray, int]:
    """A small scan (8x8, 16x16) upsampled smoothly (bicubic) so that its longest side is at
    least `SMALL` px: thresholds and the pen's width are then measured on strokes, not pixels.
    Returns the image and the factor."""
    if max(g.shape) >= SMALL:
        return g, 1
    from PIL import Image

    k = int(np.ceil(SMALL / max(g.shape)))
    size = (g.shape[1] * k, g.shape[0] * k)
    big = Image.fromarray(g.astype(np.float32), mode="F").resize(size, Image.Resampling.BICUBIC)
    return np.clip(np.asarray(big, dtype=np.float64), 0.0, 1.0), k


def _reduced(g: np.ndarray) -> np.ndarray:
    """A photo larger than `LARGE` px averaged down by a whole factor k (each k x k block's mean;
    a block cut by the edge, the mean of what it holds). The digit ends as 20 px, and every step
    after this costs the pixel count: a 4000 x 3000 phone photo took 4.1 s here, 0.3 s averaged
    down. Averaging keeps a stroke at least a block wide as strong against the paper's noise as
    it was, since the noise averages down with it."""
    k = -(-max(g.shape) // LARGE)
    if k <= 1:
        return g
    h, w = g.shape
    rows, cols = -(-h // k), -(-w // k)
    sums, counts = np.zeros((rows * k, cols * k)), np.zeros((rows * k, cols * k))
    sums[:h, :w], counts[:h, :w] = g, 1.0
    blocks = (rows, k, cols, k)
    return sums.reshape(blocks).sum(axis=(1, 3)) / counts.reshape(blocks).sum(axis=(1, 3))


def _otsu(values: np.ndarray) -> tuple[float, float]:
    """Otsu's threshold, the value that splits the histogram into its two most distinct modes,
    and its effectiveness (the share of the variance between the two: near 1 for two clean
    modes, 0.75 for a flat histogram such as a gradient's, 0.64 for noise)."""
    lo, hi = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=256, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    below, above = weight, total - weight
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * below - total * mass) ** 2 / (below * above)
    between[~np.isfinite(between)] = -1.0
    best = int(np.argmax(between))
    variance = float(np.var(values)) * total * total  # (between is n0 n1 (m0 - m1)^2, counts)
    return float(centres[best]), float(between[best] / variance) if variance > 0 else 0.0


def _band(shape: tuple[int, ...]) -> np.ndarray:
    """A mask of the frame's border band (2 % of the short side, at least one pixel)."""
    w = max(1, round(0.02 * min(shape)))
    band = np.zeros(shape, dtype=bool)
    band[:w], band[-w:], band[:, :w], band[:, -w:] = True, True, True, True
    return band


def _ink_is_bright(high: np.ndarray, small: bool = False) -> bool:
    """Whether the bright mode is the ink: the mode that owns less of the frame's border, or, if
    they share it evenly, the darker one (see step 2 of the module's docstring). A `small` scan's
    border is most of its pixels, its strokes a pixel or two wide: its ink is taken to be dark
    unless the border is clearly dark."""
    share = float(high[_band(high.shape)].mean())
    h, w = high.shape
    if abs(share - 0.5) < MARGIN_SURE and w <= NARROW * h:
        # no margin around a narrow frame: a 1 cut out to its ink. Upright, it runs down the
        # middle; slanted, it runs corner to corner through the mode the border favours.
        middle = float(high[:, w // 3 : max(w - w // 3, w // 3 + 1)].mean())
        if abs(middle - 0.5) >= 0.2:
            return middle > 0.5
        if _a_stroke_cut_out(high if share >= 0.5 else ~high):
            return share >= 0.5
    return share < 0.5 if abs(share - 0.5) >= (SMALL_SURE if small else BORDER_SURE) else False


def _a_stroke_cut_out(mode: np.ndarray) -> bool:
    """A slanted 1 cut out to its ink: the border's majority mode covers most of the frame and
    runs through it from top to bottom in one piece, the other mode left in pieces that do not
    (the paper in the corners beside the stroke). Then the majority is the ink."""
    return mode.mean() >= 0.5 and _spans(mode) and not _spans(~mode)


def _spans(mask: np.ndarray) -> bool:
    """Whether one connected piece of `mask` touches both the top and the bottom row."""
    labels, _ = ndimage.label(mask)
    top, bottom = set(labels[0][labels[0] > 0].tolist()), set(labels[-1][labels[-1] > 0].tolist())
    return bool(top & bottom)


def _noise_width(g: np.ndarray) -> float:
    """The standard deviation of the image's pixel noise, from its finest detail (Immerkaer's
    mask, with a median so that the strokes' edges do not count)."""
    if min(g.shape) < 3:
        return 0.0
    detail = ndimage.convolve(g, np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64))
    return 1.4826 * float(np.median(np.abs(detail[1:-1, 1:-1]))) / 6.0


def _refuse_noise(left: float, lit: np.ndarray, ink: np.ndarray) -> None:
    """Noise alone is refused: the two modes of `lit` (the image smoothed, less the paper's
    surface) lie no further apart than smoothed noise (of width `left`) splits itself (about 1.6
    of its widths)."""
    if ink.all() or not ink.any():
        raise NoInk("no ink found: the image is one flat colour")
    gap = float(np.median(lit[ink]) - np.median(lit[~ink]))
    if gap < max(SEPARATION * left, FLAT):
        raise NoInk("no ink found: the image is noise alone, nothing stands out from it")


def _away_from(ink: np.ndarray) -> np.ndarray:
    """The paper's pixels: the dark mode less a rim around the ink (its antialiased edge), unless
    that would leave too little paper (a stroke cut out to its ink)."""
    away = ~ndimage.binary_dilation(ink, iterations=max(1, round(min(ink.shape) / 100)))
    return away if away.sum() >= 0.05 * away.size else ~ink


def _background(g: np.ndarray, away: np.ndarray, trim: str = "bright") -> np.ndarray:
    """The paper: a quadratic surface fitted to the pixels `away` from the ink, refitted as
    outliers are found (`trim` "bright": uneven light is smooth, the ink is not, so the ink never
    pulls the surface up; "both": ink of either polarity); a constant where the paper is too
    little or too one-sided to fit a surface to."""
    h, w = g.shape
    step = max(1, int(np.ceil(max(h, w) / 64)))
    small, keep = g[::step, ::step], away[::step, ::step]
    ys, xs = np.mgrid[0 : small.shape[0], 0 : small.shape[1]]
    ys = ys * (step / max(h, 1)) - 0.5
    xs = xs * (step / max(w, 1)) - 0.5
    quadrants = {(bool(y), bool(x)) for y, x in zip(ys[keep] > 0, xs[keep] > 0, strict=True)}
    if keep.sum() < 24 or len(quadrants) < 4:
        return np.full(g.shape, float(np.median(g[away])) if away.any() else float(g.min()))
    # Where the paper is a minority of the frame (a digit cut out to its ink), a plane: a
    # quadratic fitted to its scattered corners would swing far from it in between.
    terms = 6 if away.mean() >= 0.5 else 3
    design = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], -1).reshape(-1, 6)
    design = design[:, :terms]
    values, keep = small.ravel(), keep.ravel()
    coef = np.zeros(terms)
    for _ in range(4):
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        residual = values - design @ coef
        spread = 1.4826 * float(np.median(np.abs(residual[keep] - np.median(residual[keep]))))
        outlier = residual if trim == "bright" else np.abs(residual)
        refit = keep & (outlier <= max(2.5 * spread, NOISE_FREE))
        if refit.sum() < 24 or np.array_equal(refit, keep):
            break
        keep = refit
    coef = np.concatenate([coef, np.zeros(6 - terms)])
    Y, X = np.mgrid[0:h, 0:w]
    Xn, Yn = X / max(w, 1) - 0.5, Y / max(h, 1) - 0.5
    surface = (
        coef[0] + coef[1] * Xn + coef[2] * Yn + coef[3] * Xn * Xn + coef[4] * Xn * Yn + coef[5] * Yn * Yn
    )
    if trim != "bright":
        return np.asarray(surface)
    paper = g[away]  # the light never makes the paper darker or brighter than it is seen
    return np.clip(surface, float(paper.min()), float(paper.max()))


def _drop_specks(strength: np.ndarray, faint: float = 0.0) -> np.ndarray:
    """Zero ink components much lighter than the heaviest one (texture and noise that passed);
    with `faint`, only those that are also no stronger than it anywhere (a JPEG's faint blocks
    on a clean canvas, where a real stroke's fragment is kept however small)."""
    labels, count = ndimage.label(strength > 0, structure=np.ones((3, 3)))
    if count <= 1:
        return strength
    index = np.arange(1, count + 1)
    mass = ndimage.sum(strength, labels, index=index)
    drop = mass < SPECK * mass.max()
    if faint > 0:
        drop &= ndimage.maximum(strength, labels, index=index) <= faint
    return np.where(np.concatenate([[False], ~drop])[labels], strength, 0.0)


def _near_the_strokes(strength: np.ndarray, faint: float) -> np.ndarray:
    """Keep faint ink only beside the strokes: a pen's antialiased edge is a pixel or two wide,
    a JPEG's faint blocks spread far from them (and would widen the digit's box)."""
    core = strength > faint
    if not core.any():
        return strength
    rows, cols = np.nonzero(core)
    reach = max(2, round(0.03 * max(np.ptp(rows), np.ptp(cols))))
    return np.where(ndimage.binary_dilation(core, iterations=reach), strength, 0.0)


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
