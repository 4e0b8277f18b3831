"""Visualization: colour maps for disparity / depth / error, labelled contact sheets, PNG and PLY writers.

Everything takes and returns RGB ``uint8`` images (``H x W x 3``); the BGR order OpenCV uses internally
never leaks out. The colour map is OpenCV's Turbo (``cv2.COLORMAP_TURBO``): perceptually smoother than Jet
and the look RViz / Foxglove users already read as "near = red, far = blue".
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .arrays import fill_masked

__all__ = [
    "colorize_disparity",
    "colorize_depth",
    "colorize_error",
    "contact_sheet",
    "save_png",
    "write_ply",
]

Color = tuple[int, int, int]


def _check_color(color: Sequence[int], *, name: str) -> np.ndarray:
    arr = np.asarray(color)
    if arr.shape != (3,) or not np.all((arr >= 0) & (arr <= 255)):
        raise ValueError(f"{name} must be an (R, G, B) triple of ints in [0, 255], instead got {color!r}")
    return arr.astype(np.uint8)


def _check_2d(array: np.ndarray, *, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H x W array, instead got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, instead got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=1)
def _turbo_lut() -> np.ndarray:
    """OpenCV's Turbo table in RGB order (256 x 1 x 3 uint8), a user colour map for ``cv2.applyColorMap``."""
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    lut = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    lut.setflags(write=False)
    return lut


