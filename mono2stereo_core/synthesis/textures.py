"""Surface textures for procedural stereo scenes: offline sample photographs plus synthetic patterns.

A :class:`Texture` is a mip-mapped RGB image in [0, 1] that is sampled in *texel coordinates of level 0*
with mirrored repeat, so a surface can be tiled without visible seams. The renderer picks the mip level per
sample from the projected footprint, which keeps strongly minified surfaces (a ground plane near the horizon)
from aliasing into noise that no real camera would record.

Photographs come from ``skimage.data`` (shipped with scikit-image, no download): natural image statistics are
what lets a network trained only on procedural scenes transfer to real stereo pairs. The Middlebury
``stereo_motorcycle`` pair is deliberately excluded because it is the evaluation set.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np

# Colour photographs and grey-scale photographs from skimage.data that ship inside the wheel (no pooch fetch).
COLOUR_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
GREY_PHOTOS: tuple[str, ...] = (
    "brick",
    "camera",
    "grass",
    "gravel",
    "moon",
    "coins",
    "clock",
    "page",
    "text",
)
SYNTHETIC_KINDS: tuple[str, ...] = ("noise", "stripes", "checker", "gradient", "flat", "marble", "cells")

# Larger photographs are downscaled: a texel smaller than this fraction of the photo adds no detail that
# survives rendering at 640 px, and smaller pyramids keep the per-process cache around 10 MB.
_MAX_PHOTO_SIDE = 512


class Texture:
    """A mip-mapped RGB texture in [0, 1], sampled with mirrored repeat and bilinear filtering.

    Args:
        image: H x W x 3 float32 (or uint8, converted) level-0 image; H, W >= 2.
        name: label for error messages and debugging.
    """

    def __init__(self, image: np.ndarray, *, name: str = "texture") -> None:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 2:
            raise ValueError(
                f"texture {name!r} must be H x W x 3 with H, W >= 2, instead got shape {img.shape}"
            )
        if img.dtype == np.uint8:
            img = img.astype(np.float32) / 255.0
        img = np.ascontiguousarray(img, dtype=np.float32)
        self.name = name
        self.levels: list[np.ndarray] = [img]
        while min(self.levels[-1].shape[:2]) >= 8:
            self.levels.append(cv2.pyrDown(self.levels[-1]))
        # One contiguous row-major plane per channel and level: a bilinear tap is then a 1-D np.take.
        self._planes = [
            tuple(np.ascontiguousarray(lvl[..., c]).ravel() for c in range(3)) for lvl in self.levels
        ]

    @property
    def shape(self) -> tuple[int, int]:
        return self.levels[0].shape[:2]

    def sample(self, u: np.ndarray, v: np.ndarray, level: np.ndarray | float = 0.0) -> np.ndarray:
        """Samples N points.

        Args:
            u, v: (N,) texel coordinates of level 0 (u along columns, v along rows; texel centres at integers).
                Any real value is valid: the texture repeats mirrored.
            level: (N,) or scalar mip level (0 = full resolution); rounded to the nearest level and clipped.

        Returns:
            (N, 3) float32 RGB in [0, 1].
        """
        return self.sample_planes(u, v, level).T.copy()

    def sample_planes(self, u: np.ndarray, v: np.ndarray, level: np.ndarray | float = 0.0) -> np.ndarray:
        """Like :meth:`sample` but returns (3, N): one contiguous row per channel (what the renderer needs)."""
        u = np.asarray(u, dtype=np.float32).ravel()
        v = np.asarray(v, dtype=np.float32).ravel()
        if u.shape != v.shape:
            raise ValueError(f"u and v must have the same length, instead got {u.shape} and {v.shape}")
        nlev = len(self.levels)
        lvl = np.clip(np.rint(np.asarray(level, dtype=np.float32)), 0, nlev - 1).astype(np.intp)
        if lvl.ndim == 0 or u.size == 0:
            return self._sample_level(int(lvl) if lvl.ndim == 0 else 0, u, v)
        lvl = np.broadcast_to(lvl.ravel(), u.shape)
        counts = np.bincount(lvl, minlength=nlev)
        present = np.flatnonzero(counts)
        if present.size == 1:
            return self._sample_level(int(present[0]), u, v)
        out = np.empty((3, u.size), dtype=np.float32)
        for k in present:
            sel = np.flatnonzero(lvl == k)
            vals = self._sample_level(int(k), np.take(u, sel), np.take(v, sel))
            for c in range(3):
                np.put(out[c], sel, vals[c])
        return out

    def _sample_level(self, k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        h, w = self.levels[k].shape[:2]
        scale = np.float32(0.5**k)
        # Level-k texel centre i sits at level-0 coordinate (i + 0.5) * 2^k - 0.5.
        cu0, cu1, fu = _mirrored_taps((u + 0.5) * scale - 0.5, w)
        rv0, rv1, fv = _mirrored_taps((v + 0.5) * scale - 0.5, h)
        rv0 *= w
        rv1 *= w
        i00, i01, i10, i11 = rv0 + cu0, rv0 + cu1, rv1 + cu0, rv1 + cu1
        w00 = (1 - fu) * (1 - fv)
        w01 = fu * (1 - fv)
        w10 = (1 - fu) * fv
        w11 = fu * fv
        out = np.empty((3, u.size), dtype=np.float32)
        # np.take on 1-D channel planes is ~10x faster than fancy-indexing rows of an (N, 3) array.
        for c, plane in enumerate(self._planes[k]):
            out[c] = (
                np.take(plane, i00) * w00
                + np.take(plane, i01) * w01
                + np.take(plane, i10) * w10
                + np.take(plane, i11) * w11
            )
        return out


def _mirrored_taps(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps (i0, i1, weight of i1) of coordinates ``x`` under mirrored repeat of ``n`` texels.

    Folding the *coordinate* into one mirrored period [-0.5, n - 0.5] and clamping the taps is exact: under
    mirroring, texel -1 is texel 0 and texel n is texel n - 1. It is cheaper than folding integer taps.
    """
    period = np.float32(2 * n)
    m = np.mod(x + np.float32(0.5), period) - np.float32(0.5)
    m = np.where(m > n - 0.5, period - 1 - m, m)
    f0 = np.floor(m)
    frac = m - f0
    i0 = f0.astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    np.maximum(i0, 0, out=i0)
    return i0, i1, frac


