"""Rectified stereo camera model: disparity <-> depth, reprojection to 3-D, point clouds.

Conventions (same as stereo_image_proc / image_geometry):
- ``disparity`` is the left-view disparity in pixels, ``x_left - x_right`` (positive for points in front).
- ``doffs`` is the difference of the principal points ``cx_right - cx_left`` (Middlebury's ``doffs``);
  for ROS CameraInfo pairs it is ``P_right[0,2] - P_left[0,2]``. Depth is ``Z = f * B / (d + doffs)``.
- The baseline ``B`` is in metres and positive; a ROS right CameraInfo has ``P[0,3] = -fx * B``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import fill_masked


@dataclass(frozen=True)
class StereoCamera:
    """Pinhole model of a rectified stereo pair, expressed in the left camera's optical frame."""

    fx: float
    fy: float
    cx: float
    cy: float
    baseline: float
    doffs: float = 0.0
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.fx) and self.fx > 0):
            raise ValueError(f"focal length fx must be a positive finite number, instead got {self.fx}")
        if not (np.isfinite(self.fy) and self.fy > 0):
            raise ValueError(f"focal length fy must be a positive finite number, instead got {self.fy}")
        if not (np.isfinite(self.baseline) and self.baseline > 0):
            raise ValueError(f"baseline must be a positive finite number of metres, instead got {self.baseline}")

    @classmethod
    def from_projection(cls, p_left, p_right, *, width: int = 0, height: int = 0) -> StereoCamera:
        """Builds the model from the two 3x4 projection matrices of a rectified CameraInfo pair."""
        pl = np.asarray(p_left, dtype=np.float64).reshape(3, 4)
        pr = np.asarray(p_right, dtype=np.float64).reshape(3, 4)
        fx = float(pr[0, 0])
        if fx <= 0 or not np.isfinite(fx):
            raise ValueError(f"right projection matrix has focal length P[0]={fx}; a rectified camera needs > 0")
        baseline = -float(pr[0, 3]) / fx
        if not baseline > 0:
            raise ValueError(
                f"right CameraInfo P[3] = {pr[0, 3]} gives baseline {baseline} m; expected P[3] = -fx*B with B > 0 "
                "(is the pair swapped, or the right camera_info unrectified?)"
            )
        return cls(
            fx=float(pl[0, 0]),
            fy=float(pl[1, 1]),
            cx=float(pl[0, 2]),
            cy=float(pl[1, 2]),
            baseline=baseline,
            doffs=float(pr[0, 2] - pl[0, 2]),
            width=width,
            height=height,
        )

    def scaled(self, sx: float, sy: float) -> StereoCamera:
        """The same rig seen at an image resized by (sx, sy) (pixel-centre convention)."""
        return StereoCamera(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            baseline=self.baseline,
            doffs=self.doffs * sx,
            width=round(self.width * sx),
            height=round(self.height * sy),
        )

    @property
    def focal_baseline(self) -> float:
        return self.fx * self.baseline

    def disparity_to_depth(self, disparity: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        return disparity_to_depth(disparity, self.fx, self.baseline, doffs=self.doffs, out=out)

    def depth_to_disparity(self, depth: np.ndarray) -> np.ndarray:
        return depth_to_disparity(depth, self.fx, self.baseline, doffs=self.doffs)

    def reproject(self, disparity: np.ndarray) -> np.ndarray:
        """H x W x 3 float32 points (x right, y down, z forward, metres); NaN where disparity is invalid."""
        depth = self.disparity_to_depth(disparity)
        return depth_to_points(depth, self.fx, self.fy, self.cx, self.cy)


def disparity_to_depth(
    disparity: np.ndarray, focal: float, baseline: float, *, doffs: float = 0.0, out: np.ndarray | None = None
) -> np.ndarray:
    """Metric depth ``f*B/(d+doffs)``; NaN where the disparity is not finite or ``d + doffs <= 0`` (REP 118).

    ``out``: optional float32 array of the disparity's shape to write into (the stereo node passes the buffer
    its depth message carries); returned.
    """
    depth = np.add(np.asarray(disparity, dtype=np.float32), np.float32(doffs), out=out, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        np.divide(np.float32(focal * baseline), depth, out=depth)
        # After the division: d + doffs <= 0 gives depth <= 0 (or -inf / +inf for -0 / +0), a non-finite
        # d + doffs gives 0 or NaN, so the valid depths are exactly those in (0, inf).
        return fill_masked(depth, ~((depth > 0) & (depth < np.inf)), np.nan)


def depth_to_disparity(depth: np.ndarray, focal: float, baseline: float, *, doffs: float = 0.0) -> np.ndarray:
    """Disparity ``f*B/Z - doffs``; NaN where depth is not finite or not positive."""
    z = np.asarray(depth, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.float32(focal * baseline) / z - np.float32(doffs)
    disp[~(np.isfinite(z) & (z > 0))] = np.nan
    return disp


def depth_to_points(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Back-projects an H x W depth map to H x W x 3 points in the optical frame (NaN stays NaN)."""
    z = np.asarray(depth, dtype=np.float32)
    h, w = z.shape
    u = np.arange(w, dtype=np.float32)[None, :]
    v = np.arange(h, dtype=np.float32)[:, None]
    x = (u - np.float32(cx)) / np.float32(fx) * z
    y = (v - np.float32(cy)) / np.float32(fy) * z
    return np.stack([x, y, z], axis=-1)


# Middlebury 2014 "motorcycle" calibration, as shipped by skimage.data.stereo_motorcycle() (mm -> m).
MOTORCYCLE_CAMERA = StereoCamera(
    fx=994.978, fy=994.978, cx=311.193, cy=254.877, baseline=0.193001, doffs=31.086, width=741, height=500
)
