"""Procedural dermoscopy-like images with exact (or deliberately lazy) lesion masks.

This is the default data set for users without data: it lets the whole pipeline (segmentation network,
quality network, calibration, CLI demo) run anywhere, in seconds, with no download.

(Longer than the ~400 lines segqc aims for: it is one generator whose many small drawing steps, skin,
lesion shapes, hair, vignetting, lazy annotations, only make sense together and share its random
stream; split up, each part would be read only through the others.)

Each image shows skin (varied tone, low-frequency mottling and fine grain) with one pigmented lesion made
of 1-3 blobs. A blob's border is a polar curve ``r(theta) = r0 * (1 + low harmonics + fine jaggedness)``,
so borders are irregular like melanocytic lesions. Lesions vary in colour (light to dark brown, reddish,
bluish-grey), internal structure (colour blotches, dark dots, lighter or darker centre), contrast (down to
barely darker than the skin), edge sharpness, size (a few pixels to most of the image) and position
(mostly central, sometimes off-centre or cut by the image border). Hairs (thin dark curves) are drawn over
skin and lesion alike, and many images get the dark circular corners of a dermoscope's field of view.

The point of all this variety is not realism for its own sake: the quality network of DeVries & Taylor
(2018) learns to predict the Jaccard index of a segmentation, so the data must make a segmentation network
fail sometimes, and for visible reasons (low contrast, hair, several parts, tiny lesions), while it gets
most images right. A fraction of the masks are also "lazy": replaced by a coarse outline (few-vertex
inflated polygon, or an inflated convex hull) as a hurried human annotator would draw; a correct
segmentation then scores a low Jaccard against its reference, as happens with real annotations.

Image ``i`` depends only on ``(seed, i)``, so a shorter data set is a prefix of a longer one with the same
seed, and whether an image's mask is lazy never changes the image itself.
"""

from __future__ import annotations

import math
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
from PIL import Image, ImageDraw
from scipy.spatial import ConvexHull, QhullError

from segqc.errors import SettingsError

__all__ = ["SyntheticData", "SyntheticDataWithInfo", "make_synthetic", "synthetic_id", "write_synthetic"]

# ---------------------------------------------------------------------------------------------------------
# Difficulty knobs. They were tuned so that a small U-Net (width 16, ~320 training images, 8 epochs) gets
# most test images right (Jaccard > 0.8) and fails (< 0.7) on roughly a fifth to a third of them; see the
# calibration notes in the tests' module docstring. Probabilities are per image.
# ---------------------------------------------------------------------------------------------------------
P_LOW_CONTRAST = 0.10  # lesion only slightly darker than the skin
LOW_CONTRAST_RANGE = (0.12, 0.30)  # blend factor towards the lesion colour in that case
CONTRAST_RANGE = (0.65, 1.0)  # ... and otherwise
P_PARTS = (0.84, 0.11, 0.05)  # probability of 1, 2, 3 blobs
P_TINY = 0.06  # radius 4-8 % of the image side
P_LARGE = 0.12  # radius 33-55 % of the image side (fills most of the image)
P_OFF_CENTRE = 0.20  # centre anywhere in the middle half rather than near the middle
P_AT_BORDER = 0.08  # centre close to an image edge, so the lesion is cut by the border
P_HAIR_FEW, P_HAIR_MANY = 0.30, 0.10  # 1-6 hairs, 8-30 hairs; otherwise none
P_FUZZY_EDGE = 0.15  # a soft, gradual border (edge width 2-4 px at 64 px) instead of a crisp one
P_SCOPE_CORNERS = 0.30  # dark circular corners of the dermoscope field of view
MAX_LESION_LUMA = 0.75  # lesion colours are at most this bright relative to the skin (before contrast)
LAZY_INFLATION = (1.15, 1.40)  # lazy outlines are drawn this much outside the lesion (radius factor)

