"""PointCloud2 payloads, LiDAR projection against Middlebury ground truth, static transform chains."""

import array

import numpy as np
import pytest
from skimage.data import stereo_motorcycle

from mono2stereo_core.geometry import MOTORCYCLE_CAMERA as CAM
from mono2stereo_core.pointcloud import (
    FLOAT32,
    FLOAT64,
    UINT16,
    PointFieldSpec,
    StaticTransformTree,
    invert_transform,
    pack_xyzrgb,
    project_points,
    quaternion_to_matrix,
    read_points,
    transform_from_tf,
    unpack_xyzrgb,
)


@pytest.fixture(scope="module")
def motorcycle():
    left, _, disparity = stereo_motorcycle()
    points = CAM.reproject(np.where(np.isfinite(disparity), disparity, np.nan))
    return left, points


def test_pack_unpack_organized_cloud_round_trip(motorcycle):
    rgb, points = motorcycle
    packed = pack_xyzrgb(points, rgb)
    assert packed.point_step == 16 and packed.row_step == 16 * 741
    assert len(packed.data) == 16 * 741 * 500
    assert [(f.name, f.offset, f.datatype) for f in packed.fields] == [
        ("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32), ("rgb", 12, FLOAT32)
    ]
    # The PCL convention, checked on raw bytes: rgb float32 field holds uint32 0x00RRGGBB.
    v, u = 250, 300
    raw = np.frombuffer(packed.data, np.uint8).reshape(500, 741, 16)[v, u, 12:16]
    r, g, b = rgb[v, u]
    assert int.from_bytes(raw.tobytes(), "little") == (int(r) << 16) | (int(g) << 8) | int(b)
    xyz, colors = unpack_xyzrgb(fields=packed.fields, point_step=16, data=packed.data, height=500, width=741)
    np.testing.assert_array_equal(xyz, points)  # NaN positions included
    np.testing.assert_array_equal(colors, rgb)


def test_pack_unorganized_and_validation():
    pts = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    packed = pack_xyzrgb(pts)
    xyz, colors = unpack_xyzrgb(fields=packed.fields, point_step=16, data=packed.data)
    np.testing.assert_array_equal(xyz, pts)
    assert (colors == 255).all()
    with pytest.raises(ValueError, match="N x 3 or H x W x 3"):
        pack_xyzrgb(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="uint8"):
        pack_xyzrgb(pts, pts)


def lidar_layout(points, *, big_endian=False, row_pad=0, height=1):
    """An Ouster-like layout: x y z float32, pad, t float64, ring uint16, with optional row padding."""
    order = ">" if big_endian else "<"
    dtype = np.dtype({"names": ["x", "y", "z", "t", "ring"], "formats": [order + "f4"] * 3 + [order + "f8", order + "u2"],
                      "offsets": [0, 4, 8, 16, 24], "itemsize": 32})
    buf = np.zeros(points.shape[0], dtype)
    buf["x"], buf["y"], buf["z"] = points.T
    buf["t"] = np.arange(points.shape[0]) * 1e-6 + 1.7e9
    buf["ring"] = np.arange(points.shape[0]) % 128
    width = points.shape[0] // height
    rows = buf.view(np.uint8).reshape(height, width * 32)
    rows = np.hstack([rows, np.full((height, row_pad), 0xAB, np.uint8)])
    fields = [PointFieldSpec("x", 0, FLOAT32), PointFieldSpec("y", 4, FLOAT32), PointFieldSpec("z", 8, FLOAT32),
              PointFieldSpec("t", 16, FLOAT64), PointFieldSpec("ring", 24, UINT16)]
    return fields, rows.tobytes(), width, width * 32 + row_pad, buf


@pytest.mark.parametrize("big_endian", [False, True])
def test_read_points_arbitrary_layouts(big_endian):
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(64 * 8, 3)).astype(np.float32)
    pts[5] = np.nan
    fields, data, width, row_step, buf = lidar_layout(pts, big_endian=big_endian, row_pad=24, height=8)
    out = read_points(fields=fields, point_step=32, data=data, names=("x", "y", "z", "t", "ring"), height=8,
                      width=width, row_step=row_step, is_bigendian=big_endian)
    assert out.shape == (512, 5) and out.dtype == np.float64
    np.testing.assert_array_equal(out[:, :3], pts.astype(np.float64))
    np.testing.assert_array_equal(out[:, 3], buf["t"])  # float64 time stamps keep their precision
    np.testing.assert_array_equal(out[:, 4], np.arange(512) % 128)
    dense = read_points(fields=fields, point_step=32, data=data, height=8, width=width, row_step=row_step,
                        is_bigendian=big_endian, skip_nans=True)
    assert dense.shape == (511, 3)
    with pytest.raises(ValueError, match="no field 'intensity'; fields are"):
        read_points(fields=fields, point_step=32, data=data, names=("intensity",), height=8, width=width, row_step=row_step)
    with pytest.raises(ValueError, match="fewer than"):
        read_points(fields=fields, point_step=32, data=data[:-100], height=8, width=width, row_step=row_step)


