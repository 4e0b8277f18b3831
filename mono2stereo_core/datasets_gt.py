"""Stereo datasets with ground-truth disparity: Middlebury 2014, KITTI 2012 / 2015, the bundled motorcycle.

Every loader yields :class:`GTSample` with RGB ``uint8`` ``H x W x 3`` images and an ``H x W`` float32
left disparity in pixels, **NaN where the ground truth is unknown** (Middlebury's ``+inf``, KITTI's 0).

Layouts recognized by :func:`load_gt_folder` (checked in this order):

- a Middlebury-2014 scene folder: ``im0.png``, ``im1.png``, ``disp0GT.pfm`` (or ``disp0.pfm``), ``calib.txt``;
- a folder whose sub-folders are such scenes (sorted by name);
- KITTI 2015: ``image_2/``, ``image_3/``, ``disp_occ_0/`` (optional ``calib_cam_to_cam/``);
- KITTI 2012: ``colored_0/``, ``colored_1/``, ``disp_occ/`` (optional ``calib/``);
- either KITTI layout one level down in ``training/`` (the archives' own layout).

Samples load lazily, one scene at a time, so a whole benchmark never sits in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .geometry import MOTORCYCLE_CAMERA, StereoCamera

__all__ = [
    "GTSample",
    "GTDataset",
    "load_gt_dataset",
    "load_gt_folder",
    "load_middlebury_scene",
    "load_motorcycle",
    "load_aloe",
    "ALOE_DIR",
    "read_middlebury_calib",
    "write_middlebury_scene",
    "read_pfm",
    "write_pfm",
    "read_kitti_disparity",
]


@dataclass(frozen=True)
class GTSample:
    """One rectified stereo pair with ground truth (``disparity`` NaN where unknown)."""

    name: str
    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray
    camera: StereoCamera | None = None


class GTDataset(Sequence):
    """A lazily loaded, indexable sequence of :class:`GTSample` (each index reads its files on access)."""

    def __init__(self, names: Sequence[str], loaders: Sequence[Callable[[], GTSample]], *, source: str):
        if len(names) != len(loaders):
            raise ValueError(f"{len(names)} names for {len(loaders)} loaders")
        self.names = list(names)
        self._loaders = list(loaders)
        self.source = source

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            idx = range(len(self))[index]
            return GTDataset(
                [self.names[i] for i in idx], [self._loaders[i] for i in idx], source=self.source
            )
        return self._loaders[index]()

    def __iter__(self) -> Iterator[GTSample]:
        for load in self._loaders:
            yield load()

    def __repr__(self) -> str:
        return f"GTDataset({self.source!r}, {len(self)} scenes)"


# ---------------------------------------------------------------------------------------------------------
# PFM: the few lines of the format are simpler to own than a dependency (imageio's PFM plugin needs extras).


def read_pfm(path: str | Path) -> np.ndarray:
    """Reads a PFM file to a float32 array, top row first (``H x W`` for ``Pf``, ``H x W x 3`` for ``PF``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"PFM file {path} does not exist") from None
    # Header: three whitespace-separated tokens lines: "Pf"/"PF", "W H", scale (negative = little endian).
    tokens: list[bytes] = []
    pos = 0
    while len(tokens) < 4:
        while pos < len(raw) and raw[pos : pos + 1].isspace():
            pos += 1
        if raw[pos : pos + 1] == b"#":  # comment line
            pos = raw.find(b"\n", pos) + 1 or len(raw)
            continue
        start = pos
        while pos < len(raw) and not raw[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ValueError(f"{path} is not a PFM file: header ends after {len(tokens)} of 4 fields")
        tokens.append(raw[start:pos])
    pos += 1  # exactly one whitespace byte separates the header from the data
    kind = tokens[0]
    if kind not in (b"Pf", b"PF"):
        raise ValueError(f"{path} is not a PFM file: magic is {kind!r}, expected b'Pf' or b'PF'")
    try:
        width, height, scale = int(tokens[1]), int(tokens[2]), float(tokens[3])
    except ValueError:
        raise ValueError(f"{path}: malformed PFM header {b' '.join(tokens)!r}") from None
    if width <= 0 or height <= 0 or scale == 0:
        raise ValueError(f"{path}: PFM header has width={width}, height={height}, scale={scale}")
    channels = 3 if kind == b"PF" else 1
    dtype = np.dtype("<f4" if scale < 0 else ">f4")
    count = width * height * channels
    if len(raw) - pos < count * 4:
        raise ValueError(
            f"{path}: PFM data truncated, {len(raw) - pos} bytes for {width}x{height}x{channels} floats"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=pos).astype(np.float32)
    shape = (height, width) if channels == 1 else (height, width, 3)
    # PFM stores rows bottom-to-top.
    return np.ascontiguousarray(data.reshape(shape)[::-1])


def write_pfm(path: str | Path, array: np.ndarray) -> None:
    """Writes an ``H x W`` (or ``H x W x 3``) float array as little-endian PFM (inf / NaN kept)."""
    arr = np.asarray(array, dtype=np.float32)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"write_pfm({path}) needs H x W or H x W x 3, instead got shape {arr.shape}")
    kind = "Pf" if arr.ndim == 2 else "PF"
    header = f"{kind}\n{arr.shape[1]} {arr.shape[0]}\n-1.0\n".encode("ascii")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + np.ascontiguousarray(arr[::-1]).astype("<f4").tobytes())