# Palettes (RGB). Skin from very light to dark; lesion colours as in dermoscopy: browns from light to
# almost black, reddish (vascular) and bluish-grey (deep pigment / regression).
_SKIN_TONES = np.array(
    [[242, 214, 198], [228, 188, 164], [206, 156, 124], [176, 126, 94], [138, 96, 70]], dtype=np.float64
)
_LESION_COLOURS = np.array(
    [
        [186, 136, 98],  # light brown
        [146, 94, 62],  # mid brown
        [100, 62, 42],  # dark brown
        [58, 40, 34],  # near black
        [176, 88, 82],  # reddish
        [118, 116, 136],  # bluish grey
    ],
    dtype=np.float64,
)
_MAIN_COLOUR_P = np.array([0.26, 0.30, 0.20, 0.06, 0.10, 0.08])
_N_ANGLES = 720  # resolution of the r(theta) lookup table

#: ``(images, masks, ids)`` as returned by :func:`make_synthetic`.
SyntheticData = tuple[np.ndarray, np.ndarray, list[str]]
#: ``(images, masks, ids, info)`` as returned by :func:`make_synthetic` with ``return_info=True``.
SyntheticDataWithInfo = tuple[np.ndarray, np.ndarray, list[str], dict[str, np.ndarray]]


def synthetic_id(i: int) -> str:
    """Returns the id of synthetic image ``i`` (``'synth_00000'`` style)."""
    return f"synth_{i:05d}"


@overload
def make_synthetic(
    n: int,
    size: int = ...,
    *,
    seed: int = ...,
    lazy_fraction: float = ...,
    return_info: Literal[False] = ...,
) -> SyntheticData: ...


@overload
def make_synthetic(
    n: int,
    size: int = ...,
    *,
    seed: int = ...,
    lazy_fraction: float = ...,
    return_info: Literal[True],
) -> SyntheticDataWithInfo: ...


def make_synthetic(
    n: int,
    size: int = 64,
    *,
    seed: int = 0,
    lazy_fraction: float = 0.15,
    return_info: bool = False,
) -> SyntheticData | SyntheticDataWithInfo:
    """Generates a synthetic dermoscopy data set.

    Args:
        n: Number of images, at least 1.
        size: Side of the square images in pixels, at least 16.
        seed: Non-negative seed; image ``i`` depends only on ``(seed, i)``.
        lazy_fraction: Expected fraction of images whose mask is a coarse outline instead of the exact
            lesion, in [0, 1].
        return_info: Also return a dict of per-image arrays describing how each image was drawn:
            ``lazy`` (bool, mask is a coarse outline), ``n_parts`` (int, 1-3 blobs), ``low_contrast``
            (bool), ``contrast`` (float, blend factor towards the lesion colour), ``n_hairs`` (int),
            ``radius`` (float, main blob radius / size) and ``lesion_fraction`` (float, share of the image
            covered by the returned mask).

    Returns:
        ``(images, masks, ids)``: images ``(n, size, size, 3)`` uint8 RGB, masks ``(n, size, size)`` uint8
        in {0, 1}, ids ``['synth_00000', ...]``; with ``return_info=True`` the info dict is appended.

    Raises:
        SettingsError: If an argument is out of range (a ValueError too).
    """
    _check_args(n, size, seed, lazy_fraction)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    infos = []
    for i in range(n):
        images[i], masks[i], info = _draw_one(seed, i, size, lazy_fraction)
        infos.append(info)
    ids = [synthetic_id(i) for i in range(n)]
    if not return_info:
        return images, masks, ids
    table = {key: np.array([info[key] for info in infos]) for key in infos[0]}
    return images, masks, ids, table


def write_synthetic(
    out_dir: str | Path, n: int, size: int = 64, *, seed: int = 0, lazy_fraction: float = 0.15
) -> list[str]:
    """Writes a synthetic data set in the generic folder layout.

    Files are ``out_dir/images/<id>.png`` (RGB) and ``out_dir/masks/<id>.png`` (greyscale, 0 or 255). Each
    file is written to a temporary name in its folder and then renamed, so an interrupted run never leaves
    a truncated PNG behind. Images are generated one at a time, so memory does not grow with ``n``.

    Args:
        out_dir: Output folder; created if missing. Existing files with the same names are replaced.
        n: Number of images, at least 1.
        size: Side of the square images in pixels, at least 16.
        seed: Non-negative seed (same images as ``make_synthetic`` with the same arguments).
        lazy_fraction: Expected fraction of coarse masks, in [0, 1].

    Returns:
        The ids written, in order.

    Raises:
        SettingsError: If an argument is out of range (a ValueError too).
    """
    _check_args(n, size, seed, lazy_fraction)
    out = Path(out_dir)
    img_dir, mask_dir = out / "images", out / "masks"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        image, mask, _ = _draw_one(seed, i, size, lazy_fraction)
        sid = synthetic_id(i)
        _save_png_atomic(Image.fromarray(image, mode="RGB"), img_dir / f"{sid}.png")
        _save_png_atomic(Image.fromarray(mask * np.uint8(255), mode="L"), mask_dir / f"{sid}.png")
        ids.append(sid)
    return ids