def test_project_points_reproduces_ground_truth_depth(motorcycle):
    _, points = motorcycle
    depth_gt = points[..., 2]
    rng = np.random.default_rng(2)
    mask = np.isfinite(depth_gt) & (rng.random(depth_gt.shape) < 0.1)
    T_lidar_cam = transform_from_tf([0.3, -0.2, 0.1], [0.1, -0.05, 0.2, 0.97])
    p_lidar = points[mask].astype(np.float64) @ T_lidar_cam[:3, :3].T + T_lidar_cam[:3, 3]
    sparse = project_points(p_lidar, invert_transform(T_lidar_cam), CAM, 741, 500)
    np.testing.assert_array_equal(np.isfinite(sparse), mask)
    assert (np.abs(sparse[mask] - depth_gt[mask]) / depth_gt[mask]).max() < 1e-5


def test_project_points_nearest_wins_and_culls():
    cam = CAM
    ray = np.array([(400 - cam.cx) / cam.fx, (100 - cam.cy) / cam.fy, 1.0])
    pts = np.stack([ray * 5.0, ray * 2.0, ray * 9.0, -ray * 3.0, [np.nan] * 3, [1e3, 0, 1.0]])
    depth = project_points(pts, np.eye(4), cam, 741, 500)
    assert depth[100, 400] == pytest.approx(2.0)
    assert np.isfinite(depth).sum() == 1  # behind the camera, NaN and out-of-image points are dropped
    with pytest.raises(ValueError, match="N x 3"):
        project_points(np.zeros((3, 4)), np.eye(4), cam, 10, 10)


def test_quaternion_and_transforms():
    q = [0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)]  # 90 deg about z
    np.testing.assert_allclose(quaternion_to_matrix(q) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(np.array(q) * 3), quaternion_to_matrix(q))
    with pytest.raises(ValueError, match="zero or non-finite norm"):
        quaternion_to_matrix([0, 0, 0, 0])
    R = quaternion_to_matrix([0.1, 0.2, 0.3, 0.9])
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_static_transform_tree_chains_like_tf2():
    tree = StaticTransformTree()
    T_base_cam = transform_from_tf([0.1, 0.0, 1.2], [-0.5, 0.5, -0.5, 0.5])
    T_base_mount = transform_from_tf([0.0, 0.0, 1.5], [0, 0, 0.3826834, 0.9238795])
    T_mount_lidar = transform_from_tf([0.05, 0.0, 0.1], [0, 0.0871557, 0, 0.9961947])
    tree.add("base_link", "cam_optical", T_base_cam)
    tree.add("/base_link", "mount", T_base_mount)  # leading slash ignored, as in tf2
    tree.add("mount", "lidar", T_mount_lidar)
    T = tree.lookup("cam_optical", "lidar")
    expected = np.linalg.inv(T_base_cam) @ T_base_mount @ T_mount_lidar
    np.testing.assert_allclose(T, expected, atol=1e-12)
    np.testing.assert_allclose(tree.lookup("lidar", "cam_optical"), np.linalg.inv(expected), atol=1e-12)
    np.testing.assert_allclose(tree.lookup("mount", "mount"), np.eye(4))
    with pytest.raises(LookupError, match="known frames"):
        tree.lookup("cam_optical", "radar")
    tree.add("odom", "wheel", np.eye(4))
    with pytest.raises(LookupError, match="not connected"):
        tree.lookup("wheel", "lidar")
    with pytest.raises(ValueError, match="cycle"):
        tree.add("lidar", "base_link", np.eye(4))


def test_pack_into_a_caller_buffer_matches_the_bytes_path(motorcycle):
    rgb, points = motorcycle
    expected = pack_xyzrgb(points, rgb).data
    buffer = array.array("B", bytes(1)) * len(expected)
    packed = pack_xyzrgb(points, rgb, out=buffer)
    assert packed.data is buffer  # written in place, no intermediate bytes
    assert buffer.tobytes() == expected
    # Reuse for the next frame overwrites every byte (a stale point would survive otherwise).
    shifted = pack_xyzrgb(points + 1.0, rgb[::-1].copy(), out=buffer)
    assert shifted.data.tobytes() == pack_xyzrgb(points + 1.0, rgb[::-1].copy()).data
    with pytest.raises(ValueError, match="out must hold"):
        pack_xyzrgb(points, rgb, out=bytearray(16))


def test_pack_from_depth_and_rays_equals_packing_the_points(motorcycle):
    rgb, _ = motorcycle
    _, _, disparity = stereo_motorcycle()
    depth = CAM.disparity_to_depth(np.where(np.isfinite(disparity), disparity, np.nan)).astype(np.float32)
    v, u = np.mgrid[0:500, 0:741].astype(np.float32)
    rays = np.stack(((u - CAM.cx) / CAM.fx, (v - CAM.cy) / CAM.fy, np.ones_like(u)), axis=-1).astype(np.float32)
    expected = pack_xyzrgb(depth[..., None] * rays, rgb).data
    buffer = array.array("B", bytes(1)) * len(expected)
    assert pack_xyzrgb(depth=depth, rays=rays, colors=rgb, out=buffer).data.tobytes() == expected
    # Decimated views (what the node passes) are strided, not contiguous.
    sub = pack_xyzrgb(depth=depth[::2, ::2], rays=rays[::2, ::2], colors=rgb[::2, ::2])
    assert sub.data == pack_xyzrgb(depth[::2, ::2, None] * rays[::2, ::2], rgb[::2, ::2]).data
    with pytest.raises(ValueError, match="either points, or depth together with rays"):
        pack_xyzrgb(depth=depth, colors=rgb)
    with pytest.raises(ValueError, match="H x W x 3"):
        pack_xyzrgb(depth=depth, rays=rays[:, :, :2], colors=rgb)
