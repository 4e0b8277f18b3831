"""Seeded procedural 3-D scenes ray-cast through a rectified stereo rig, with an exact right view.

Each scene is a random layered world (background and ground planes, walls, oriented boxes, spheres, cylinders,
curved panels, plates, fences and lattices, spoked wheels, wires and bar racks) seen by a pinhole stereo pair.
Both views are rendered independently by ray casting with a z-buffer. Textures are attached to *surface*
coordinates, so a surface point has the same albedo in both views; Lambertian shading and cast shadows (a
shadow map from a point light) depend only on the 3-D point too. Only view-dependent specular highlights,
per-view exposure, vignetting and sensor noise differ, as they do for a real camera pair. Edges are
anti-aliased by supersampling wherever a pixel's sub-rays disagree; textures are mip-mapped. The ground truth is
therefore exact: the right view is rendered, not warped, and the occlusion mask comes from casting the right
camera's ray through every left pixel's 3-D point.

Conventions (see :mod:`mono2stereo_core.geometry`): the left camera is at the origin looking along +z with
y down; the right camera is at ``(B, 0, 0)``. Ray directions are ``((u - cx)/fx, (v - cy)/fy, 1)``, so the
ray parameter of a hit *is* its depth. Disparity is ``fx * B / depth`` (``doffs = 0``).

Scenes are laid out in scale-free units and scaled at the end: the left image does not depend on the scene
scale, so the rig's baseline is chosen after the left depth is known, which pins the largest disparity to a
random fraction of ``max_disparity`` exactly instead of hoping a random layout lands in range.

Everything is vectorized numpy over image tiles: each primitive is intersected only with the rays inside the
screen rectangle of its projected bounding box, and shaded only where it won the z-test.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from mono2stereo_core.geometry import StereoCamera, depth_to_disparity
from mono2stereo_core.synthesis.textures import Texture, available_photos, random_texture

__all__ = ["PRIMITIVE_KINDS", "ProceduralScene", "SceneConfig", "render_scene", "render_sequence"]

PRIMITIVE_KINDS: tuple[str, ...] = (
    "box",
    "sphere",
    "cylinder",
    "curved_panel",
    "plate",
    "fence",
    "wheel",
    "wires",
    "bars",
)
_DEFAULT_WEIGHTS: dict[str, float] = {
    "box": 3.0,
    "sphere": 1.2,
    "cylinder": 1.5,
    "curved_panel": 1.0,
    "plate": 2.0,
    "fence": 1.2,
    "wheel": 0.8,
    "wires": 0.8,
    "bars": 1.0,
}
_NEAR = 1e-3  # rays start this far (scene units) from the camera, so surfaces behind it never win
_Z_NEAR = 1.0  # depth of the nearest content in scene units; the final metric scale is applied afterwards
_SEQUENCE_PERIOD = 120  # frames per loop of render_sequence's camera path
_OCCLUSION_RTOL = 1e-4  # relative depth slack for "the right ray hits the same point" under float32 rounding
_TONE_LUT_SIZE = 4096  # tone-curve resolution: steps well under 0.2 grey levels


@dataclass(frozen=True)
class SceneConfig:
    """Distribution of procedural scenes. Ranges are ``(low, high)`` and sampled uniformly unless noted.

    Attributes:
        num_objects: number of foreground primitives (inclusive range).
        depth_ratio: far background depth over the nearest object's depth (sampled log-uniformly); sets how
            small the background disparity is relative to the largest one.
        max_disparity_fraction: the largest left disparity of a scene is this fraction of ``max_disparity``.
        primitive_weights: relative frequency of each foreground kind (keys from :data:`PRIMITIVE_KINDS`).
        p_ground, p_side_wall, p_ceiling, p_slanted_background: probabilities of the large planes
            (each side wall is drawn independently).
        p_grounded: probability that a box, sphere or cylinder stands upright on the ground plane (when there
            is one and the object's pixel sees it) instead of floating.
        p_textureless: probability that a surface gets an almost uniform colour.
        p_photo: probability that a textured surface uses a photograph (else a synthetic pattern).
        p_specular: probability that a surface is glossy (view-dependent highlights).
        p_haze: probability of distance haze (aerial perspective) in a scene.
        p_shadows: probability that the light casts shadows (shadow-mapped, identical in both views).
        horizontal_fov_deg: horizontal field of view of a random camera, in degrees.
        baseline_m: metric baseline of a random camera (sampled log-uniformly), in metres.
        supersample: rays per pixel along each axis for anti-aliasing (colour only; depth uses the centre ray).
        exposure_jitter: largest relative gain difference between the two views.
        noise_sigma: sensor noise standard deviation in grey levels (0-255).
        blur_sigma: optical blur in pixels, identical in both views.
    """

    num_objects: tuple[int, int] = (8, 28)
    depth_ratio: tuple[float, float] = (6.0, 60.0)
    max_disparity_fraction: tuple[float, float] = (0.3, 0.97)
    primitive_weights: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_WEIGHTS))
    p_ground: float = 0.6
    p_grounded: float = 0.4
    p_side_wall: float = 0.25
    p_ceiling: float = 0.1
    p_slanted_background: float = 0.5
    p_textureless: float = 0.12
    p_photo: float = 0.6
    p_specular: float = 0.35
    p_haze: float = 0.3
    p_shadows: float = 0.7
    horizontal_fov_deg: tuple[float, float] = (45.0, 95.0)
    baseline_m: tuple[float, float] = (0.05, 0.6)
    supersample: int = 2
    exposure_jitter: float = 0.02
    noise_sigma: tuple[float, float] = (0.3, 2.0)
    blur_sigma: tuple[float, float] = (0.0, 0.6)

    def __post_init__(self) -> None:
        for name in (
            "num_objects",
            "depth_ratio",
            "max_disparity_fraction",
            "horizontal_fov_deg",
            "baseline_m",
            "noise_sigma",
            "blur_sigma",
        ):
            lo, hi = getattr(self, name)
            if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                raise ValueError(
                    f"SceneConfig.{name} must be a finite (low, high) range, instead got {(lo, hi)}"
                )
        if self.num_objects[0] < 0:
            raise ValueError(f"SceneConfig.num_objects must be >= 0, instead got {self.num_objects}")
        if self.depth_ratio[0] <= 1.5:
            raise ValueError(f"SceneConfig.depth_ratio must exceed 1.5, instead got {self.depth_ratio}")
        if not (0 < self.max_disparity_fraction[0] and self.max_disparity_fraction[1] <= 1):
            raise ValueError(
                f"SceneConfig.max_disparity_fraction must lie in (0, 1], instead got {self.max_disparity_fraction}"
            )
        if not (1 <= self.horizontal_fov_deg[0] and self.horizontal_fov_deg[1] < 170):
            raise ValueError(
                f"SceneConfig.horizontal_fov_deg must lie in [1, 170), instead got {self.horizontal_fov_deg}"
            )
        if self.baseline_m[0] <= 0:
            raise ValueError(f"SceneConfig.baseline_m must be positive, instead got {self.baseline_m}")
        if self.noise_sigma[0] < 0 or self.blur_sigma[0] < 0:
            raise ValueError(
                f"SceneConfig noise_sigma/blur_sigma must be >= 0, instead got {self.noise_sigma}, {self.blur_sigma}"
            )
        unknown = set(self.primitive_weights) - set(PRIMITIVE_KINDS)
        if unknown:
            raise ValueError(
                f"SceneConfig.primitive_weights has unknown kinds {sorted(unknown)}; known: {PRIMITIVE_KINDS}"
            )
        weights = np.array(list(self.primitive_weights.values()), dtype=np.float64)
        if np.any(weights < 0) or (self.num_objects[1] > 0 and weights.sum() <= 0):
            raise ValueError(
                f"SceneConfig.primitive_weights must be >= 0 with a positive sum, instead got {dict(self.primitive_weights)}"
            )
        for name in (
            "p_ground",
            "p_grounded",
            "p_side_wall",
            "p_ceiling",
            "p_slanted_background",
            "p_textureless",
            "p_photo",
            "p_specular",
            "p_haze",
            "p_shadows",
        ):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"SceneConfig.{name} must be a probability in [0, 1], instead got {p}")
        if not (isinstance(self.supersample, int) and 1 <= self.supersample <= 4):
            raise ValueError(
                f"SceneConfig.supersample must be an int in 1..4, instead got {self.supersample!r}"
            )
        if not 0 <= self.exposure_jitter < 0.5:
            raise ValueError(
                f"SceneConfig.exposure_jitter must lie in [0, 0.5), instead got {self.exposure_jitter}"
            )


@dataclass
class ProceduralScene:
    """One rendered stereo pair with exact ground truth.

    Attributes:
        left: H x W x 3 uint8 RGB left view.
        right: H x W x 3 uint8 RGB right view, rendered from the right camera (not warped).
        depth: H x W float32 metric depth of the left view's pixel-centre rays; finite and > 0 everywhere.
        disparity: H x W float32 left-view disparity in pixels, ``fx * B / depth``.
        disparity_right: H x W float32 right-view disparity in pixels (right pixel ``x`` matches left ``x + d``).
        occlusion: H x W bool, left pixels whose 3-D point is hidden from the right camera or projects outside
            the right image.
        camera: the rig (``doffs = 0``, width and height filled).
    """

    left: np.ndarray
    right: np.ndarray
    depth: np.ndarray
    disparity: np.ndarray
    disparity_right: np.ndarray
    occlusion: np.ndarray
    camera: StereoCamera


# --------------------------------------------------------------------------------------------------------------
# Primitives. Each lives in a local frame (rotation R, centre c: p_camera = R @ p_local + c) and answers two
# questions for a bundle of rays from (ox, 0, 0) with directions (X, Y, 1): the hit depth (inf for a miss),
# and, for rays known to hit, the local texture coordinates and local normal.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Material:
    texture: Texture
    texel_size: float  # scene units per level-0 texel
    angle: float  # texture rotation on the surface
    offset: tuple[float, float]  # texel offset, so tiled copies of one photo do not line up
    gain: np.ndarray  # (3,) per-channel albedo gain (tint, contrast)
    bias: np.ndarray  # (3,)
    specular: float
    shininess: float


@dataclass
class _Primitive:
    rotation: np.ndarray  # (3, 3) float64, columns = local axes in camera coordinates
    centre: np.ndarray  # (3,) float64
    material: _Material

    def moved(self, rotation: np.ndarray, translation: np.ndarray) -> _Primitive:
        """The primitive after the rigid map ``p -> rotation @ p + translation``."""
        return dataclasses.replace(
            self, rotation=rotation @ self.rotation, centre=rotation @ self.centre + translation
        )

    def local_corners(self) -> np.ndarray | None:
        """(K, 3) local points whose convex hull bounds the primitive; None when unbounded."""
        return None

    @functools.cached_property
    def corners(self) -> np.ndarray | None:
        """(K, 3) bounding points in camera coordinates (cached: primitives are replaced, never mutated)."""
        local = self.local_corners()
        if local is None:
            return None
        return local @ self.rotation.T + self.centre

    def _origin(self, ox: float) -> tuple[float, float, float]:
        o = self.rotation.T @ (np.array([ox, 0.0, 0.0]) - self.centre)
        return float(o[0]), float(o[1]), float(o[2])

    def _direction(self, i: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = self.rotation
        # Python floats keep float32 arrays float32 (numpy scalars would promote to float64).
        return float(r[0, i]) * x + float(r[1, i]) * y + float(r[2, i])

    def intersect(self, ox: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Hit depth for rays ``(x, y, 1)`` from ``(ox, 0, 0)``; ``x``, ``y`` broadcast; inf where missed."""
        raise NotImplementedError

    def surface(
        self, o: tuple[float, float, float], p: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Texture coordinates (s, q) in scene units and the local normal at local hit points ``p``."""
        raise NotImplementedError


def _gather_rays(
    x: np.ndarray, y: np.ndarray, flat: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The ray coordinates at flat indices ``flat`` of the broadcast ``shape`` of ``x`` and ``y``: either
    a full (h, w) array or a (1, w) row / (h, 1) column, without materializing the broadcast."""
    w = shape[-1]
    xh = np.take(x, flat) if np.shape(x) == shape else np.take(np.ravel(x), flat % w)
    yh = np.take(y, flat) if np.shape(y) == shape else np.take(np.ravel(y), flat // w)
    return xh, yh


@dataclass
class _Plane(_Primitive):
    """The local z = 0 plane, optionally bounded to |x| <= a, |y| <= b and perforated by a pattern."""

    half_extent: tuple[float, float] = (math.inf, math.inf)
    pattern: str = "solid"  # solid | fence | lattice | diamond | holes | wheel
    params: Mapping[str, float] = field(default_factory=dict)

    def local_corners(self) -> np.ndarray | None:
        a, b = self.half_extent
        if not (math.isfinite(a) and math.isfinite(b)):
            return None
        return np.array([[-a, -b, 0.0], [a, -b, 0.0], [-a, b, 0.0], [a, b, 0.0]])

    def intersect(self, ox: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        o = self._origin(ox)
        t = -o[2] / self._direction(2, x, y)
        valid = t > _NEAR
        a, b = self.half_extent
        if math.isfinite(a) or self.pattern != "solid":
            px = o[0] + t * self._direction(0, x, y)
            py = o[1] + t * self._direction(1, x, y)
            valid &= self._keep(px, py)
        return np.where(valid, t, np.float32(np.inf))

    def _keep(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        a, b = self.half_extent
        keep = (np.abs(px) <= a) & (np.abs(py) <= b) if self.pattern != "wheel" else np.hypot(px, py) <= a
        pr = self.params
        if self.pattern == "solid":
            return keep
        if self.pattern == "fence":  # vertical pickets between top and bottom rails
            period, width, rail = pr["period"], pr["width"], pr["rail"]
            picket = np.mod(px + a, period) < width
            rails = np.abs(np.abs(py) - b * 0.7) < rail
            return keep & (picket | rails | (np.abs(px) > a - width))
        if self.pattern in ("lattice", "diamond"):
            if self.pattern == "diamond":
                px, py = (px + py) * np.float32(0.70710677), (px - py) * np.float32(0.70710677)
            period, width = pr["period"], pr["width"]
            bars = (np.mod(px, period) < width) | (np.mod(py, period) < width)
            return keep & bars
        if self.pattern == "holes":  # perforated sheet
            period, radius = pr["period"], pr["radius"]
            dx = np.mod(px, period) - period / 2
            dy = np.mod(py, period) - period / 2
            return keep & (dx * dx + dy * dy > radius * radius)
        if self.pattern == "wheel":  # rim + hub + straight spokes
            rho = np.hypot(px, py)
            theta = np.arctan2(py, px)
            step = 2 * math.pi / pr["spokes"]
            spoke_angle = np.rint(theta / step) * step
            spoke = rho * np.abs(np.sin(theta - spoke_angle)) < pr["width"] / 2
            return keep & ((rho >= a - pr["rim"]) | (rho <= pr["hub"]) | spoke)
        raise ValueError(f"unknown plate pattern {self.pattern!r}")

    def surface(self, o, p):
        px, py, _ = p
        zero = np.zeros_like(px)
        return px, py, (zero, zero, zero + 1)


@dataclass
class _Box(_Primitive):
    half: tuple[float, float, float] = (1.0, 1.0, 1.0)
    along_offset: float = 0.0  # texture shift along local y, so segments of one long bar tile seamlessly

    def local_corners(self) -> np.ndarray:
        h = np.array(self.half)
        signs = np.array(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64
        )
        return signs * h

    def intersect(self, ox: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        o = self._origin(ox)
        t_in = t_out = None
        for i in range(3):
            inv = 1.0 / self._direction(i, x, y)
            t1 = (-self.half[i] - o[i]) * inv
            t2 = (self.half[i] - o[i]) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            t_in = lo if t_in is None else np.maximum(t_in, lo)
            t_out = hi if t_out is None else np.minimum(t_out, hi)
        return np.where((t_in <= t_out) & (t_in > _NEAR), t_in, np.float32(np.inf))

    def surface(self, o, p):
        h = self.half
        rel = np.stack([np.abs(p[0]) / h[0], np.abs(p[1]) / h[1], np.abs(p[2]) / h[2]])
        face = np.argmax(rel, axis=0)
        normals = []
        for i in range(3):
            normals.append(np.where(face == i, np.sign(p[i]), 0).astype(np.float32))
        # Each face gets its own window of the texture (offset by the face index and side).
        side = np.sign(p[0] * (face == 0) + p[1] * (face == 1) + p[2] * (face == 2))
        along = p[1] + self.along_offset
        s = np.where(face == 0, along, p[0]) + (face * 7.3 + side * 3.1) * max(h)
        q = np.where(face == 2, along, p[2])
        return s, q, tuple(normals)


@dataclass
class _Sphere(_Primitive):
    radius: float = 1.0

    def local_corners(self) -> np.ndarray:
        return _Box(self.rotation, self.centre, self.material, half=(self.radius,) * 3).local_corners()

    def intersect(self, ox: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        c = self.centre
        ocx, ocy, ocz = ox - float(c[0]), -float(c[1]), -float(c[2])
        a = x * x + y * y + 1.0
        b = ocx * x + ocy * y + ocz
        cc = ocx * ocx + ocy * ocy + ocz * ocz - self.radius**2
        disc = b * b - a * cc
        best = np.full(disc.shape, np.inf, dtype=np.float32)
        hit = np.flatnonzero(disc >= 0)  # the sphere's disc is a fraction of its screen rectangle
        if hit.size:
            a, b, disc = np.take(a, hit), np.take(b, hit), np.take(disc, hit)
            t = (-b - np.sqrt(disc)) / a
            np.put(best, hit, np.where(t > _NEAR, t, np.float32(np.inf)))
        return best

    def surface(self, o, p):
        r = self.radius
        n = (p[0] / r, p[1] / r, p[2] / r)
        s = np.arctan2(n[0], n[2]) * r
        q = np.arcsin(np.clip(n[1], -1, 1)) * r
        return s, q, n


@dataclass
class _Cylinder(_Primitive):
    """Cylinder around local z, |z| <= half_length; ``span`` < 2*pi makes an open curved panel."""

    radius: float = 1.0
    half_length: float = 1.0
    span: float = 2 * math.pi
    capped: bool = True
    along_offset: float = 0.0  # texture shift along the axis, so segments of one long bar tile seamlessly

    def local_corners(self) -> np.ndarray:
        r = self.radius
        return _Box(self.rotation, self.centre, self.material, half=(r, r, self.half_length)).local_corners()

    def intersect(self, ox: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        o = self._origin(ox)
        dx, dy = self._direction(0, x, y), self._direction(1, x, y)
        a = dx * dx + dy * dy
        b = o[0] * dx + o[1] * dy
        cc = o[0] ** 2 + o[1] ** 2 - self.radius**2
        disc = b * b - a * cc
        best = np.full(disc.shape, np.inf, dtype=np.float32)
        # Thin and distant cylinders cover a sliver of their screen rectangle: finish the work only on rays
        # that meet the infinite cylinder (every cap hit is one of them too).
        hit = np.flatnonzero(disc >= 0)
        if hit.size == 0:
            return best
        xh, yh = _gather_rays(x, y, hit, disc.shape)
        a, b, disc = np.take(a, hit), np.take(b, hit), np.take(disc, hit)
        dx, dy = np.take(dx, hit), np.take(dy, hit)
        dz = self._direction(2, xh, yh)
        root = np.sqrt(disc)
        t_hit = np.full(hit.size, np.inf, dtype=np.float32)
        for sign in (1.0, -1.0):  # far root first, so the near one overwrites it
            t = (-b + sign * root) / a
            ok = (t > _NEAR) & (np.abs(o[2] + t * dz) <= self.half_length)
            if self.span < 2 * math.pi:
                ang = np.arctan2(o[1] + t * dy, o[0] + t * dx)
                ok &= np.mod(ang, 2 * math.pi) <= self.span
            t_hit = np.where(ok, t, t_hit)
        if self.capped:
            for zc in (-self.half_length, self.half_length):
                t = (zc - o[2]) / dz
                px, py = o[0] + t * dx, o[1] + t * dy
                ok = (t > _NEAR) & (px * px + py * py <= self.radius**2) & (t < t_hit)
                t_hit = np.where(ok, t, t_hit)
        np.put(best, hit, t_hit)
        return best

    def surface(self, o, p):
        r = self.radius
        rxy = np.hypot(p[0], p[1])
        on_cap = np.abs(np.abs(p[2]) - self.half_length) < np.abs(rxy - r)
        if not self.capped:
            on_cap = np.zeros_like(on_cap)
        inv = 1.0 / np.maximum(rxy, 1e-12)
        n = (
            np.where(on_cap, 0, p[0] * inv).astype(np.float32),
            np.where(on_cap, 0, p[1] * inv).astype(np.float32),
            np.where(on_cap, np.sign(p[2]), 0).astype(np.float32),
        )
        s = np.where(on_cap, p[0], np.arctan2(p[1], p[0]) * r)
        q = np.where(on_cap, p[1] + 4 * r, p[2] + self.along_offset)
        return s, q, n


# --------------------------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------------------------


def _screen_rect(prim: _Primitive, xs: np.ndarray, ys: np.ndarray, ox: float) -> tuple[int, int, int, int]:
    """Row and column range (r0, r1, c0, c1) of the sorted ray grid ``xs`` x ``ys`` the primitive can hit."""
    corners = prim.corners
    if corners is None or np.any(corners[:, 2] <= _NEAR):
        return 0, ys.size, 0, xs.size
    px = (corners[:, 0] - ox) / corners[:, 2]
    py = corners[:, 1] / corners[:, 2]
    c0 = max(int(np.searchsorted(xs, px.min())) - 1, 0)
    c1 = min(int(np.searchsorted(xs, px.max())) + 1, xs.size)
    r0 = max(int(np.searchsorted(ys, py.min())) - 1, 0)
    r1 = min(int(np.searchsorted(ys, py.max())) + 1, ys.size)
    return r0, r1, c0, c1


def _trace_grid(
    prims: list[_Primitive], xs: np.ndarray, ys: np.ndarray, ox: float
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """Z-buffer of the ray grid ``(xs[j], ys[i], 1)`` from ``(ox, 0, 0)``.

    Returns (depth (len(ys), len(xs)) float32, primitive index int16 (-1 = nothing), each primitive's rect).
    """
    depth = np.full((ys.size, xs.size), np.inf, dtype=np.float32)
    ids = np.full((ys.size, xs.size), -1, dtype=np.int16)
    rects = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k, prim in enumerate(prims):
            rect = _screen_rect(prim, xs, ys, ox)
            rects.append(rect)
            r0, r1, c0, c1 = rect
            if r0 >= r1 or c0 >= c1:
                continue
            t = prim.intersect(ox, xs[None, c0:c1], ys[r0:r1, None])
            t = np.broadcast_to(t, (r1 - r0, c1 - c0))
            tile = depth[r0:r1, c0:c1]
            nearer = t < tile
            np.copyto(tile, t, where=nearer)
            np.copyto(ids[r0:r1, c0:c1], np.int16(k), where=nearer)
    return depth, ids, rects


def _trace_occlusion_rays(
    prims: list[_Primitive], xs: np.ndarray, ys: np.ndarray, shift: np.ndarray, ox: float
) -> np.ndarray:
    """Depth along rays ``(xs[j] - shift[i, j], ys[i], 1)`` from ``(ox, 0, 0)``, shape (len(ys), len(xs)).

    ``shift`` >= 0, so a primitive whose rays span ``[lo, hi]`` in x can only be met from the left-grid columns
    in ``[lo, hi + max(shift)]``; that bounds the tile each primitive is intersected with.
    """
    depth = np.full(shift.shape, np.inf, dtype=np.float32)
    extra = int(np.searchsorted(xs, xs[0] + float(shift.max()))) + 1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for prim in prims:
            r0, r1, c0, c1 = _screen_rect(prim, xs, ys, ox)
            c1 = min(c1 + extra, xs.size)
            if r0 >= r1 or c0 >= c1:
                continue
            t = prim.intersect(ox, xs[None, c0:c1] - shift[r0:r1, c0:c1], ys[r0:r1, None])
            tile = depth[r0:r1, c0:c1]
            np.minimum(tile, t, out=tile)
    return depth


@dataclass(frozen=True)
class _ShadowMap:
    """Depth of the first surface seen from a point light (a perspective z-buffer), for cast shadows.

    Shadows depend only on the 3-D point, never on the viewer, so both views agree on them exactly.
    """

    rotation: np.ndarray  # (3, 3): columns are the light frame's axes in camera coordinates
    position: np.ndarray  # (3,) light position in camera coordinates
    intr: _Intrinsics
    depth: np.ndarray  # (size, size) float32

    def lit(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
        """(N,) float32 in [0, 1]: how much light reaches the camera-frame points p (1 = fully lit)."""
        r, c = self.rotation, self.position
        qx, qy, qz = (
            float(r[0, i]) * (px - float(c[0]))
            + float(r[1, i]) * (py - float(c[1]))
            + float(r[2, i]) * (pz - float(c[2]))
            for i in range(3)
        )
        size = self.intr.width
        u = qx / qz * np.float32(self.intr.fx) + np.float32(self.intr.cx)
        v = qy / qz * np.float32(self.intr.fy) + np.float32(self.intr.cy)
        inside = (qz > _NEAR) & (u >= 0) & (u <= size - 1) & (v >= 0) & (v <= size - 1)
        fu, fv = np.floor(u), np.floor(v)
        wu, wv = u - fu, v - fv
        u0 = np.clip(fu, 0, size - 2).astype(np.intp)
        v0 = np.clip(fv, 0, size - 2).astype(np.intp)
        # Slack against self-shadowing ("acne"): a few texels' worth of depth plus a relative margin.
        limit = qz * np.float32(0.985) - np.float32(3.0) * qz / np.float32(self.intr.fx)
        flat = v0 * size + u0
        # Bilinearly weighted comparisons (percentage-closer filtering): a smooth penumbra one texel wide
        # instead of the texel staircase of a single comparison.
        seen = np.zeros(px.shape, dtype=np.float32)
        for offset, weight in (
            (0, (1 - wu) * (1 - wv)),
            (1, wu * (1 - wv)),
            (size, (1 - wu) * wv),
            (size + 1, wu * wv),
        ):
            seen += np.where(np.take(self.depth, flat + offset) >= limit, weight, np.float32(0))
        return np.where(inside, seen, np.float32(1.0))


def _shadow_map(prims: list[_Primitive], direction: np.ndarray, *, size: int = 512) -> _ShadowMap:
    """Renders the scene's depth from a point light far along ``direction`` (towards the light), aimed at
    the middle of the near scene where shadows are noticed; points outside its frustum count as lit."""
    target = np.array([0.0, 0.0, 4.0 * _Z_NEAR])
    position = target + direction * 14.0 * _Z_NEAR
    rotation = _frame_from_normal(-direction, 0.0)  # light looks along -direction
    fov = math.radians(100)
    f = size / 2 / math.tan(fov / 2)
    intr = _Intrinsics(f, f, (size - 1) / 2, (size - 1) / 2, size, size)
    in_light = [p.moved(rotation.T, -rotation.T @ position) for p in prims]
    depth = _trace_grid(in_light, intr.ray_x(size), intr.ray_y(size), 0.0)[0]
    return _ShadowMap(rotation, position, intr, depth)


@dataclass(frozen=True)
class _Lighting:
    direction: np.ndarray  # (3,) unit vector towards the light
    colour: np.ndarray  # (3,)
    ambient: float
    haze_distance: float  # inf = no haze
    haze_colour: np.ndarray  # (3,)
    cast_shadows: bool = False
    shadow: _ShadowMap | None = None  # built per frame from the primitives when cast_shadows


def _shade_rays(
    prims: list[_Primitive],
    x: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
    ids: np.ndarray,
    ox: float,
    *,
    focal: float,
    rig_centre: float,
    light: _Lighting,
) -> np.ndarray:
    """Linear RGB (3, N) float32 (one row per channel) of N rays ``(x, y, 1)`` from ``(ox, 0, 0)`` that hit
    primitive ``ids`` at depth ``t``; ``focal`` is the ray density (rays per unit of x), which sets each
    sample's mip level, and ``rig_centre`` the x of the point midway between the two cameras."""
    out = np.zeros((3, x.size), dtype=np.float32)
    order = np.argsort(ids, kind="stable")  # radix sort for int16
    bounds = np.searchsorted(ids[order], np.arange(len(prims) + 1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k, prim in enumerate(prims):
            sel = order[bounds[k] : bounds[k + 1]]
            if sel.size == 0:
                continue
            # np.take/np.put on 1-D arrays: several times faster than fancy indexing for these sizes.
            rgb = _shade_primitive(
                prim,
                np.take(x, sel),
                np.take(y, sel),
                np.take(t, sel),
                ox,
                focal=focal,
                rig_centre=rig_centre,
                light=light,
            )
            for c in range(3):
                np.put(out[c], sel, rgb[c])
    return out


def _shade_primitive(
    prim: _Primitive,
    x: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
    ox: float,
    *,
    focal: float,
    rig_centre: float,
    light: _Lighting,
) -> np.ndarray:
    """(3, N) linear RGB of one primitive's hits."""
    lx, ly, lz = (float(v) for v in light.direction)
    o = prim._origin(ox)
    dl = [prim._direction(i, x, y) for i in range(3)]
    p = (o[0] + t * dl[0], o[1] + t * dl[1], o[2] + t * dl[2])
    s, q, nl = prim.surface(o, p)
    rot = prim.rotation
    n = [float(rot[i, 0]) * nl[0] + float(rot[i, 1]) * nl[1] + float(rot[i, 2]) * nl[2] for i in range(3)]
    facing = n[0] * x + n[1] * y + n[2]
    # Surfaces are two-sided: the normal that faces the viewer is the one that is lit and seen.
    flip = np.where(facing > 0, np.float32(-1), np.float32(1))
    n = [ni * flip for ni in n]
    dnorm = np.sqrt(x * x + y * y + 1.0)
    # The mip level is measured from the rig's centre, not from this camera: a level picked per view would
    # flip at different points in the two views and break photo-consistency where the texture is busy.
    p_cam = (ox + t * x, t * y, t)
    vx, vy = p_cam[0] - rig_centre, p_cam[1]
    dist = np.sqrt(vx * vx + vy * vy + t * t)
    cos_view = np.abs(n[0] * vx + n[1] * vy + n[2] * t) / dist
    mat = prim.material
    ca, sa = math.cos(mat.angle), math.sin(mat.angle)
    inv_texel = 1.0 / mat.texel_size
    tu = (ca * s - sa * q) * inv_texel + mat.offset[0]
    tv = (sa * s + ca * q) * inv_texel + mat.offset[1]
    # Mip level from the ray footprint on the surface. Isotropic mip-mapping uses the long axis of the footprint
    # (blurry at grazing angles, as with a real lens) rather than the short one (aliasing moire).
    footprint = dist / (focal * np.maximum(cos_view, 0.05) * mat.texel_size)
    # +0.5 biases towards the blurrier level, like a real lens's MTF: detail right at Nyquist only aliases.
    level = np.log2(np.maximum(footprint, 1e-6)) + 0.5
    albedo = mat.texture.sample_planes(tu, tv, level)
    diffuse = np.maximum(n[0] * lx + n[1] * ly + n[2] * lz, 0)
    if light.shadow is not None:
        diffuse *= light.shadow.lit(p_cam[0], p_cam[1], p_cam[2])
    shade = light.ambient + (1 - light.ambient) * diffuse
    highlight = None
    if mat.specular > 0:
        # Blinn-Phong: the half vector depends on the viewing ray, so highlights differ between the views.
        hx, hy, hz = lx - x / dnorm, ly - y / dnorm, lz - 1.0 / dnorm
        hn = np.sqrt(hx * hx + hy * hy + hz * hz)
        ndoth = np.maximum((n[0] * hx + n[1] * hy + n[2] * hz) / hn, 0)
        highlight = mat.specular * ndoth**mat.shininess
    keep = np.exp(-(t * dnorm) / light.haze_distance) if math.isfinite(light.haze_distance) else None
    for c in range(3):
        rad = np.clip(albedo[c] * float(mat.gain[c]) + float(mat.bias[c]), 0.02, 0.95) * shade
        if highlight is not None:
            rad += highlight
        rad *= float(light.colour[c])
        if keep is not None:
            rad = rad * keep + float(light.haze_colour[c]) * (1 - keep)
        albedo[c] = rad
    return albedo


def _render_view(
    prims: list[_Primitive],
    intr: _Intrinsics,
    centre: tuple[np.ndarray, np.ndarray],
    ox: float,
    *,
    supersample: int,
    rig_centre: float,
    light: _Lighting,
) -> np.ndarray:
    """Anti-aliased linear RGB (H, W, 3) float32 of the view from ``(ox, 0, 0)``.

    ``centre`` is that view's pixel-centre z-buffer (depth, ids). Pixels whose ``supersample``^2 sub-rays all
    hit the centre ray's primitive at similar depth are shaded once from the centre ray (texture aliasing is
    handled by the mip level); only the others (silhouettes, thin structures, self-occlusion) are shaded per
    sub-ray and averaged. That is ~4x cheaper than shading every sub-ray and looks the same.
    """
    w, h, ss = intr.width, intr.height, supersample
    depth, ids = centre
    xs, ys = intr.ray_x(w), intr.ray_y(h)
    if ss == 1:
        edge = np.zeros((h, w), dtype=bool)
    else:
        xs_s, ys_s = intr.ray_x(w, supersample=ss), intr.ray_y(h, supersample=ss)
        depth_s, ids_s, _ = _trace_grid(prims, xs_s, ys_s, ox)
        # Strided slices instead of reductions over axes (1, 3): those are several times slower in numpy.
        edge = np.zeros((h, w), dtype=bool)
        d_lo = np.full((h, w), np.inf, dtype=np.float32)
        d_hi = np.zeros((h, w), dtype=np.float32)
        for i in range(ss):
            for j in range(ss):
                edge |= ids_s[i::ss, j::ss] != ids
                np.minimum(d_lo, depth_s[i::ss, j::ss], out=d_lo)
                np.maximum(d_hi, depth_s[i::ss, j::ss], out=d_hi)
        # Same primitive but a depth jump: an open curved panel seen over itself.
        edge |= (d_hi - d_lo) > 0.05 * depth
    image = np.empty((3, h * w), dtype=np.float32)
    inner = np.flatnonzero(~edge)
    rgb = _shade_rays(
        prims,
        np.take(xs, inner % w),
        np.take(ys, inner // w),
        np.take(depth, inner),
        np.take(ids, inner),
        ox,
        focal=intr.fx,
        rig_centre=rig_centre,
        light=light,
    )
    for c in range(3):
        np.put(image[c], inner, rgb[c])
    outer = np.flatnonzero(edge)
    if outer.size:
        sub = np.arange(ss)
        sr = ((outer // w)[:, None, None] * ss + sub[None, :, None]).repeat(ss, axis=2).ravel()
        sc = ((outer % w)[:, None, None] * ss + sub[None, None, :]).repeat(ss, axis=1).ravel()
        flat_s = sr * (w * ss) + sc
        rgb = _shade_rays(
            prims,
            np.take(xs_s, sc),
            np.take(ys_s, sr),
            np.take(depth_s, flat_s),
            np.take(ids_s, flat_s),
            ox,
            focal=intr.fx * ss,
            rig_centre=rig_centre,
            light=light,
        )
        mean = rgb.reshape(3, outer.size, ss * ss).mean(axis=2)
        for c in range(3):
            np.put(image[c], outer, mean[c])
    return np.ascontiguousarray(image.reshape(3, h, w).transpose(1, 2, 0))


# --------------------------------------------------------------------------------------------------------------
# Scene layout (scale-free units: the nearest content sits at depth ~_Z_NEAR)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def corner_rays(self) -> np.ndarray:
        u = np.array([-0.5, self.width - 0.5])
        v = np.array([-0.5, self.height - 0.5])
        uu, vv = np.meshgrid(u, v)
        return np.stack(
            [(uu.ravel() - self.cx) / self.fx, (vv.ravel() - self.cy) / self.fy, np.ones(4)], axis=1
        )

    def ray_x(self, n: int, *, supersample: int = 1) -> np.ndarray:
        u = (np.arange(n * supersample) + 0.5) / supersample - 0.5
        return ((u - self.cx) / self.fx).astype(np.float32)

    def ray_y(self, n: int, *, supersample: int = 1) -> np.ndarray:
        v = (np.arange(n * supersample) + 0.5) / supersample - 0.5
        return ((v - self.cy) / self.fy).astype(np.float32)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _frame_from_normal(normal: np.ndarray, spin: float) -> np.ndarray:
    """Rotation whose local z is ``normal``; ``spin`` turns the in-plane axes about it."""
    z = normal / np.linalg.norm(normal)
    helper = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(spin), math.sin(spin)
    return np.stack([c * x + s * y, -s * x + c * y, z], axis=1)


def _axis_rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


class _Layout:
    """Draws the primitives of one scene; every random decision goes through ``rng`` in a fixed order."""

    def __init__(self, rng: np.random.Generator, cfg: SceneConfig, intr: _Intrinsics) -> None:
        self.rng = rng
        self.cfg = cfg
        self.intr = intr
        self.photos = available_photos() if cfg.p_photo > 0 else ()
        self.prims: list[_Primitive] = []
        self.ground: tuple[np.ndarray, float] | None = None  # (unit normal pointing down, offset): n . p = c
        self.last_plane: tuple[np.ndarray, float] | None = None

    def pixel_size(self, depth: float) -> float:
        """Scene units covered by one pixel at ``depth``."""
        return depth / self.intr.fx

    def material(
        self, *, size: float, depth: float, flat_bias: float = 0.0, glossy_bias: float = 0.0
    ) -> _Material:
        rng, cfg = self.rng, self.cfg
        texture = random_texture(
            rng, p_photo=cfg.p_photo, p_flat=min(cfg.p_textureless + flat_bias, 1.0), photos=self.photos
        )
        tex_side = max(texture.shape)
        texel = size * _log_uniform(rng, 0.3, 3.0) / tex_side
        # Keep texels between ~1/3 px (finer detail only averages away) and ~3 px (coarser looks out of focus).
        texel = float(np.clip(texel, self.pixel_size(depth) / 3, self.pixel_size(depth) * 3))
        tint = 1.0 + rng.uniform(-0.25, 0.25, size=3)
        contrast = rng.uniform(0.6, 1.3)
        gain = (tint * contrast).astype(np.float32)
        bias = (rng.uniform(-0.1, 0.15) + rng.uniform(-0.03, 0.03, size=3)).astype(np.float32)
        glossy = rng.random() < min(cfg.p_specular + glossy_bias, 1.0)
        strength = float(rng.uniform(0.15, 0.7))  # drawn either way: the config must not reshuffle the layout
        return _Material(
            texture=texture,
            texel_size=texel,
            angle=float(rng.uniform(0, 2 * math.pi)),
            offset=(float(rng.uniform(0, 4096)), float(rng.uniform(0, 4096))),
            gain=gain,
            bias=bias,
            specular=strength if glossy else 0.0,
            shininess=float(_log_uniform(rng, 8, 120)),
        )

    def add_plane(self, normal: np.ndarray, min_depth: float, *, typical_depth: float) -> bool:
        """Adds the infinite plane with this normal (pointing away from the camera) whose nearest visible
        point is at ``min_depth``; returns False when it is not visible at all."""
        n = normal / np.linalg.norm(normal)
        reach = self.intr.corner_rays() @ n
        if reach.max() <= 1e-3:
            return False
        # Depth along a ray is c / (n . d); its minimum over the image is at a corner (1/depth is affine).
        c = float(reach.max()) * min_depth
        mat = self.material(size=typical_depth, depth=typical_depth)
        self.prims.append(_Plane(_frame_from_normal(n, self.rng.uniform(0, 2 * math.pi)), n * c, mat))
        self.last_plane = (n, c)
        return True

    def build(self) -> list[_Primitive]:
        rng, cfg = self.rng, self.cfg
        z_far = _log_uniform(rng, *cfg.depth_ratio) * _Z_NEAR
        # A fronto-parallel backstop: every ray has d_z = 1, so every pixel hits something (finite depth).
        self.add_plane(np.array([0.0, 0.0, 1.0]), 1.6 * z_far, typical_depth=1.6 * z_far)
        if rng.random() < cfg.p_slanted_background:
            tilt = _axis_rotation(1, rng.uniform(-0.6, 0.6)) @ _axis_rotation(0, rng.uniform(-0.3, 0.3))
            self.add_plane(
                tilt @ np.array([0.0, 0.0, 1.0]), rng.uniform(0.5, 1.0) * z_far, typical_depth=z_far
            )
        else:
            self.add_plane(np.array([0.0, 0.0, 1.0]), rng.uniform(0.7, 1.0) * z_far, typical_depth=z_far)
        roll = rng.uniform(-0.12, 0.12)
        if rng.random() < cfg.p_ground:
            pitch = rng.uniform(-0.05, 0.45)  # camera pitched down by this much (rad)
            down = _axis_rotation(2, roll) @ np.array([0.0, math.cos(pitch), math.sin(pitch)])
            if self.add_plane(
                down, _log_uniform(rng, 0.6, 3.0) * _Z_NEAR, typical_depth=rng.uniform(2, 6) * _Z_NEAR
            ):
                self.ground = self.last_plane
        for side in (-1.0, 1.0):
            if rng.random() < cfg.p_side_wall:
                yaw = rng.uniform(-0.5, 0.25)
                normal = _axis_rotation(2, roll) @ np.array([side * math.cos(yaw), 0.0, math.sin(yaw)])
                self.add_plane(normal, _log_uniform(rng, 0.8, 4.0), typical_depth=rng.uniform(2, 8) * _Z_NEAR)
        if rng.random() < cfg.p_ceiling:
            self.add_plane(
                np.array([0.0, -1.0, rng.uniform(0, 0.4)]),
                _log_uniform(rng, 1.0, 4.0),
                typical_depth=4 * _Z_NEAR,
            )

        kinds = [k for k in PRIMITIVE_KINDS if cfg.primitive_weights.get(k, 0) > 0]
        weights = np.array([cfg.primitive_weights[k] for k in kinds], dtype=np.float64)
        count = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1)) if kinds else 0
        builders: dict[str, Callable[..., None]] = {
            "box": self._box,
            "sphere": self._sphere,
            "cylinder": self._cylinder,
            "curved_panel": self._curved_panel,
            "plate": self._plate,
            "fence": self._fence,
            "wheel": self._wheel,
            "wires": self._wires,
            "bars": self._bars,
        }
        for _ in range(count):
            kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
            # Log-uniform depth: many objects at small-to-medium disparity, a few close ones.
            depth = _log_uniform(rng, 1.2 * _Z_NEAR, 0.8 * z_far)
            u = rng.uniform(-0.1, 1.1) * self.intr.width
            v = rng.uniform(-0.1, 1.1) * self.intr.height
            size = depth * _log_uniform(rng, 0.05, 0.5) * self.intr.width / self.intr.fx
            size = min(size, 1.6 * (depth - 0.8 * _Z_NEAR))  # keep the nearest surface beyond ~_Z_NEAR
            ray = np.array([(u - self.intr.cx) / self.intr.fx, (v - self.intr.cy) / self.intr.fy, 1.0])
            centre = ray * depth
            grounded = (
                rng.random() < cfg.p_grounded
            )  # drawn every time so the config never reshuffles layouts
            if grounded and self.ground is not None and kind in ("box", "sphere", "cylinder"):
                # Stand the object on the floor where this pixel's ray meets it (if it does, in range).
                normal, offset = self.ground
                reach = float(ray @ normal)
                t = offset / reach if reach > 1e-6 else math.inf
                if 1.5 * _Z_NEAR <= t <= 0.8 * z_far:
                    size = min(t * size / depth, 1.6 * (t - 0.8 * _Z_NEAR))
                    builders[kind](size, ray * t, t, up=-normal)
                    continue
            builders[kind](size, centre, depth)
        return self.prims

    # Foreground kinds; ``size`` is the rough extent in scene units at ``depth``.
    def _upright(self, up: np.ndarray) -> np.ndarray:
        return _frame_from_normal(up, self.rng.uniform(0, 2 * math.pi))

    def _box(self, size: float, centre: np.ndarray, depth: float, *, up: np.ndarray | None = None) -> None:
        half = tuple(float(v) for v in size / 2 * self.rng.uniform(0.25, 1.0, size=3))
        rot = _random_rotation(self.rng) if up is None else self._upright(up)
        if up is not None:
            centre = centre + up * half[2]
        self.prims.append(_Box(rot, centre, self.material(size=size, depth=depth), half=half))

    def _sphere(self, size: float, centre: np.ndarray, depth: float, *, up: np.ndarray | None = None) -> None:
        mat = self.material(size=size, depth=depth, glossy_bias=0.2)
        if up is not None:
            centre = centre + up * (size / 2)
        self.prims.append(_Sphere(_random_rotation(self.rng), centre, mat, radius=size / 2))

    def _cylinder(
        self, size: float, centre: np.ndarray, depth: float, *, up: np.ndarray | None = None
    ) -> None:
        rng = self.rng
        mat = self.material(size=size, depth=depth, glossy_bias=0.15)
        radius = size / 2 * rng.uniform(0.15, 0.6)
        half_length = size / 2 * rng.uniform(0.5, 1.5)
        rot = _random_rotation(rng) if up is None else self._upright(up)
        if up is not None:
            centre = centre + up * half_length
        self.prims.append(_Cylinder(rot, centre, mat, radius=radius, half_length=half_length))

    def _curved_panel(self, size: float, centre: np.ndarray, depth: float) -> None:
        rng = self.rng
        # Mostly upright axes: curved walls, drums, bent sheets.
        rot = _axis_rotation(0, math.pi / 2 + rng.uniform(-0.4, 0.4)) @ _axis_rotation(
            2, rng.uniform(0, 2 * math.pi)
        )
        self.prims.append(
            _Cylinder(
                rot,
                centre,
                self.material(size=size, depth=depth),
                radius=size * rng.uniform(0.4, 1.2),
                half_length=size / 2 * rng.uniform(0.4, 1.0),
                span=rng.uniform(0.4, 1.2) * math.pi,
                capped=False,
            )
        )

    def _facing_rotation(self, max_tilt: float) -> np.ndarray:
        rng = self.rng
        normal = (
            _axis_rotation(1, rng.uniform(-max_tilt, max_tilt))
            @ _axis_rotation(0, rng.uniform(-max_tilt, max_tilt))
            @ np.array([0.0, 0.0, -1.0])
        )
        return _frame_from_normal(normal, rng.uniform(0, 2 * math.pi))

    def _plate(self, size: float, centre: np.ndarray, depth: float) -> None:
        rng = self.rng
        half = (size / 2 * rng.uniform(0.4, 1.0), size / 2 * rng.uniform(0.4, 1.0))
        mat = self.material(size=size, depth=depth, flat_bias=0.05)
        self.prims.append(_Plane(self._facing_rotation(1.2), centre, mat, half_extent=half))

    def _thin(self, depth: float, pixels: tuple[float, float]) -> float:
        """A width of ``pixels`` (sampled range) at ``depth``: keeps thin structures resolvable (>~0.7 px)."""
        return self.pixel_size(depth) * self.rng.uniform(*pixels)

    def _fence(self, size: float, centre: np.ndarray, depth: float) -> None:
        rng = self.rng
        size *= rng.uniform(1.0, 2.5)
        half = (size / 2, size / 2 * rng.uniform(0.3, 0.8))
        pattern = ("fence", "lattice", "diamond", "holes")[int(rng.integers(4))]
        width = self._thin(depth, (0.8, 6.0))
        period = width * rng.uniform(2.5, 8.0)
        params = {"period": period, "width": width, "rail": width, "radius": period * rng.uniform(0.25, 0.45)}
        # Upright more often than not: fences, railings, grilles.
        rot = (
            self._facing_rotation(0.9)
            if rng.random() < 0.4
            else _frame_from_normal(np.array([rng.uniform(-0.8, 0.8), 0.0, -1.0]), 0.0)
        )
        mat = self.material(size=size, depth=depth, flat_bias=0.15, glossy_bias=0.2)
        self.prims.append(_Plane(rot, centre, mat, half_extent=half, pattern=pattern, params=params))

    def _wheel(self, size: float, centre: np.ndarray, depth: float) -> None:
        rng = self.rng
        radius = size / 2
        width = self._thin(depth, (0.7, 4.0))
        params = {
            "spokes": float(rng.integers(3, 40)),
            "width": width,
            "rim": max(radius * rng.uniform(0.04, 0.25), 1.5 * width),
            "hub": radius * rng.uniform(0.05, 0.3),
        }
        mat = self.material(size=size, depth=depth, flat_bias=0.15, glossy_bias=0.3)
        self.prims.append(
            _Plane(
                self._facing_rotation(1.1),
                centre,
                mat,
                half_extent=(radius, radius),
                pattern="wheel",
                params=params,
            )
        )

    def _wires(self, size: float, centre: np.ndarray, depth: float) -> None:
        rng = self.rng
        length = size * rng.uniform(3.0, 10.0)
        direction = np.array([math.cos(a := rng.uniform(0, math.pi)), math.sin(a), rng.uniform(-0.5, 0.5)])
        rot = _frame_from_normal(direction, rng.uniform(0, 2 * math.pi))
        spacing = self._thin(depth, (4.0, 30.0))
        offset_axis = rot[:, 0]
        mat = self.material(size=size, depth=depth, flat_bias=0.25, glossy_bias=0.2)
        for i in range(int(rng.integers(1, 4))):
            radius = self._thin(depth, (0.35, 2.0))
            self._long_cylinder(
                rot, centre + i * spacing * offset_axis, mat, radius=radius, length=length, capped=False
            )

    def _long_cylinder(
        self,
        rot: np.ndarray,
        centre: np.ndarray,
        mat: _Material,
        *,
        radius: float,
        length: float,
        capped: bool,
    ) -> None:
        """A long thin cylinder as a chain of short ones. Screen-space culling works on bounding rectangles,
        and a diagonal wire's rectangle is most of the image; its pieces' rectangles are thin strips."""
        pieces = int(np.clip(length / (24 * radius), 1, 8))
        piece = length / pieces
        for k in range(pieces):
            along = (k + 0.5) * piece - length / 2
            self.prims.append(
                _Cylinder(
                    rot,
                    centre + along * rot[:, 2],
                    mat,
                    radius=radius,
                    half_length=piece / 2,
                    capped=capped,
                    along_offset=along,
                )
            )

    def _bars(self, size: float, centre: np.ndarray, depth: float) -> None:
        rng = self.rng
        rot = self._facing_rotation(0.8) @ _axis_rotation(
            2, rng.choice([0.0, math.pi / 2]) + rng.uniform(-0.2, 0.2)
        )
        count = int(rng.integers(3, 14))
        thick = self._thin(depth, (0.8, 8.0))
        spacing = thick * rng.uniform(1.8, 6.0)
        length = size * rng.uniform(1.0, 3.0)
        mat = self.material(size=size, depth=depth, flat_bias=0.15, glossy_bias=0.25)
        round_bars = rng.random() < 0.5
        for i in range(count):
            c = centre + (i - count / 2) * spacing * rot[:, 0]
            if round_bars:
                bar_rot = rot @ _axis_rotation(0, math.pi / 2)  # cylinder axis along the rack's local y
                self._long_cylinder(bar_rot, c, mat, radius=thick / 2, length=length, capped=True)
            else:
                # Split like _long_cylinder; the inner faces of the pieces lie inside the bar, never seen.
                pieces = int(np.clip(length / (8 * thick), 1, 4))
                piece = length / pieces
                for k in range(pieces):
                    along = (k + 0.5) * piece - length / 2
                    self.prims.append(
                        _Box(
                            rot,
                            c + along * rot[:, 1],
                            mat,
                            half=(thick / 2, piece / 2, thick / 2),
                            along_offset=along,
                        )
                    )


# --------------------------------------------------------------------------------------------------------------
# Camera, photometry, rendering
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Photometry:
    exposure: tuple[float, float]  # left, right gain
    white_balance: tuple[np.ndarray, np.ndarray]  # per-view (3,) channel gains
    gamma: tuple[float, float]
    vignetting: tuple[float, float]
    noise_sigma: tuple[float, float]  # grey levels, per view
    blur_sigma: float


def _sample_photometry(rng: np.random.Generator, cfg: SceneConfig) -> _Photometry:
    base = rng.uniform(0.7, 1.0)  # relative to auto-exposure
    j = cfg.exposure_jitter
    gamma = rng.uniform(0.85, 1.15)
    vig = rng.uniform(0.0, 0.12)  # corner fall-off; real rectified pairs show a few percent
    return _Photometry(
        exposure=(base * (1 + rng.uniform(-j, j) / 2), base * (1 + rng.uniform(-j, j) / 2)),
        white_balance=(1 + rng.uniform(-0.01, 0.01, size=3), 1 + rng.uniform(-0.01, 0.01, size=3)),
        gamma=(gamma * (1 + rng.uniform(-0.01, 0.01)), gamma * (1 + rng.uniform(-0.01, 0.01))),
        vignetting=(vig * rng.uniform(0.9, 1.1), vig * rng.uniform(0.9, 1.1)),
        noise_sigma=(rng.uniform(*cfg.noise_sigma), rng.uniform(*cfg.noise_sigma)),
        blur_sigma=float(rng.uniform(*cfg.blur_sigma)),
    )


def _sample_lighting(rng: np.random.Generator, z_scale: float, p_haze: float, p_shadows: float) -> _Lighting:
    direction = np.array([rng.uniform(-1, 1), rng.uniform(-1.0, -0.2), rng.uniform(-0.9, 0.3)])
    hazy = rng.random()
    shadows = rng.random()
    return _Lighting(
        direction=direction / np.linalg.norm(direction),
        colour=(1 + rng.uniform(-0.06, 0.06, size=3)).astype(np.float32),
        ambient=float(rng.uniform(0.15, 0.5)),
        haze_distance=float(z_scale * rng.uniform(0.7, 4.0)) if hazy < p_haze else math.inf,
        haze_colour=(rng.uniform(0.55, 0.85) + rng.uniform(-0.05, 0.05, size=3)).astype(np.float32),
        cast_shadows=bool(shadows < p_shadows),
    )


def _intrinsics(
    rng: np.random.Generator, cfg: SceneConfig, width: int, height: int, camera: StereoCamera | None
) -> _Intrinsics:
    if camera is not None:
        return _Intrinsics(camera.fx, camera.fy, camera.cx, camera.cy, width, height)
    fov = math.radians(rng.uniform(*cfg.horizontal_fov_deg))
    fx = width / 2 / math.tan(fov / 2)
    return _Intrinsics(
        fx=fx,
        fy=fx * rng.uniform(0.99, 1.01),
        cx=(width - 1) / 2 + rng.uniform(-0.03, 0.03) * width,
        cy=(height - 1) / 2 + rng.uniform(-0.03, 0.03) * height,
        width=width,
        height=height,
    )


def _finish(
    linear: np.ndarray, view: int, look: _Photometry, intr: _Intrinsics, rng: np.random.Generator
) -> np.ndarray:
    """Camera response of one view: exposure, white balance, vignetting, gamma, blur, noise, 8-bit quantization."""
    h, w = linear.shape[:2]
    img = linear * np.float32(look.exposure[view]) * look.white_balance[view].astype(np.float32)
    if look.vignetting[view] > 0:
        u = (np.arange(w, dtype=np.float32) - intr.cx) / intr.fx
        v = (np.arange(h, dtype=np.float32) - intr.cy) / intr.fy
        r2 = u[None, :] ** 2 + v[:, None] ** 2
        img *= (1 - look.vignetting[view] * np.minimum(r2, 1.5))[..., None]
    # Tone curve through a 12-bit lookup table (np.power on every sample costs ~4x more).
    levels = np.float32(_TONE_LUT_SIZE - 1)
    lut = (np.linspace(0, 1, _TONE_LUT_SIZE, dtype=np.float32) ** np.float32(1 / look.gamma[view])) * 255
    codes = (np.clip(img, 0, 1) * levels + np.float32(0.5)).astype(np.uint16)
    img = np.take(lut, codes)
    if look.blur_sigma > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), look.blur_sigma)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(look.noise_sigma[view])
    return np.clip(img + np.float32(0.5), 0, 255).astype(np.uint8)


def _render(
    prims: list[_Primitive],
    intr: _Intrinsics,
    *,
    baseline_units: float,
    metres_per_unit: float,
    light: _Lighting,
    look: _Photometry,
    supersample: int,
    noise_rng: np.random.Generator,
    left: tuple[np.ndarray, np.ndarray] | None = None,
    right: tuple[np.ndarray, np.ndarray] | None = None,
) -> ProceduralScene:
    """Renders both views of ``prims`` (scene units, left camera frame); ``left``/``right`` are the
    pixel-centre z-buffers (depth, ids) when the caller already traced them."""
    w, h = intr.width, intr.height
    xs, ys = intr.ray_x(w), intr.ray_y(h)
    if left is None:
        left = _trace_grid(prims, xs, ys, 0.0)[:2]
    if right is None:
        right = _trace_grid(prims, xs, ys, baseline_units)[:2]
    left_depth, right_depth = left[0], right[0]
    if light.cast_shadows and light.shadow is None:
        light = dataclasses.replace(light, shadow=_shadow_map(prims, light.direction))
    # Occlusion: cast the right camera's ray through every left pixel's 3-D point. It reaches that point unless
    # something nearer is in the way; the ray (x - b/z, y, 1) from (b, 0, 0) is exactly that line.
    disp_units = intr.fx * baseline_units / left_depth
    seen_depth = _trace_occlusion_rays(prims, xs, ys, np.float32(baseline_units) / left_depth, baseline_units)
    u_right = np.arange(w, dtype=np.float32)[None, :] - disp_units
    occlusion = (seen_depth < left_depth * (1 - _OCCLUSION_RTOL)) | (u_right < -0.5) | (u_right > w - 0.5)

    linear = [
        _render_view(
            prims, intr, centre, ox, supersample=supersample, rig_centre=baseline_units / 2, light=light
        )
        for ox, centre in ((0.0, left), (baseline_units, right))
    ]
    # Auto-exposure as a camera pair would do it: one gain, metered on the left view's highlights.
    meter = float(np.percentile(linear[0][::4, ::4].mean(axis=2), 98))
    gain = 1.0 / max(meter, 0.05)
    views = [_finish(img * np.float32(gain), view, look, intr, noise_rng) for view, img in enumerate(linear)]

    baseline = baseline_units * metres_per_unit
    depth = (left_depth * np.float32(metres_per_unit)).astype(np.float32)
    depth_right = (right_depth * np.float32(metres_per_unit)).astype(np.float32)
    camera = StereoCamera(
        fx=intr.fx, fy=intr.fy, cx=intr.cx, cy=intr.cy, baseline=baseline, doffs=0.0, width=w, height=h
    )
    return ProceduralScene(
        left=views[0],
        right=views[1],
        depth=depth,
        disparity=depth_to_disparity(depth, intr.fx, baseline),
        disparity_right=depth_to_disparity(depth_right, intr.fx, baseline),
        occlusion=occlusion,
        camera=camera,
    )


def _check_request(width: int, height: int, max_disparity: float, camera: StereoCamera | None) -> None:
    if not (isinstance(width, int) and isinstance(height, int) and width >= 8 and height >= 8):
        raise ValueError(f"width and height must be ints >= 8, instead got {width!r} x {height!r}")
    if not (np.isfinite(max_disparity) and max_disparity >= 1):
        raise ValueError(f"max_disparity must be a finite number >= 1 px, instead got {max_disparity}")
    if max_disparity > width:
        raise ValueError(f"max_disparity {max_disparity} exceeds the image width {width}")
    if camera is not None:
        if camera.doffs != 0:
            raise ValueError(f"procedural scenes use doffs = 0; the given camera has doffs = {camera.doffs}")
        if (camera.width, camera.height) not in ((0, 0), (width, height)):
            raise ValueError(
                f"camera is {camera.width} x {camera.height} but the requested image is {width} x {height}; "
                "pass camera.scaled(...) or matching width/height"
            )


def _baseline_for(nearest_depth: float, target_disparity: float, fx: float) -> float:
    return target_disparity * nearest_depth / fx


def render_scene(
    seed: int,
    *,
    width: int = 640,
    height: int = 480,
    max_disparity: float = 192.0,
    camera: StereoCamera | None = None,
    config: SceneConfig | None = None,
) -> ProceduralScene:
    """Renders the procedural stereo scene number ``seed`` (same seed and arguments -> identical arrays).

    Args:
        seed: scene identity; any non-negative int.
        width, height: image size in pixels.
        max_disparity: upper bound of the left disparity; the scene's largest disparity is a random fraction
            (``config.max_disparity_fraction``) of it, and the right-view disparity respects it too.
        camera: fixed rig (``fx, fy, cx, cy, baseline``; ``doffs`` must be 0). Without it, focal length,
            principal point and baseline are random. The scene is scaled to fit the disparity range either way.
        config: scene distribution; ``SceneConfig()`` by default.

    Returns:
        A :class:`ProceduralScene` (H x W arrays as documented there).
    """
    cfg = config if config is not None else SceneConfig()
    _check_request(width, height, max_disparity, camera)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, instead got {seed}")
    rng = np.random.default_rng([seed, 0x5CE7E])
    intr = _intrinsics(rng, cfg, width, height, camera)
    prims = _Layout(rng, cfg, intr).build()
    light = _sample_lighting(rng, 10 * _Z_NEAR, cfg.p_haze, cfg.p_shadows)
    look = _sample_photometry(rng, cfg)
    target = rng.uniform(*cfg.max_disparity_fraction) * max_disparity
    metric_baseline = camera.baseline if camera is not None else _log_uniform(rng, *cfg.baseline_m)
    noise_rng = np.random.default_rng([seed, 0x401E])

    xs, ys = intr.ray_x(width), intr.ray_y(height)
    left = _trace_grid(prims, xs, ys, 0.0)[:2]
    b = _baseline_for(float(left[0].min()), target, intr.fx)
    # The right camera can see a point nearer than anything the left one sees; shrink the baseline if so.
    for _ in range(3):
        right = _trace_grid(prims, xs, ys, b)[:2]
        worst = intr.fx * b / float(right[0].min())
        if worst <= max_disparity:
            break
        b *= 0.999 * max_disparity / worst
    return _render(
        prims,
        intr,
        baseline_units=b,
        metres_per_unit=metric_baseline / b,
        light=light,
        look=look,
        supersample=cfg.supersample,
        noise_rng=noise_rng,
        left=left,
        right=right,
    )


def render_sequence(
    seed: int,
    *,
    num_frames: int,
    width: int = 640,
    height: int = 480,
    max_disparity: float = 192.0,
    camera: StereoCamera | None = None,
    config: SceneConfig | None = None,
    motion: float = 1.0,
) -> Iterator[ProceduralScene]:
    """Yields ``num_frames`` views of scene ``seed`` from a smoothly moving rig (for demos and replay).

    The rig (focal length, baseline) and the scene stay fixed; the camera sways sideways and up/down, turns
    slightly and dollies back and forth along a smooth path that loops every 120 frames (4 s at 30 Hz) and
    whose size scales with ``motion`` (0 = static).
    The baseline is chosen so that every frame's disparity stays within ``max_disparity``; each frame has
    fresh sensor noise, so consecutive frames differ like a real video even when static.
    """
    cfg = config if config is not None else SceneConfig()
    _check_request(width, height, max_disparity, camera)
    if not (isinstance(num_frames, int) and num_frames >= 1):
        raise ValueError(f"num_frames must be an int >= 1, instead got {num_frames!r}")
    if not (np.isfinite(motion) and motion >= 0):
        raise ValueError(f"motion must be a finite number >= 0, instead got {motion}")
    rng = np.random.default_rng([seed, 0x5CE7E])
    intr = _intrinsics(rng, cfg, width, height, camera)
    world = _Layout(rng, cfg, intr).build()
    light = _sample_lighting(rng, 10 * _Z_NEAR, cfg.p_haze, cfg.p_shadows)
    look = _sample_photometry(rng, cfg)
    target = rng.uniform(*cfg.max_disparity_fraction) * max_disparity
    metric_baseline = camera.baseline if camera is not None else _log_uniform(rng, *cfg.baseline_m)
    phases = rng.uniform(0, 2 * math.pi, size=4)
    cycles = rng.integers(1, 3, size=4)  # whole cycles per period: the path loops seamlessly

    def pose(i: int) -> tuple[np.ndarray, np.ndarray]:
        tau = i / _SEQUENCE_PERIOD
        wave = np.sin(2 * math.pi * cycles * tau + phases) - np.sin(phases)  # 0 at the first frame
        dolly = -0.15 * (1 - math.cos(2 * math.pi * tau))  # backwards only, so nothing comes nearer
        translation = motion * _Z_NEAR * np.array([0.25 * wave[0], 0.08 * wave[1], dolly])
        rotation = _axis_rotation(1, motion * 0.06 * wave[2]) @ _axis_rotation(0, motion * 0.03 * wave[3])
        return rotation, translation

    def frame_prims(i: int) -> list[_Primitive]:
        rot, trans = pose(i)
        # World -> camera of frame i: p_cam = R^T (p - T).
        return [p.moved(rot.T, -rot.T @ trans) for p in world]

    # Fix one baseline for the whole sequence from the nearest point any frame sees (coarse 1/4 scale preview;
    # the 0.95 margin covers detail the preview misses between its rays).
    preview = _Intrinsics(
        intr.fx / 4,
        intr.fy / 4,
        (intr.cx + 0.5) / 4 - 0.5,
        (intr.cy + 0.5) / 4 - 0.5,
        max(width // 4, 2),
        max(height // 4, 2),
    )
    nearest = min(
        float(
            _trace_grid(frame_prims(i), preview.ray_x(preview.width), preview.ray_y(preview.height), 0.0)[
                0
            ].min()
        )
        for i in range(min(num_frames, _SEQUENCE_PERIOD))
    )
    b = _baseline_for(nearest, 0.95 * target, intr.fx)
    for i in range(num_frames):
        prims = frame_prims(i)
        # The light is fixed in the world, so it turns against the camera.
        frame_light = dataclasses.replace(light, direction=pose(i)[0].T @ light.direction)
        noise_rng = np.random.default_rng([seed, 0x401E, i])
        scene = _render(
            prims,
            intr,
            baseline_units=b,
            metres_per_unit=metric_baseline / b,
            light=frame_light,
            look=look,
            supersample=cfg.supersample,
            noise_rng=noise_rng,
        )
        yield scene