# ---------------------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------------------


def _check_args(n: int, size: int, seed: int, lazy_fraction: float) -> None:
    for name, value, low in (("n", n, 1), ("size", size, 16), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SettingsError(f"{name} must be an integer, got {value!r}")
        if value < low:
            raise SettingsError(f"{name} must be >= {low}, got {value}")
    if isinstance(lazy_fraction, bool) or not isinstance(lazy_fraction, (int, float, np.floating)):
        raise SettingsError(f"lazy_fraction must be a number in [0, 1], got {lazy_fraction!r}")
    if not 0.0 <= float(lazy_fraction) <= 1.0:  # also rejects NaN
        raise SettingsError(f"lazy_fraction must be in [0, 1], got {lazy_fraction}")


def _save_png_atomic(image: Image.Image, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (rows, cols), shared read-only between images of one size."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@lru_cache(maxsize=64)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """Row-normalised Gaussian weights from ``cells`` evenly spaced nodes to ``size`` pixels.

    ``A @ G @ A.T`` turns a ``cells x cells`` grid of random values into smooth noise with two matrix
    products, which is far cheaper than filtering a full-resolution noise image.
    """
    nodes = np.linspace(-0.5, size - 0.5, cells)
    spacing = nodes[1] - nodes[0]
    x = np.arange(size, dtype=np.float64)[:, None]
    a = np.exp(-0.5 * ((x - nodes[None, :]) / (0.7 * spacing)) ** 2)
    a /= a.sum(axis=1, keepdims=True)
    a.flags.writeable = False
    return a


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 0) -> np.ndarray:
    """Smooth noise of roughly unit standard deviation, shape (size, size) or (channels, size, size)."""
    a = _interp_matrix(size, cells)
    shape = (channels, cells, cells) if channels else (cells, cells)
    out = a @ rng.standard_normal(shape) @ a.T
    return out / max(float(out.std()), 1e-6)


def _palette(palette: np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation along a palette, t in [0, 1]."""
    pos = t * (len(palette) - 1)
    k = min(int(pos), len(palette) - 2)
    return palette[k] + (pos - k) * (palette[k + 1] - palette[k])


def _luma(rgb: np.ndarray) -> float:
    return float(max(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], 1.0))


def _radius_table(rng: np.random.Generator, r0: float, size: int) -> np.ndarray:
    """``r(theta)`` at ``_N_ANGLES`` angles: low harmonics for the shape, high ones for jagged borders."""
    theta = np.linspace(0.0, 2 * math.pi, _N_ANGLES, endpoint=False)
    irregular = rng.uniform(0.04, 0.28)
    k_low = np.arange(1, 7)
    a_low = rng.normal(0.0, irregular / k_low**0.8)
    a_low[0] *= 0.3  # the first harmonic only shifts the blob; keep it small
    # Jaggedness is a few pixels at most, whatever the blob size, so scale it by size / r0.
    k_high = np.arange(8, 31)
    jag = rng.uniform(0.0, 0.6) * size / 64.0 / max(r0, 1.0)
    a_high = rng.normal(0.0, jag / np.sqrt(len(k_high)), len(k_high))
    k = np.concatenate([k_low, k_high])
    amp = np.concatenate([a_low, a_high])
    phase = rng.uniform(0.0, 2 * math.pi, len(k))
    r = 1.0 + (amp[:, None] * np.cos(k[:, None] * theta[None, :] + phase[:, None])).sum(axis=0)
    return r0 * np.maximum(r, 0.25)


def _blob(cx: float, cy: float, table: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed radial distance to the border (negative inside) and normalised radius rho / r(theta)."""
    yy, xx = _grid(size)
    dx, dy = xx - cx, yy - cy
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx) % (2 * math.pi)
    angles = np.linspace(0.0, 2 * math.pi, _N_ANGLES, endpoint=False)
    r = np.interp(theta, angles, table, period=2 * math.pi)
    return rho - r, rho / r


def _draw_hairs(rng: np.random.Generator, size: int, n_hairs: int) -> np.ndarray:
    """Coverage in [0, 1] of ``n_hairs`` thin curved hairs (quadratic Bezier curves).

    Points are sampled along every curve (at a step of half the hair's width) and splatted with a small
    Gaussian footprint into one accumulator with ``np.bincount``; weights are normalised so that a straight
    hair gets a cross-section of peak ~1, whatever the sampling step.
    """
    scale = size / 64.0
    pts, weights, sigmas = [], [], []
    for _ in range(n_hairs):
        p0 = rng.uniform(-0.1, 1.1, 2) * size
        angle = rng.uniform(0.0, 2 * math.pi)
        length = rng.uniform(0.3, 1.3) * size
        p2 = p0 + length * np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-math.sin(angle), math.cos(angle)])
        p1 = (p0 + p2) / 2 + normal * rng.uniform(-0.35, 0.35) * length
        sigma = max(rng.uniform(0.35, 0.75) * scale, 0.35)
        step = max(0.3, 0.6 * sigma)
        m = int(length / step) + 2
        t = np.linspace(0.0, 1.0, m)[:, None]
        pts.append((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2)
        sigmas.append(np.full(m, sigma))
        weights.append(np.full(m, rng.uniform(0.6, 1.0) * step / (sigma * math.sqrt(2 * math.pi))))
    p = np.concatenate(pts)  # (M, 2) as (x, y)
    s = np.concatenate(sigmas)
    w = np.concatenate(weights)
    inside = (p > -3 * s[:, None]).all(axis=1) & (p < size + 3 * s[:, None]).all(axis=1)
    p, s, w = p[inside], s[inside], w[inside]
    reach = math.ceil(2.2 * float(s.max(initial=0.35)))
    offs = np.arange(-reach, reach + 1)
    ox, oy = np.meshgrid(offs, offs)
    base = np.round(p).astype(np.int64)
    px = base[:, 0:1] + ox.ravel()[None, :]
    py = base[:, 1:2] + oy.ravel()[None, :]
    d2 = (px - p[:, 0:1]) ** 2 + (py - p[:, 1:2]) ** 2
    val = w[:, None] * np.exp(-0.5 * d2 / (s[:, None] ** 2))
    ok = (px >= 0) & (px < size) & (py >= 0) & (py < size)
    acc = np.bincount((py[ok] * size + px[ok]), weights=val[ok], minlength=size * size)
    return np.clip(acc, 0.0, 1.0).reshape(size, size)


def _lazy_mask(
    rng: np.random.Generator, mask: np.ndarray, parts: list[tuple[float, float, np.ndarray]], size: int
) -> np.ndarray:
    """A coarse outline of ``mask``, as drawn by a hurried annotator; falls back to ``mask`` if degenerate."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    inflate = rng.uniform(*LAZY_INFLATION)
    use_hull = rng.random() < 0.5
    if use_hull:
        pts = np.argwhere(mask)[:, ::-1].astype(np.float64)  # (x, y)
        try:
            hull = ConvexHull(pts)
        except (QhullError, ValueError):  # fewer than 3 pixels, or all on one line
            use_hull = False
        else:
            verts = pts[hull.vertices]
            keep = max(1, len(verts) // rng.integers(5, 9))  # few vertices: every keep-th hull vertex
            verts = verts[::keep]
            centre = pts.mean(axis=0)
            verts = centre + inflate * (verts - centre) + rng.normal(0.0, 0.03 * size, 2)
            if len(verts) >= 3:
                draw.polygon([tuple(v) for v in verts], fill=1)
            else:
                use_hull = False
    if not use_hull:
        # Few-vertex polygon around each blob, outside its border, with a small overall shift.
        shift = rng.normal(0.0, 0.025 * size, 2)
        for cx, cy, table in parts:
            k = int(rng.integers(5, 10))
            ang = (np.arange(k) + rng.uniform(-0.3, 0.3, k)) * (2 * math.pi / k) + rng.uniform(0, 2 * math.pi)
            idx = ((ang % (2 * math.pi)) / (2 * math.pi) * _N_ANGLES).astype(int) % _N_ANGLES
            rad = table[idx] * inflate * rng.uniform(0.95, 1.08, k) + 0.5
            xs = cx + shift[0] + rad * np.cos(ang)
            ys = cy + shift[1] + rad * np.sin(ang)
            draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=1)
    coarse = np.asarray(canvas, dtype=np.uint8)
    return coarse if coarse.any() else mask


def _draw_one(
    seed: int, i: int, size: int, lazy_fraction: float
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draws image ``i``: returns the uint8 RGB image, the uint8 {0,1} mask and an info dict."""
    rng = np.random.default_rng([seed, i])
    # The annotation gets its own stream, drawn first, so lazy_fraction never changes the image.
    lazy_u = rng.random()
    ann_rng = np.random.default_rng([seed, i, int(rng.integers(2**32))])
    scale = size / 64.0

    # --- Skin: tone, low-frequency mottling, colour blotches. ---------------------------------------
    tone = _palette(_SKIN_TONES, rng.random()) + rng.normal(0.0, 6.0, 3)
    if rng.random() < 0.3:  # reddish (erythematous) skin
        tone += np.array([10.0, -5.0, -5.0])
    mottle = _smooth_noise(rng, size, int(rng.integers(3, 7))) * rng.uniform(0.01, 0.04)
    blotch = _smooth_noise(rng, size, int(rng.integers(4, 9)), channels=3) * rng.uniform(1.0, 3.5)
    skin = tone[:, None, None] * (1.0 + mottle)[None] + blotch  # (3, H, W)
    # A gentle illumination gradient across the field.
    yy, xx = _grid(size)
    g_angle = rng.uniform(0.0, 2 * math.pi)
    gradient = ((xx - size / 2) * math.cos(g_angle) + (yy - size / 2) * math.sin(g_angle)) / size
    skin *= 1.0 + rng.uniform(0.0, 0.12) * gradient[None]

    # --- Lesion geometry: size, position, number of blobs. --------------------------------------------
    u = rng.random()
    if u < P_TINY:
        r_frac = rng.uniform(0.04, 0.08)
    elif u < P_TINY + P_LARGE:
        r_frac = rng.uniform(0.33, 0.55)
    else:
        r_frac = rng.uniform(0.12, 0.32)
    r0 = r_frac * size
    u = rng.random()
    if u < P_AT_BORDER:
        c = rng.uniform(0.2, 0.8, 2)
        axis = int(rng.integers(2))
        c[axis] = rng.choice([rng.uniform(0.03, 0.12), rng.uniform(0.88, 0.97)])
        cx, cy = c * size
    elif u < P_AT_BORDER + P_OFF_CENTRE:
        cx, cy = rng.uniform(0.25, 0.75, 2) * size
    else:
        cx, cy = np.clip(rng.normal(0.5, 0.06, 2), 0.3, 0.7) * size
    n_parts = int(rng.choice(3, p=P_PARTS)) + 1
    parts = [(float(cx), float(cy), _radius_table(rng, r0, size))]
    for _ in range(n_parts - 1):
        r_p = r0 * rng.uniform(0.3, 0.75)
        ang = rng.uniform(0.0, 2 * math.pi)
        dist = (r0 + r_p) * rng.uniform(0.7, 1.6)  # from overlapping to clearly separate
        px = float(np.clip(cx + dist * math.cos(ang), 0, size - 1))
        py = float(np.clip(cy + dist * math.sin(ang), 0, size - 1))
        parts.append((px, py, _radius_table(rng, r_p, size)))

    edge = (rng.uniform(2.0, 4.0) if rng.random() < P_FUZZY_EDGE else rng.uniform(0.4, 1.5)) * scale
    alpha = np.zeros((size, size))
    mask = np.zeros((size, size), dtype=bool)
    q_main = None
    for j, (px, py, table) in enumerate(parts):
        sd, q = _blob(px, py, table, size)
        if j == 0:
            q_main = q
        # alpha is 0.5 exactly on the drawn border, so the exact mask is the inside of the curve.
        strength = 1.0 if j == 0 else rng.uniform(0.85, 1.1)
        alpha = np.maximum(alpha, strength * np.clip(0.5 - sd / edge, 0.0, 1.0))
        mask |= sd < 0

    # --- Lesion colour: main colour, blotches of a second colour, dark dots, radial trend. -----------
    main = _LESION_COLOURS[rng.choice(len(_LESION_COLOURS), p=_MAIN_COLOUR_P)] + rng.normal(0.0, 8.0, 3)
    second = _LESION_COLOURS[rng.integers(len(_LESION_COLOURS))] + rng.normal(0.0, 8.0, 3)
    # A light-brown lesion on tanned skin would be invisible by accident; faint lesions should only come
    # from the explicit low-contrast knob, so both colours are kept clearly darker than the skin.
    main, second = (c * min(1.0, MAX_LESION_LUMA * _luma(tone) / _luma(c)) for c in (main, second))
    blot_w = np.clip((_smooth_noise(rng, size, int(rng.integers(3, 7))) - rng.uniform(-0.5, 1.0)) * 1.5, 0, 1)
    blot_w *= rng.uniform(0.0, 0.9)
    colour = main[:, None, None] * (1.0 - blot_w)[None] + second[:, None, None] * blot_w[None]
    if rng.random() < 0.5:  # dark dots / globules: peaks of a higher-frequency noise
        dots = _smooth_noise(rng, size, max(6, int(rng.integers(10, 18) * min(scale, 3.0))))
        colour *= 1.0 - 0.45 * np.clip((dots - 1.3) * 2.0, 0.0, 1.0)[None]
    colour *= np.clip(1.0 + rng.uniform(-0.3, 0.3) * (np.minimum(q_main, 1.5) - 0.5), 0.5, 1.5)[None]

    low_contrast = rng.random() < P_LOW_CONTRAST
    contrast = rng.uniform(*(LOW_CONTRAST_RANGE if low_contrast else CONTRAST_RANGE))
    # Blend towards the lesion colour, keeping the skin texture visible under faint lesions.
    img = skin + (contrast * alpha)[None] * (colour - skin)

    # --- Hair over skin and lesion. --------------------------------------------------------------------
    u = rng.random()
    if u < P_HAIR_MANY:
        n_hairs = int(rng.integers(8, 31))
    elif u < P_HAIR_MANY + P_HAIR_FEW:
        n_hairs = int(rng.integers(1, 7))
    else:
        n_hairs = 0
    if n_hairs:
        cover = _draw_hairs(rng, size, n_hairs)
        hair_colour = rng.uniform(20.0, 70.0) * np.array([1.0, 0.85, 0.75]) + rng.normal(0.0, 4.0, 3)
        img = img * (1.0 - cover)[None] + hair_colour[:, None, None] * cover[None]

    # --- Dermoscope optics: gentle fall-off, sometimes dark circular corners; then sensor grain. -----
    rho = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) / (size / 2)
    shade = 1.0 - rng.uniform(0.0, 0.15) * rho**2
    if rng.random() < P_SCOPE_CORNERS:
        radius = rng.uniform(0.98, 1.35)
        soft = rng.uniform(0.03, 0.15)
        t = np.clip((rho - radius) / soft + 0.5, 0.0, 1.0)
        shade *= 1.0 - rng.uniform(0.8, 0.97) * t * t * (3 - 2 * t)
    img *= shade[None]
    img += rng.normal(0.0, rng.uniform(1.0, 6.0), img.shape)
    image = np.clip(img, 0.0, 255.0).round().astype(np.uint8).transpose(1, 2, 0)

    # --- Annotation. -----------------------------------------------------------------------------------
    mask_u8 = mask.astype(np.uint8)
    lazy = bool(lazy_u < lazy_fraction) and bool(mask.any())
    if lazy:
        mask_u8 = _lazy_mask(ann_rng, mask_u8, parts, size)
    info = {
        "lazy": lazy,
        "n_parts": n_parts,
        "low_contrast": bool(low_contrast),
        "contrast": float(contrast),
        "n_hairs": n_hairs,
        "radius": float(r_frac),
        "lesion_fraction": float(mask_u8.mean()),
    }
    return np.ascontiguousarray(image), mask_u8, info