# ---------------------------------------------------------------------------------------------------------
# Middlebury 2014


def read_middlebury_calib(path: str | Path) -> dict[str, object]:
    """Parses a Middlebury ``calib.txt`` (``key=value`` lines; ``cam0``/``cam1`` as ``[f 0 cx; 0 f cy; 0 0 1]``).

    Returns ``cam0``/``cam1`` as 3x3 float arrays and the scalars (``doffs``, ``baseline`` in mm, ``width``,
    ``height``, ``ndisp``, ``vmin``, ``vmax``, ...) as float / int.
    """
    path = Path(path)
    out: dict[str, object] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{lineno}: expected key=value, instead got {line!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        if value.startswith("["):
            rows = [r.split() for r in value.strip("[]").split(";")]
            try:
                mat = np.array(rows, dtype=np.float64)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: malformed matrix {value!r}") from None
            if mat.shape != (3, 3):
                raise ValueError(
                    f"{path}:{lineno}: {key} must be a 3x3 matrix, instead got shape {mat.shape}"
                )
            out[key] = mat
        else:
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: {key} must be a number, instead got {value!r}") from None
            out[key] = (
                int(number)
                if number.is_integer() and key in ("width", "height", "ndisp", "isint")
                else number
            )
    for key in ("cam0", "cam1", "baseline"):
        if key not in out:
            raise ValueError(
                f"{path} lacks {key}=...; a Middlebury calib.txt has cam0, cam1, doffs and baseline"
            )
    return out


def _camera_from_calib(calib: dict[str, object], *, width: int, height: int) -> StereoCamera:
    cam0 = np.asarray(calib["cam0"])
    cam1 = np.asarray(calib["cam1"])
    # Middlebury doffs = cx1 - cx0; prefer the explicit field, fall back to the matrices.
    doffs = float(calib.get("doffs", cam1[0, 2] - cam0[0, 2]))
    return StereoCamera(
        fx=float(cam0[0, 0]),
        fy=float(cam0[1, 1]),
        cx=float(cam0[0, 2]),
        cy=float(cam0[1, 2]),
        baseline=float(calib["baseline"]) / 1000.0,  # Middlebury gives millimetres
        doffs=doffs,
        width=width,
        height=height,
    )


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path} (missing, truncated or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_MIDDLEBURY_GT_NAMES = ("disp0GT.pfm", "disp0.pfm")


def _is_middlebury_scene(folder: Path) -> bool:
    return (folder / "im0.png").is_file() and (folder / "im1.png").is_file()


def load_middlebury_scene(folder: str | Path) -> GTSample:
    """Reads one Middlebury-2014 scene folder (``im0.png``, ``im1.png``, ``disp0GT.pfm``, ``calib.txt``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Middlebury scene folder {folder} does not exist")
    gt_path = next((folder / n for n in _MIDDLEBURY_GT_NAMES if (folder / n).is_file()), None)
    if gt_path is None:
        raise FileNotFoundError(
            f"Middlebury scene {folder} has no ground truth ({' or '.join(_MIDDLEBURY_GT_NAMES)}); "
            "test-set scenes without ground truth cannot be evaluated"
        )
    left = _read_rgb(folder / "im0.png")
    right = _read_rgb(folder / "im1.png")
    disparity = read_pfm(gt_path)
    if disparity.ndim != 2:
        raise ValueError(f"{gt_path} must be a single-channel PFM (Pf), instead got shape {disparity.shape}")
    if left.shape != right.shape or left.shape[:2] != disparity.shape:
        raise ValueError(
            f"Middlebury scene {folder}: im0 {left.shape[:2]}, im1 {right.shape[:2]} and "
            f"{gt_path.name} {disparity.shape} must have the same size"
        )
    disparity = disparity.copy()
    disparity[~np.isfinite(disparity)] = np.nan
    camera = None
    calib_path = folder / "calib.txt"
    if calib_path.is_file():
        calib = read_middlebury_calib(calib_path)
        for key, actual in (("width", left.shape[1]), ("height", left.shape[0])):
            if key in calib and calib[key] != actual:
                raise ValueError(
                    f"{calib_path} says {key}={calib[key]} but {folder / 'im0.png'} has {key} {actual}"
                )
        camera = _camera_from_calib(calib, width=left.shape[1], height=left.shape[0])
    return GTSample(name=folder.name, left=left, right=right, disparity=disparity, camera=camera)


def write_middlebury_scene(
    folder: str | Path,
    sample: GTSample,
    *,
    camera: StereoCamera | None = None,
) -> Path:
    """Writes ``sample`` as a Middlebury-2014 scene folder that :func:`load_middlebury_scene` reads back.

    ``im0.png`` / ``im1.png`` (RGB ``uint8`` images), ``disp0GT.pfm`` (unknown = ``+inf``, as Middlebury) and
    ``calib.txt`` from ``camera`` (default: ``sample.camera``; baseline written in millimetres). ``ndisp``
    is the ground truth's largest disparity rounded up to 16. Returns the folder.
    """
    camera = camera or sample.camera
    if camera is None:
        raise ValueError(f"write_middlebury_scene({folder}): the sample has no camera; pass camera=")
    left, right = np.asarray(sample.left), np.asarray(sample.right)
    disparity = np.asarray(sample.disparity, dtype=np.float32)
    if left.dtype != np.uint8 or left.ndim != 3 or left.shape[2] != 3 or left.shape != right.shape:
        raise ValueError(
            f"write_middlebury_scene({folder}) needs two RGB uint8 H x W x 3 images of one size, "
            f"instead got {left.dtype} {left.shape} and {right.dtype} {right.shape}"
        )
    if disparity.shape != left.shape[:2]:
        raise ValueError(f"disparity {disparity.shape} differs from the images' {left.shape[:2]}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in (("im0.png", left), ("im1.png", right)):
        if not cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {folder / name}")
    finite = np.isfinite(disparity)
    write_pfm(folder / "disp0GT.pfm", np.where(finite, disparity, np.inf))
    top = float(disparity[finite].max()) if finite.any() else 0.0
    height, width = disparity.shape
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    (folder / "calib.txt").write_text(
        f"cam0=[{fx:.9g} 0 {cx:.9g}; 0 {fy:.9g} {cy:.9g}; 0 0 1]\n"
        f"cam1=[{fx:.9g} 0 {cx + camera.doffs:.9g}; 0 {fy:.9g} {cy:.9g}; 0 0 1]\n"
        f"doffs={camera.doffs:.9g}\nbaseline={camera.baseline * 1000.0:.9g}\nwidth={width}\nheight={height}\n"
        f"ndisp={max(16, int(np.ceil(top / 16.0)) * 16)}\nisint=0\n"
    )
    return folder


# ---------------------------------------------------------------------------------------------------------
# KITTI 2012 / 2015


def read_kitti_disparity(path: str | Path) -> np.ndarray:
    """Reads a KITTI 16-bit disparity PNG (value / 256 pixels, 0 = unknown -> NaN)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot read KITTI disparity {path} (missing, truncated or not a PNG)")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(
            f"KITTI disparity {path} must be a 16-bit single-channel PNG, instead got {raw.dtype} {raw.shape}"
        )
    disparity = raw.astype(np.float32) / 256.0
    disparity[raw == 0] = np.nan
    return disparity