def _turbo_index(index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Maps a ``uint8`` H x W index through the RGB Turbo table (into ``out`` when given)."""
    if out is not None and (out.shape != (*index.shape, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous {index.shape[0]} x {index.shape[1]} x 3 uint8 array")
    rgb = cv2.applyColorMap(index, _turbo_lut(), dst=out)
    if out is not None and rgb is not out:  # OpenCV reallocated: keep the caller's buffer authoritative
        out[...] = rgb
        return out
    return rgb


def _turbo(normalized: np.ndarray) -> np.ndarray:
    """Maps values in [0, 1] (H x W float) to RGB uint8 through OpenCV's Turbo table."""
    return _turbo_index(np.round(np.clip(normalized, 0.0, 1.0) * 255.0).astype(np.uint8))


def colorize_disparity(
    disp: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    invalid_color: Color = (0, 0, 0),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Colorizes an ``H x W`` disparity map to ``H x W x 3`` RGB uint8 (large disparity = near = red).

    ``vmin`` / ``vmax`` default to the range of the finite values, so pass the ground truth's range when
    comparing several maps side by side. Non-finite values (NaN holes, Middlebury's ``+inf``) get
    ``invalid_color``. ``out``: optional C-contiguous ``H x W x 3`` uint8 array written in place and returned
    (the stereo node passes the buffer its message carries).
    """
    d = _check_2d(disp, name="disparity")
    invalid = _check_color(invalid_color, name="invalid_color")
    finite = np.isfinite(d)
    if vmin is None:
        vmin = float(d[finite].min()) if finite.any() else 0.0
    if vmax is None:
        vmax = float(d[finite].max()) if finite.any() else 1.0
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ValueError(f"vmin and vmax must be finite, instead got vmin={vmin}, vmax={vmax}")
    span = max(float(vmax) - float(vmin), 1e-6)
    # In place on one float32 temporary, and no boolean indexing: the node colours a 640x480 map every frame
    # (0.6 ms this way, 2.2 ms with np.where and a boolean-mask assignment). Non-finite pixels get an
    # arbitrary index here and are overwritten with ``invalid_color`` below.
    with np.errstate(invalid="ignore", over="ignore"):
        index = np.subtract(d, np.float32(vmin), dtype=np.float32)
        index *= np.float32(255.0 / span)
        np.clip(index, 0.0, 255.0, out=index)
        index = np.rint(index, out=index).astype(np.uint8)
    return fill_masked(_turbo_index(index, out=out), ~finite, invalid)


def colorize_depth(
    depth: np.ndarray,
    *,
    min_depth: float,
    max_depth: float,
    invalid_color: Color = (0, 0, 0),
) -> np.ndarray:
    """Colorizes an ``H x W`` metric depth map to ``H x W x 3`` RGB uint8 (near = red, far = blue).

    The map is linear in *inverse* depth between ``1/max_depth`` and ``1/min_depth``: that is linear in
    disparity, so depth images and disparity images of the same scene look alike and near structure,
    where stereo is precise, gets most of the colour range. NaN, inf and non-positive depths are
    ``invalid_color`` (REP 118 invalid values).
    """
    if not (0 < min_depth < max_depth and np.isfinite(max_depth)):
        raise ValueError(
            f"need 0 < min_depth < max_depth < inf, instead got min_depth={min_depth}, max_depth={max_depth}"
        )
    z = _check_2d(depth, name="depth")
    valid = np.isfinite(z) & (z > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(valid, 1.0 / np.where(valid, z, 1.0), 0.0)
    lo, hi = 1.0 / max_depth, 1.0 / min_depth
    rgb = _turbo((inv - lo) / (hi - lo))
    rgb[~valid] = _check_color(invalid_color, name="invalid_color")
    return rgb


def colorize_error(
    err: np.ndarray,
    *,
    max_error: float,
    invalid_color: Color = (0, 0, 0),
    hole_color: Color = (255, 255, 255),
) -> np.ndarray:
    """Colorizes an ``H x W`` absolute-error map (pixels) to ``H x W x 3`` RGB uint8.

    0 is dark blue, ``max_error`` and above dark red. Two kinds of missing value are kept apart so an
    error image shows *why* a pixel is not scored: NaN (no ground truth) gets ``invalid_color``,
    ``+inf`` (ground truth exists but the method gave no prediction, a hole) gets ``hole_color``.
    """
    if not (np.isfinite(max_error) and max_error > 0):
        raise ValueError(f"max_error must be a positive finite number of pixels, instead got {max_error}")
    e = np.abs(_check_2d(err, name="error"))
    finite = np.isfinite(e)
    rgb = _turbo(np.where(finite, e, 0.0) / float(max_error))
    rgb[np.isnan(e)] = _check_color(invalid_color, name="invalid_color")
    rgb[np.isinf(e)] = _check_color(hole_color, name="hole_color")
    return rgb


def _as_rgb_tile(image: np.ndarray | None, *, where: str) -> np.ndarray | None:
    if image is None:
        return None
    img = np.asarray(image)
    if img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        raise ValueError(
            f"contact_sheet tile {where} must be uint8 (colorize float maps first), instead got dtype {img.dtype}"
        )
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 4:
        return img[..., :3]
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise ValueError(
        f"contact_sheet tile {where} must be H x W, H x W x 3 or H x W x 4, instead got {img.shape}"
    )


def _draw_label(tile: np.ndarray, text: str) -> None:
    """Writes ``text`` top-left on a dark box, in place, scaled to the tile width."""
    if not text:
        return
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, min(1.0, tile.shape[1] / 640.0))
    thickness = 1 if scale < 0.7 else 2
    (tw, th), baseline = cv2.getTextSize(text, font, scale, thickness)
    pad = 3
    cv2.rectangle(
        tile, (0, 0), (min(tw + 2 * pad, tile.shape[1] - 1), th + baseline + 2 * pad), (0, 0, 0), -1
    )
    cv2.putText(tile, text, (pad, th + pad), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray | None]],
    *,
    labels: Sequence[Sequence[str]] | None = None,
    tile_width: int = 320,
    gap: int = 2,
    background: Color = (32, 32, 32),
) -> np.ndarray:
    """Lays images out in a labelled grid; returns one RGB ``uint8`` image.

    ``rows[i][j]`` is a uint8 image (``H x W`` grey, ``H x W x 3`` RGB, ``H x W x 4`` RGBA, or a bool mask)
    or ``None`` for an empty cell. Every tile is resized to ``tile_width`` pixels wide keeping its aspect
    ratio; rows may have different lengths and heights (shorter cells are padded with ``background``).
    ``labels`` mirrors ``rows`` and is drawn top-left of each tile.
    """
    if tile_width < 16:
        raise ValueError(f"tile_width must be at least 16 pixels, instead got {tile_width}")
    if not rows or all(len(r) == 0 for r in rows):
        raise ValueError("contact_sheet needs at least one image, instead got no rows / empty rows")
    if labels is not None:
        if len(labels) != len(rows) or any(len(lr) != len(r) for lr, r in zip(labels, rows)):
            raise ValueError(
                "labels must have the same shape as rows, instead got "
                f"{[len(lr) for lr in labels]} labels for rows of {[len(r) for r in rows]} images"
            )
    bg = _check_color(background, name="background")
    n_cols = max(len(r) for r in rows)
    rendered_rows = []
    for i, row in enumerate(rows):
        tiles = []
        for j, image in enumerate(row):
            img = _as_rgb_tile(image, where=f"[{i}][{j}]")
            if img is None:
                tiles.append(None)
                continue
            h, w = img.shape[:2]
            if h == 0 or w == 0:
                raise ValueError(f"contact_sheet tile [{i}][{j}] is empty, shape {img.shape}")
            out_h = max(1, round(h * tile_width / w))
            interp = cv2.INTER_AREA if tile_width < w else cv2.INTER_LINEAR
            tile = np.ascontiguousarray(cv2.resize(img, (tile_width, out_h), interpolation=interp))
            if labels is not None:
                _draw_label(tile, str(labels[i][j]))
            tiles.append(tile)
        row_h = max((t.shape[0] for t in tiles if t is not None), default=tile_width // 2)
        canvas = np.empty((row_h, n_cols * tile_width + (n_cols - 1) * gap, 3), np.uint8)
        canvas[:] = bg
        for j, tile in enumerate(tiles):
            if tile is not None:
                x0 = j * (tile_width + gap)
                canvas[: tile.shape[0], x0 : x0 + tile_width] = tile
        rendered_rows.append(canvas)
    total_h = sum(r.shape[0] for r in rendered_rows) + gap * (len(rendered_rows) - 1)
    sheet = np.empty((total_h, rendered_rows[0].shape[1], 3), np.uint8)
    sheet[:] = bg
    y = 0
    for r in rendered_rows:
        sheet[y : y + r.shape[0]] = r
        y += r.shape[0] + gap
    return sheet


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    # Write to a sibling temp file then rename: readers (a web viewer, a CI artifact upload) never see a
    # half-written file, and a crash leaves the previous version in place.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Writes an RGB (``H x W x 3``) or grey (``H x W``) uint8/uint16 image as PNG, atomically.

    Parent directories are created. Returns the path written.
    """
    path = Path(path)
    img = np.asarray(rgb)
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"save_png({path}) needs a uint8 or uint16 image, instead got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    elif img.ndim != 2:
        raise ValueError(
            f"save_png({path}) needs H x W, H x W x 3 or H x W x 4, instead got shape {img.shape}"
        )
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise OSError(f"OpenCV failed to encode a {img.shape} {img.dtype} image as PNG for {path}")
    _atomic_write_bytes(path, buf.tobytes())
    return path


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None) -> int:
    """Writes a binary little-endian PLY point cloud (float32 x, y, z; optional uint8 red, green, blue).

    ``points`` is ``N x 3`` or ``H x W x 3`` (e.g. ``StereoCamera.reproject`` output); ``colors`` has the
    same leading shape with 3 uint8 channels (RGB). Points with any non-finite coordinate are dropped.
    Returns the number of points written. The file is written atomically.
    """
    path = Path(path)
    pts = np.asarray(points)
    if pts.ndim < 2 or pts.shape[-1] != 3:
        raise ValueError(
            f"write_ply({path}): points must be N x 3 or H x W x 3, instead got shape {pts.shape}"
        )
    pts = pts.reshape(-1, 3).astype(np.float32, copy=False)
    keep = np.isfinite(pts).all(axis=1)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    cols = None
    if colors is not None:
        cols = np.asarray(colors)
        if cols.shape != np.asarray(points).shape:
            raise ValueError(
                f"write_ply({path}): colors must have the points' shape {np.asarray(points).shape}, "
                f"instead got {cols.shape}"
            )
        if cols.dtype != np.uint8:
            raise ValueError(f"write_ply({path}): colors must be uint8 RGB, instead got dtype {cols.dtype}")
        cols = cols.reshape(-1, 3)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    n = int(keep.sum())
    vertices = np.empty(n, dtype=np.dtype(fields))
    vertices["x"], vertices["y"], vertices["z"] = pts[keep].T
    if cols is not None:
        vertices["red"], vertices["green"], vertices["blue"] = cols[keep].T
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment written by mono2stereo_core.viz",
        f"element vertex {n}",
    ]
    header += ["property float x", "property float y", "property float z"]
    if cols is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header.append("end_header")
    _atomic_write_bytes(path, ("\n".join(header) + "\n").encode("ascii") + vertices.tobytes())
    return n
