"""Training datasets on real data: procedural renders, stage-1 synthesis of the Middlebury motorcycle pair,
Middlebury-format folders and a rosbag2 bag written with ``rosbags`` that carries a projected LiDAR cloud.

The bag is the motorcycle pair at reduced resolution with its calibration, plus a LiDAR cloud made by
back-projecting 5 % of the ground-truth pixels into a lidar frame that /tf_static places on the robot.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from skimage.data import stereo_motorcycle

from mono2stereo_core.bags import BagError
from mono2stereo_core.datasets_gt import GTSample, write_middlebury_scene
from mono2stereo_core.geometry import MOTORCYCLE_CAMERA, depth_to_points
from mono2stereo_core.image_encoding import encode_image
from mono2stereo_core.pointcloud import FLOAT32, invert_transform, quaternion_to_matrix
from mono2stereo_core.synthesis.augment import AugmentConfig
from mono2stereo_core.synthesis.pipeline import SynthesisConfig, synthesize_pair
from mono2stereo_core.synthesis.warp import backward_warp
from mono2stereo_core.training.datasets import (
    BagSelfSynthesisDataset,
    CropSpec,
    GroundTruthFolderDataset,
    MonoDisparitySource,
    MonoTeacher,
    NetworkDisparitySource,
    ProceduralStereoDataset,
    StereoBagDataset,
    SynthesizedFolderDataset,
    augment_sample,
    to_tensors,
)

TS = get_typestore(Stores.ROS2_KILTED)
T0 = 1_700_000_000_000_000_000
PERIOD = 100_000_000
# Photometrically neutral augmentation: only the geometric part (the rig-mirroring flip) acts.
FLIP_ONLY = AugmentConfig(
    gamma=(1.0, 1.0), brightness=(1.0, 1.0), contrast=(1.0, 1.0), colour_gain=(1.0, 1.0),
    noise_std=(0.0, 0.0), blur_prob=0.0, flip_prob=1.0,
)


# ------------------------------------------------------------------------------------------------ bag helpers


def _header(stamp_ns: int, frame: str):
    return TS.types["std_msgs/msg/Header"](
        stamp=TS.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame
    )


def _image(array: np.ndarray, encoding: str, stamp_ns: int, frame: str):
    step, data = encode_image(array, encoding)
    return TS.types["sensor_msgs/msg/Image"](
        header=_header(stamp_ns, frame), height=array.shape[0], width=array.shape[1], encoding=encoding,
        is_bigendian=0, step=step, data=np.frombuffer(data, dtype=np.uint8),
    )


def _info(camera, side: str, stamp_ns: int, *, fx: float | None = None):
    fx = camera.fx if fx is None else fx
    tx = -fx * camera.baseline if side == "right" else 0.0
    cx = camera.cx + (camera.doffs if side == "right" else 0.0)
    p = np.array([fx, 0, cx, tx, 0, camera.fy, camera.cy, 0, 0, 0, 1, 0], dtype=np.float64)
    return TS.types["sensor_msgs/msg/CameraInfo"](
        header=_header(stamp_ns, f"{side}_optical"), height=camera.height, width=camera.width,
        distortion_model="plumb_bob", d=np.zeros(5), k=np.array([fx, 0, cx, 0, camera.fy, camera.cy, 0, 0, 1.0]),
        r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
        roi=TS.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def _cloud(points: np.ndarray, stamp_ns: int):
    pf = TS.types["sensor_msgs/msg/PointField"]
    fields = [pf(name=n, offset=4 * k, datatype=FLOAT32, count=1) for k, n in enumerate("xyz")]
    data = np.ascontiguousarray(points, dtype="<f4").view(np.uint8).reshape(-1)
    return TS.types["sensor_msgs/msg/PointCloud2"](
        header=_header(stamp_ns, "lidar"), height=1, width=len(points), fields=fields, is_bigendian=False,
        point_step=12, row_step=12 * len(points), data=data, is_dense=True,
    )


# A mount like a real robot's: camera optical frame (REP 103) and a yawed, tilted LiDAR on base_link.
Q_CAM = np.array([-0.5, 0.5, -0.5, 0.5])
Q_LIDAR = np.array([0.02, -0.03, 0.1, 1.0]) / np.linalg.norm([0.02, -0.03, 0.1, 1.0])
T_BASE_CAM = np.eye(4)
T_BASE_CAM[:3, :3], T_BASE_CAM[:3, 3] = quaternion_to_matrix(Q_CAM), [0.10, 0.05, 1.20]
T_BASE_LIDAR = np.eye(4)
T_BASE_LIDAR[:3, :3], T_BASE_LIDAR[:3, 3] = quaternion_to_matrix(Q_LIDAR), [0.05, -0.02, 1.45]
T_CAM_LIDAR = invert_transform(T_BASE_CAM) @ T_BASE_LIDAR


def _tf_static(stamp_ns: int):
    ts_type, tf_type = TS.types["geometry_msgs/msg/TransformStamped"], TS.types["geometry_msgs/msg/Transform"]
    vec, quat = TS.types["geometry_msgs/msg/Vector3"], TS.types["geometry_msgs/msg/Quaternion"]

    def stamped(child, T, q):
        return ts_type(
            header=_header(stamp_ns, "base_link"), child_frame_id=child,
            transform=tf_type(translation=vec(x=T[0, 3], y=T[1, 3], z=T[2, 3]), rotation=quat(x=q[0], y=q[1], z=q[2], w=q[3])),
        )

    return TS.types["tf2_msgs/msg/TFMessage"](
        transforms=[stamped("left_optical", T_BASE_CAM, Q_CAM), stamped("lidar", T_BASE_LIDAR, Q_LIDAR)]
    )


def small_motorcycle(width: int = 192):
    """The motorcycle pair resized to ``width`` (disparity scaled with it), its rig, GT disparity (NaN)."""
    left, right, disparity = stereo_motorcycle()
    scale = width / left.shape[1]
    height = round(left.shape[0] * scale)
    camera = MOTORCYCLE_CAMERA.scaled(width / left.shape[1], height / left.shape[0])
    resize = lambda a, interp: cv2.resize(a, (width, height), interpolation=interp)  # noqa: E731
    gt = np.where(np.isfinite(disparity), disparity, np.nan).astype(np.float32)
    gt_small = resize(np.nan_to_num(gt, nan=-1.0), cv2.INTER_NEAREST) * np.float32(scale)
    gt_small[gt_small < 0] = np.nan
    return resize(left, cv2.INTER_AREA), resize(right, cv2.INTER_AREA), gt_small, camera


def write_stereo_bag(path: Path, *, pairs: int = 3, width: int = 192, lidar: bool = True, fx: float | None = None) -> dict:
    """Writes a rosbag2 MCAP bag with ``rosbags`` and returns what was written (for the assertions)."""
    left, right, gt, camera = small_motorcycle(width)
    depth = camera.disparity_to_depth(gt)
    rng = np.random.default_rng(0)
    mask = np.isfinite(depth) & (rng.random(depth.shape) < 0.05)
    points_cam = depth_to_points(np.where(mask, depth, np.nan), camera.fx, camera.fy, camera.cx, camera.cy)[mask]
    # Into the lidar frame: p_lidar = R^T (p_cam - t) for row vectors.
    points_lidar = (points_cam.astype(np.float64) - T_CAM_LIDAR[:3, 3]) @ T_CAM_LIDAR[:3, :3]
    topics = {
        "/stereo/left/image_rect": "sensor_msgs/msg/Image",
        "/stereo/right/image_rect": "sensor_msgs/msg/Image",
        "/stereo/left/camera_info": "sensor_msgs/msg/CameraInfo",
        "/stereo/right/camera_info": "sensor_msgs/msg/CameraInfo",
    }
    if lidar:
        topics["/lidar/points"] = "sensor_msgs/msg/PointCloud2"
        topics["/tf_static"] = "tf2_msgs/msg/TFMessage"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {t: writer.add_connection(t, ty, typestore=TS) for t, ty in topics.items()}

        def put(topic, msg, stamp):
            writer.write(conns[topic], stamp, TS.serialize_cdr(msg, topics[topic]))

        if lidar:
            put("/tf_static", _tf_static(T0), T0)
        for k in range(pairs):
            t = T0 + k * PERIOD
            put("/stereo/left/image_rect", _image(left, "rgb8", t, "left_optical"), t)
            put("/stereo/right/image_rect", _image(right, "rgb8", t, "right_optical"), t)
            put("/stereo/left/camera_info", _info(camera, "left", t, fx=fx), t)
            put("/stereo/right/camera_info", _info(camera, "right", t, fx=fx), t)
            if lidar:
                put("/lidar/points", _cloud(points_lidar.astype(np.float32), t + 1_000_000), t + 1_000_000)
    return {"left": left, "right": right, "gt": gt, "camera": camera, "lidar_mask": mask}


# ------------------------------------------------------------------------------------------------ procedural


def procedural(tmp_path=None, **overrides):
    settings = dict(
        length=8, base_seed=100, render_width=160, render_height=120, crop=CropSpec(height=96, width=128, stride=8),
        max_disparity=64, render_max_disparity=48, synthesized_fraction=0.5, augment=AugmentConfig(),
        scene_config={"supersample": 1, "num_objects": (2, 4)}, cache_dir=tmp_path,
    )
    settings.update(overrides)
    return ProceduralStereoDataset(**settings)


def test_procedural_items_are_reproducible_cropped_and_cached(tmp_path):
    dataset = procedural(tmp_path / "cache", num_scenes=4)
    item = dataset[5]
    assert item["left"].shape == item["right"].shape == (3, 96, 128)
    assert item["disparity"].shape == item["valid"].shape == (1, 96, 128)
    assert item["left"].dtype == torch.float32 and item["valid"].dtype == torch.bool
    assert 0.0 <= float(item["left"].min()) and float(item["left"].max()) <= 1.0
    d = item["disparity"][item["valid"]]
    assert d.numel() > 0.5 * item["valid"].numel() and float(d.max()) < 64 and float(d.min()) > 0
    assert not torch.isnan(item["disparity"]).any()
    # Rendered once: the cache holds scene 100 + 5 % 4 and a fresh dataset reads identical items from it.
    assert len(list((tmp_path / "cache").glob("scene_000000101_*.npz"))) == 1
    again = procedural(tmp_path / "cache", num_scenes=4)[5]
    uncached = procedural(None, num_scenes=4)[5]
    for key in item:
        assert torch.equal(item[key], again[key]) and torch.equal(item[key], uncached[key]), key
    # Item 1 shows the same scene (num_scenes=4) with another crop / augmentation: different pixels.
    assert not torch.equal(dataset[1]["left"], item["left"])


def _best_match(image: np.ndarray, patch: np.ndarray) -> float:
    """Smallest mean squared difference between ``patch`` and any same-size window of ``image``."""
    scores = cv2.matchTemplate(image, patch, cv2.TM_SQDIFF)
    return float(scores.min()) / patch.size


def _reconstruction_error(item) -> float:
    """Mean |left - right warped by the left disparity| over valid, visible pixels (grey levels)."""
    left, right = item["left"][None], item["right"][None]
    disparity = item["disparity"][None]
    warped, in_view = backward_warp(right, disparity)
    mask = item["valid"][None] & ~item["occlusion"][None] & in_view
    return float(((warped - left).abs().mean(1, keepdim=True))[mask].mean() * 255)


def test_flip_mirrors_the_rig_and_keeps_labels_consistent():
    """After the flip the pair must still satisfy left(x) = right(x - d): the labels moved with the views."""
    for synthesized in (0.0, 1.0):
        plain = procedural(synthesized_fraction=synthesized, augment=None)[3]
        flipped = procedural(synthesized_fraction=synthesized, augment=FLIP_ONLY)[3]
        assert not torch.equal(plain["left"], flipped["left"])
        assert torch.allclose(flipped["left"], plain["right"].flip(-1))
        error_plain, error_flipped = _reconstruction_error(plain), _reconstruction_error(flipped)
        assert error_plain < 12 and error_flipped < 12, (synthesized, error_plain, error_flipped)
        # A flip that forgot to swap the views or the labels reconstructs far worse.
        wrong = dict(flipped, right=plain["right"].flip(-1), left=plain["left"].flip(-1))
        assert _reconstruction_error(wrong) > 2 * max(error_plain, error_flipped, 1.0)


def test_flip_is_disabled_without_right_view_labels():
    left, right, gt, _ = small_motorcycle(128)
    valid = np.isfinite(gt)
    tensors = to_tensors({"left": left, "right": right, "disparity": gt, "valid": valid})
    out = augment_sample(tensors, config=FLIP_ONLY, seed=0)
    # Unflipped (the neutral photometric settings still round-trip through float maths: allclose).
    assert torch.allclose(out["left"], tensors["left"], atol=1e-4)
    assert torch.equal(out["disparity"], tensors["disparity"])


def test_synthesized_folder_and_middlebury_folder(tmp_path):
    left, right, gt, camera = small_motorcycle(200)
    pair = synthesize_pair(left, np.nan_to_num(gt, nan=0.0), inpaint="ea", seed=0)
    root = tmp_path / "synth"
    for sub in ("left", "right", "disp", "mask"):
        (root / sub).mkdir(parents=True)
    cv2.imwrite(str(root / "left/0.png"), pair.left[..., ::-1])
    cv2.imwrite(str(root / "right/0.png"), pair.right[..., ::-1])
    np.save(root / "disp/0.npy", pair.disparity)
    cv2.imwrite(str(root / "mask/0.png"), pair.valid.astype(np.uint8) * 255)
    (root / "manifest.jsonl").write_text('{"left": "left/0.png", "right": "right/0.png", "disp": "disp/0.npy", "mask": "mask/0.png"}\n')
    crop = CropSpec(height=120, width=160, stride=8)
    item = SynthesizedFolderDataset(root, crop=crop, max_disparity=64, augment=None)[0]
    assert item["left"].shape == (3, 120, 160) and item["valid"].float().mean() > 0.5
    assert float(item["disparity"][item["valid"]].max()) <= float(np.nanmax(pair.disparity)) + 1e-4

    sample = GTSample(name="motorcycle", left=left, right=right, disparity=gt, camera=camera)
    write_middlebury_scene(tmp_path / "mb" / "motorcycle", sample)
    dataset = GroundTruthFolderDataset(tmp_path / "mb", crop=crop, max_disparity=64)
    item = dataset[0]
    # The crop window is somewhere inside the GT: its valid disparities are a sub-block of the GT's.
    d = np.where(item["valid"][0].numpy(), item["disparity"][0].numpy(), 0).astype(np.float32)
    assert _best_match(np.nan_to_num(gt, nan=0.0).astype(np.float32), d) < 1e-4
    with pytest.raises(FileNotFoundError, match="manifest.jsonl is missing"):
        SynthesizedFolderDataset(tmp_path / "mb", crop=crop, max_disparity=64)


@pytest.fixture(scope="module")
def lidar_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "session"
    written = write_stereo_bag(path, pairs=3)
    return path, written


def test_bag_dataset_reads_projected_lidar_as_sparse_disparity(lidar_bag):
    path, written = lidar_bag
    height, width = written["left"].shape[:2]
    crop = CropSpec(height=(height // 8) * 8, width=(width // 8) * 8, stride=8)
    dataset = StereoBagDataset(path.parent, crop=crop, max_disparity=64, lidar_topic="/lidar/points", augment=None)
    assert len(dataset) == 3
    arrays = dataset.full_arrays(1)
    np.testing.assert_array_equal(arrays["left"], written["left"])
    valid = arrays["valid"]
    gt = written["gt"]
    # About 5 % of the GT pixels come back (points projected into the left camera through /tf_static) ...
    assert 0.02 < valid.mean() < 0.08
    # ... at the right pixels, with the GT disparity (sub-pixel: float32 clouds and rounding of projection).
    expected = written["lidar_mask"] & np.isfinite(gt)
    overlap = (valid & expected).sum() / valid.sum()
    assert overlap > 0.9
    both = valid & expected
    np.testing.assert_allclose(arrays["disparity"][both], gt[both], atol=0.05)
    item = dataset[0]
    assert item["disparity"].shape == (1, crop.height, crop.width)
    assert torch.equal(item["valid"], torch.from_numpy(valid[: crop.height, : crop.width])[None]) or item["valid"].any()


class _ShiftedInverseDepth:
    """A stand-in monocular model with the ambiguity of a real one: 0.02 * disparity + 0.3 (unknown affine)."""

    output_kind = "inverse_depth"

    def __init__(self, gt: np.ndarray):
        self.gt = gt

    def predict(self, images):
        return [np.nan_to_num(0.02 * self.gt + 0.3, nan=0.3).astype(np.float32) for _ in images]


def test_mono_teacher_is_aligned_to_the_sparse_lidar(lidar_bag, tmp_path):
    path, written = lidar_bag
    gt = written["gt"]
    teacher = MonoTeacher(_ShiftedInverseDepth(gt), cache_dir=tmp_path / "teacher")
    height, width = gt.shape
    crop = CropSpec(height=(height // 8) * 8, width=(width // 8) * 8, stride=8)
    dataset = StereoBagDataset(path, crop=crop, max_disparity=64, lidar_topic="/lidar/points", teacher=teacher, augment=None)
    arrays = dataset.full_arrays(0)
    finite = np.isfinite(gt)
    # The affine ambiguity is removed by the alignment to ~5 % sparse points: the teacher is the GT again.
    np.testing.assert_allclose(arrays["teacher_disparity"][finite], gt[finite], atol=0.1)
    assert len(list((tmp_path / "teacher").glob("mono_*.npy"))) == 1


def test_gt_free_dataset_synthesizes_from_the_bag_left_frames(lidar_bag):
    from mono2stereo_core.models import build_model

    path, written = lidar_bag
    height, width = written["left"].shape[:2]
    crop = CropSpec(height=64, width=96, stride=8)
    bags = StereoBagDataset(path, crop=crop, max_disparity=64)
    torch.manual_seed(0)
    dataset = BagSelfSynthesisDataset(
        bags, disparity_source=NetworkDisparitySource(build_model("m2s_tiny", max_disparity=64)), crop=crop,
        max_disparity=64, augment=replace(FLIP_ONLY, flip_prob=0.0),
    )
    item = dataset[0]
    assert item["left"].shape == (3, 64, 96)
    # With a mono model the scene geometry is its prediction at a random plausible scale: same ordering as
    # the true disparity (near = large), a nearest point within the configured range, reproducible per key.
    source = MonoDisparitySource(_ShiftedInverseDepth(written["gt"]), config=SynthesisConfig(max_disparity=48))
    disparity = source(written["left"], written["right"], key="pair0")
    finite = np.isfinite(written["gt"])
    assert np.corrcoef(disparity[finite], written["gt"][finite])[0, 1] > 0.99
    assert 0.1 * 48 <= float(disparity.max()) <= 1.5 * 48
    np.testing.assert_array_equal(disparity, source(written["left"], written["right"], key="pair0"))
    # The left view of a synthesized pair is a crop of the bag's own left frame.
    crop_u8 = (item["left"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert _best_match(written["left"], crop_u8) < 0.5


def test_bad_bags_are_clear_errors(tmp_path, lidar_bag):
    path, _ = lidar_bag
    crop = CropSpec(height=64, width=96, stride=8)
    with pytest.raises(BagError, match="must be a sensor_msgs/msg/PointCloud2 topic but it is not in the bag"):
        StereoBagDataset(path, crop=crop, max_disparity=64, lidar_topic="/velodyne_points")
    zero = tmp_path / "zero_focal"
    write_stereo_bag(zero, pairs=1, lidar=False, fx=0.0)
    with pytest.raises(BagError, match="zero focal length"):
        StereoBagDataset(zero, crop=crop, max_disparity=64)
    corrupt = tmp_path / "corrupt"
    write_stereo_bag(corrupt, pairs=3, lidar=False)
    mcap = next(corrupt.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    with pytest.raises(BagError, match="corrupt or truncated"):
        StereoBagDataset(corrupt, crop=crop, max_disparity=64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StereoBagDataset(tmp_path / "missing", crop=crop, max_disparity=64)
    with pytest.raises(ValueError, match="multiple of the network stride 8"):
        CropSpec(height=60, width=96, stride=8)