_KITTI_LAYOUTS = (
    # (left dir, right dir, disparity dir, calib dir, calib keys for the left / right projection)
    ("image_2", "image_3", "disp_occ_0", "calib_cam_to_cam", ("P_rect_02", "P_rect_03")),
    ("colored_0", "colored_1", "disp_occ", "calib", ("P0", "P1")),
)


def _read_kitti_camera(path: Path, keys: tuple[str, str], *, width: int, height: int) -> StereoCamera | None:
    if not path.is_file():
        return None
    values: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, rest = line.split(":", 1)
            try:
                values[key.strip()] = np.array(rest.split(), dtype=np.float64)
            except ValueError:
                continue  # e.g. calib_time: 09-Jan-2012 ...
    if not all(k in values and values[k].size == 12 for k in keys):
        raise ValueError(f"KITTI calibration {path} lacks 3x4 projections {keys}")
    return StereoCamera.from_projection(values[keys[0]], values[keys[1]], width=width, height=height)


def _kitti_root(folder: Path) -> tuple[Path, tuple] | None:
    for root in (folder, folder / "training"):
        for layout in _KITTI_LAYOUTS:
            if all((root / d).is_dir() for d in layout[:3]):
                return root, layout
    return None


def _load_kitti_sample(root: Path, layout: tuple, disp_path: Path) -> GTSample:
    left_dir, right_dir, _, calib_dir, keys = layout
    left = _read_rgb(root / left_dir / disp_path.name)
    right = _read_rgb(root / right_dir / disp_path.name)
    disparity = read_kitti_disparity(disp_path)
    if left.shape != right.shape or left.shape[:2] != disparity.shape:
        raise ValueError(
            f"KITTI sample {disp_path.name} in {root}: left {left.shape[:2]}, right {right.shape[:2]} and "
            f"disparity {disparity.shape} must have the same size"
        )
    frame = re.sub(r"_1\d$", "", disp_path.stem)  # 000000_10 -> 000000 (calibration is per sequence)
    camera = None
    for candidate in (root / calib_dir / f"{frame}.txt", root / calib_dir / f"{disp_path.stem}.txt"):
        camera = _read_kitti_camera(candidate, keys, width=left.shape[1], height=left.shape[0])
        if camera is not None:
            break
    return GTSample(name=disp_path.stem, left=left, right=right, disparity=disparity, camera=camera)