@functools.cache
def photo_texture(name: str) -> Texture:
    """The skimage sample photograph ``name`` as a cached :class:`Texture` (grey photos become grey RGB)."""
    if name not in COLOUR_PHOTOS and name not in GREY_PHOTOS:
        raise ValueError(f"unknown photo texture {name!r}; expected one of {COLOUR_PHOTOS + GREY_PHOTOS}")
    try:
        import skimage.data
    except ImportError as exc:  # scikit-image is an optional (training) dependency
        raise ImportError(
            "photo textures need scikit-image (pip install 'mono2stereo-core[training]'); "
            "set SceneConfig(p_photo=0) to render with synthetic textures only"
        ) from exc
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    side = max(img.shape[:2])
    if side > _MAX_PHOTO_SIDE:
        f = _MAX_PHOTO_SIDE / side
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    return Texture(img, name=name)


def available_photos() -> tuple[str, ...]:
    """Names of the photographs usable as textures here (empty when scikit-image is missing)."""
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return ()
    return COLOUR_PHOTOS + GREY_PHOTOS


def _fractal_noise(
    rng: np.random.Generator, size: int, *, octaves: int, base: int, persistence: float
) -> np.ndarray:
    """size x size float32 noise in [0, 1]: sum of bicubically upsampled white noise at doubling frequencies."""
    acc = np.zeros((size, size), dtype=np.float32)
    amp, total = 1.0, 0.0
    cells = base
    for _ in range(octaves):
        cells = min(cells, size)
        layer = rng.random((cells, cells), dtype=np.float32)
        acc += amp * cv2.resize(layer, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= persistence
        cells *= 2
    # Stretch +-2.5 standard deviations to [0, 1] (a percentile stretch costs a sort, ~5x the whole noise).
    mean, std = float(acc.mean()), float(acc.std())
    return np.clip((acc - mean) / max(5 * std, 1e-6) + 0.5, 0.0, 1.0)


def _random_colour(rng: np.random.Generator, *, saturation: tuple[float, float] = (0.1, 0.8)) -> np.ndarray:
    hsv = np.array(
        [[[rng.uniform(0, 180), rng.uniform(*saturation) * 255, rng.uniform(40, 240)]]], np.float32
    )
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return rgb.reshape(3).astype(np.float32) / 255.0


def _two_tone(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    return c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]


def synthetic_texture(kind: str, rng: np.random.Generator, *, size: int = 256) -> Texture:
    """A random synthetic pattern of the given ``kind`` (one of :data:`SYNTHETIC_KINDS`), size x size texels.

    ``flat`` is nearly textureless on purpose (amplitude of a few grey levels): large uniform regions are
    where stereo matching is ambiguous, and a training set without them teaches a network nothing about them.
    """
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"unknown synthetic texture kind {kind!r}; expected one of {SYNTHETIC_KINDS}")
    if size < 8:
        raise ValueError(f"synthetic texture size must be >= 8 texels, instead got {size}")
    c0, c1 = _random_colour(rng), _random_colour(rng)
    ramp = np.arange(size, dtype=np.float32) / size
    yy, xx = ramp[:, None], ramp[None, :]  # broadcast, not materialized
    angle = rng.uniform(0, np.pi)
    along = xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle))
    if kind == "noise":
        t = _fractal_noise(
            rng,
            size,
            octaves=int(rng.integers(2, 7)),
            base=int(rng.integers(2, 12)),
            persistence=rng.uniform(0.4, 0.8),
        )
        img = _two_tone(t, c0, c1)
        # A second, independent noise field on the colour keeps it from looking like a two-colour print.
        img += (_fractal_noise(rng, size, octaves=3, base=4, persistence=0.5)[..., None] - 0.5) * rng.uniform(
            0, 0.3
        )
    elif kind == "stripes":
        freq = float(rng.integers(2, 24))
        phase = np.sin(2 * np.pi * freq * along)
        t = 0.5 + 0.5 * np.tanh(phase * rng.uniform(1.0, 8.0))
        img = _two_tone(t, c0, c1)
    elif kind == "checker":
        n = float(rng.integers(2, 16))
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
        img = _two_tone(t, c0, c1)
    elif kind == "gradient":
        img = _two_tone(np.clip(along / max(float(along.max()), 1e-6), 0, 1), c0, c1)
    elif kind == "marble":
        warp = _fractal_noise(rng, size, octaves=5, base=3, persistence=0.6)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(2, 10) * along + rng.uniform(1, 4) * warp))
        img = _two_tone(t, c0, c1)
    elif kind == "cells":
        # Blocky regions (tiles, panels, pavement) with soft gaps between them.
        n = int(rng.integers(3, 20))
        grid = rng.random((n, n, 3), dtype=np.float32)
        cells = cv2.resize(grid, (size, size), interpolation=cv2.INTER_NEAREST)
        t = cells.mean(axis=2)
        img = _two_tone(t, c0, c1)
        gap = (np.minimum((xx * n) % 1, (yy * n) % 1) < rng.uniform(0.02, 0.12)).astype(np.float32)
        img = img * (1 - 0.5 * gap[..., None])
    else:  # flat
        img = np.broadcast_to(c0, (size, size, 3)).astype(np.float32)
    # Every real surface has some fine grain; "flat" gets only a few grey levels of it.
    grain_amp = rng.uniform(0.002, 0.015) if kind == "flat" else rng.uniform(0.0, 0.05)
    grain = rng.random((size, size), dtype=np.float32) - np.float32(0.5)
    img = img + grain[..., None] * np.float32(grain_amp)
    return Texture(np.clip(img, 0.0, 1.0).astype(np.float32), name=f"synthetic:{kind}")


def random_texture(
    rng: np.random.Generator,
    *,
    p_photo: float,
    p_flat: float,
    photos: Sequence[str] | None = None,
    size: int = 256,
) -> Texture:
    """Draws a texture: a flat one with probability ``p_flat``, else a photograph with probability ``p_photo``,
    else one of the other synthetic kinds."""
    if rng.random() < p_flat:
        return synthetic_texture("flat", rng, size=size)
    names = tuple(available_photos() if photos is None else photos)
    if names and rng.random() < p_photo:
        return photo_texture(names[int(rng.integers(len(names)))])
    kinds = [k for k in SYNTHETIC_KINDS if k != "flat"]
    return synthetic_texture(kinds[int(rng.integers(len(kinds)))], rng, size=size)