def _kitti_dataset(root: Path, layout: tuple) -> GTDataset:
    left_dir, right_dir, disp_dir = layout[:3]
    disp_paths = sorted((root / disp_dir).glob("*.png"))
    missing = [
        p.name
        for p in disp_paths
        if not (root / left_dir / p.name).is_file() or not (root / right_dir / p.name).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"KITTI folder {root}: {len(missing)} disparity maps in {disp_dir}/ have no image pair in "
            f"{left_dir}/ and {right_dir}/, e.g. {missing[0]}"
        )
    if not disp_paths:
        raise FileNotFoundError(f"KITTI folder {root}: {disp_dir}/ holds no .png disparity maps")
    loaders = [lambda p=p: _load_kitti_sample(root, layout, p) for p in disp_paths]
    return GTDataset([p.stem for p in disp_paths], loaders, source=str(root))


# ---------------------------------------------------------------------------------------------------------
# Entry points


def load_motorcycle() -> GTSample:
    """The Middlebury-2014 motorcycle pair bundled with scikit-image (500 x 741, no download)."""
    from skimage import data

    left, right, disparity = data.stereo_motorcycle()
    disparity = np.asarray(disparity, dtype=np.float32).copy()
    disparity[~np.isfinite(disparity)] = np.nan
    return GTSample(name="motorcycle", left=left, right=right, disparity=disparity, camera=MOTORCYCLE_CAMERA)


ALOE_DIR = Path(__file__).resolve().parent / "data" / "middlebury2006_aloe"
# The Middlebury 2006 collection's nominal rig at full size; the OpenCV copy has no calib.txt (see SOURCE.md).
_ALOE_FULL_FOCAL = 3740.0
_ALOE_BASELINE_M = 0.160


def load_aloe(*, scale: int = 2, folder: str | Path | None = None) -> GTSample:
    """The Middlebury 2006 "Aloe" pair bundled with this package (``data/middlebury2006_aloe/SOURCE.md``).

    ``scale`` 1, 2 or 3 gives Middlebury's full, half (default: 555 x 641, disparities up to 105.5 px, about
    the motorcycle pair's range) and third sizes: the views are box-averaged (``INTER_AREA``), the ground
    truth is sampled at every ``scale``-th pixel (an average would invent disparities across depth edges) and
    divided by ``scale``. Unknown ground truth (0 in ``aloeGT.png``) is NaN. The camera is the collection's
    nominal rig: disparities are exact, depth from it approximate.
    """
    if scale not in (1, 2, 3):
        raise ValueError(f"load_aloe scale must be 1 (full), 2 (half) or 3 (third size), instead got {scale!r}")
    folder = Path(folder) if folder is not None else ALOE_DIR
    left, right = _read_rgb(folder / "aloeL.jpg"), _read_rgb(folder / "aloeR.jpg")
    raw = cv2.imread(str(folder / "aloeGT.png"), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2 or raw.shape != left.shape[:2] or left.shape != right.shape:
        raise ValueError(
            f"{folder}: aloeL.jpg {left.shape}, aloeR.jpg {right.shape} and aloeGT.png "
            f"{None if raw is None else raw.shape} must be one size (a single-channel ground truth)"
        )
    disparity = raw.astype(np.float32)
    disparity[raw == 0] = np.nan
    if scale > 1:
        h, w = (raw.shape[0] // scale) * scale, (raw.shape[1] // scale) * scale
        size = (w // scale, h // scale)
        left = cv2.resize(left[:h, :w], size, interpolation=cv2.INTER_AREA)
        right = cv2.resize(right[:h, :w], size, interpolation=cv2.INTER_AREA)
        disparity = disparity[:h:scale, :w:scale] / float(scale)
    height, width = disparity.shape
    focal = _ALOE_FULL_FOCAL / scale
    camera = StereoCamera(
        fx=focal, fy=focal, cx=(width - 1) / 2.0, cy=(height - 1) / 2.0, baseline=_ALOE_BASELINE_M,
        doffs=0.0, width=width, height=height,
    )
    return GTSample(name="aloe", left=left, right=right, disparity=np.ascontiguousarray(disparity), camera=camera)


_BUNDLED = {"motorcycle": load_motorcycle, "aloe": load_aloe}


def load_gt_folder(root: str | Path) -> GTDataset:
    """Opens a Middlebury scene, a folder of Middlebury scenes, or a KITTI 2012/2015 folder (see module doc)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"ground-truth dataset folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"ground-truth dataset {root} is a file; expected a folder")
    if _is_middlebury_scene(root):
        return GTDataset([root.name], [lambda: load_middlebury_scene(root)], source=str(root))
    kitti = _kitti_root(root)
    if kitti is not None:
        return _kitti_dataset(*kitti)
    scenes = sorted(p for p in root.iterdir() if p.is_dir() and _is_middlebury_scene(p))
    if scenes:
        return GTDataset(
            [p.name for p in scenes], [lambda p=p: load_middlebury_scene(p) for p in scenes], source=str(root)
        )
    entries = sorted(p.name for p in root.iterdir())[:8]
    raise ValueError(
        f"unrecognized dataset layout in {root} (contains {entries}); expected a Middlebury-2014 scene "
        "(im0.png, im1.png, disp0GT.pfm, calib.txt), a folder of such scenes, or KITTI "
        "(image_2/ image_3/ disp_occ_0/ or colored_0/ colored_1/ disp_occ/)"
    )


def load_gt_dataset(spec: str | Path) -> GTDataset:
    """A bundled real pair, a folder accepted by :func:`load_gt_folder`, or several of them joined by commas.

    Bundled pairs: ``"motorcycle"`` (Middlebury 2014, from scikit-image) and ``"aloe"`` (Middlebury 2006, half
    size, :func:`load_aloe`); an existing folder of the same name wins. ``"motorcycle,aloe"`` yields both, in
    that order (``"real"`` is short for it); scene names must not repeat.
    """
    text = str(spec)
    if text == "real" and not Path(text).exists():
        text = "motorcycle,aloe"
    if "," in text and not Path(text).exists():
        parts = [p.strip() for p in text.split(",")]
        if any(not p for p in parts):
            raise ValueError(f"empty entry in the dataset list {text!r}")
        datasets = [load_gt_dataset(p) for p in parts]
        names = [n for d in datasets for n in d.names]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"dataset list {text!r} names scenes {repeated} more than once")
        loaders = [lambda d=d, i=i: d[i] for d in datasets for i in range(len(d))]
        return GTDataset(names, loaders, source=text)
    if text in _BUNDLED and not Path(text).exists():
        return GTDataset([text], [_BUNDLED[text]], source=text)
    return load_gt_folder(spec)
