"""rosbag2 MCAP writing, recovery after kill -9, and synchronized stereo reading with sparse depth.

Bags are written with real messages: the Middlebury motorcycle pair, camera_infos from its calibration, a
LiDAR cloud made by back-projecting ground-truth pixels into a lidar frame placed by /tf_static.
"""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from skimage.data import stereo_motorcycle

from mono2stereo_core.bags import BagError, StereoBagReader, StereoBagWriter, find_bags, recover_bag
from mono2stereo_core.geometry import MOTORCYCLE_CAMERA, depth_to_points
from mono2stereo_core.image_encoding import encode_image
from mono2stereo_core.pointcloud import FLOAT32, UINT16, invert_transform, quaternion_to_matrix

TS = get_typestore(Stores.ROS2_KILTED)
T0 = 1_700_000_000_000_000_000
PERIOD = 66_666_667
CAM = MOTORCYCLE_CAMERA

# /tf_static: base_link -> left optical frame and base_link -> lidar (a real-looking mount: yawed, tilted).
Q_CAM = np.array([-0.5, 0.5, -0.5, 0.5])  # REP 103 body -> optical
Q_LIDAR = np.array([0.02, -0.03, 0.1, 1.0]) / np.linalg.norm([0.02, -0.03, 0.1, 1.0])
T_BASE_CAM = np.eye(4)
T_BASE_CAM[:3, :3], T_BASE_CAM[:3, 3] = quaternion_to_matrix(Q_CAM), [0.10, 0.05, 1.20]
T_BASE_LIDAR = np.eye(4)
T_BASE_LIDAR[:3, :3], T_BASE_LIDAR[:3, 3] = quaternion_to_matrix(Q_LIDAR), [0.05, -0.02, 1.45]
T_CAM_LIDAR = invert_transform(T_BASE_CAM) @ T_BASE_LIDAR


def header(stamp_ns, frame):
    return TS.types["std_msgs/msg/Header"](
        stamp=TS.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
        frame_id=frame,
    )


def image_msg(array, encoding, stamp_ns, frame="left_optical"):
    step, data = encode_image(array, encoding)
    return TS.types["sensor_msgs/msg/Image"](
        header=header(stamp_ns, frame), height=array.shape[0], width=array.shape[1], encoding=encoding,
        is_bigendian=0, step=step, data=np.frombuffer(data, dtype=np.uint8),
    )


def info_msg(camera, side, stamp_ns, *, fx=None, right_cy_offset=0.0, width=None):
    fx = camera.fx if fx is None else fx
    tx = -fx * camera.baseline if side == "right" else 0.0
    cx = camera.cx + (camera.doffs if side == "right" else 0.0)
    cy = camera.cy + (right_cy_offset if side == "right" else 0.0)
    p = np.array([fx, 0, cx, tx, 0, camera.fy, cy, 0, 0, 0, 1, 0], dtype=np.float64)
    return TS.types["sensor_msgs/msg/CameraInfo"](
        header=header(stamp_ns, f"{side}_optical"), height=camera.height, width=width or camera.width,
        distortion_model="plumb_bob", d=np.zeros(5), k=np.array([fx, 0, cx, 0, camera.fy, cy, 0, 0, 1.0]),
        r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
        roi=TS.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def cloud_msg(points_lidar, stamp_ns, frame="lidar"):
    """A Velodyne-like layout: x y z intensity (float32), ring (uint16), 2 bytes padding -> 20-byte points."""
    n = points_lidar.shape[0]
    dtype = np.dtype({"names": ["x", "y", "z", "intensity", "ring"], "formats": ["<f4"] * 4 + ["<u2"],
                      "offsets": [0, 4, 8, 12, 16], "itemsize": 20})
    buf = np.zeros(n, dtype=dtype)
    for k, name in enumerate("xyz"):
        buf[name] = points_lidar[:, k]
    buf["intensity"], buf["ring"] = 7.0, np.arange(n) % 32
    pf = TS.types["sensor_msgs/msg/PointField"]
    fields = [pf(name=nm, offset=o, datatype=FLOAT32, count=1) for nm, o in (("x", 0), ("y", 4), ("z", 8), ("intensity", 12))]
    fields.append(pf(name="ring", offset=16, datatype=UINT16, count=1))
    return TS.types["sensor_msgs/msg/PointCloud2"](
        header=header(stamp_ns, frame), height=1, width=n, fields=fields, is_bigendian=False, point_step=20,
        row_step=20 * n, data=buf.view(np.uint8).reshape(-1), is_dense=True,
    )


def tf_static_msg(stamp_ns):
    ts_type, tf_type = TS.types["geometry_msgs/msg/TransformStamped"], TS.types["geometry_msgs/msg/Transform"]
    vec, quat = TS.types["geometry_msgs/msg/Vector3"], TS.types["geometry_msgs/msg/Quaternion"]

    def stamped(child, T, q):
        return ts_type(
            header=header(stamp_ns, "base_link"), child_frame_id=child,
            transform=tf_type(translation=vec(x=T[0, 3], y=T[1, 3], z=T[2, 3]), rotation=quat(x=q[0], y=q[1], z=q[2], w=q[3])),
        )

    return TS.types["tf2_msgs/msg/TFMessage"](
        transforms=[stamped("left_optical", T_BASE_CAM, Q_CAM), stamped("lidar", T_BASE_LIDAR, Q_LIDAR)]
    )


@pytest.fixture(scope="module")
def motorcycle():
    left, right, disparity = stereo_motorcycle()
    depth = CAM.disparity_to_depth(np.where(np.isfinite(disparity), disparity, np.nan))
    return left, right, depth


@pytest.fixture(scope="module")
def lidar_pixels(motorcycle):
    """5 % of the ground-truth pixels, as a LiDAR would sample them."""
    depth = motorcycle[2]
    rng = np.random.default_rng(0)
    mask = np.isfinite(depth) & (rng.random(depth.shape) < 0.05)
    points_cam = depth_to_points(np.where(mask, depth, np.nan), CAM.fx, CAM.fy, CAM.cx, CAM.cy)[mask]
    points_lidar = points_cam.astype(np.float64) @ T_CAM_LIDAR[:3, :3]  # R^T (p - t), row vectors
    points_lidar -= T_CAM_LIDAR[:3, :3].T @ T_CAM_LIDAR[:3, 3]
    return mask, points_lidar.astype(np.float32)


N_PAIRS = 4


@pytest.fixture(scope="module")
def stereo_bag(tmp_path_factory, motorcycle, lidar_pixels):
    left, right, depth = motorcycle
    _, points_lidar = lidar_pixels
    out = tmp_path_factory.mktemp("bags")
    with StereoBagWriter(out, session_name="session") as writer:
        writer.write_msg("/tf_static", tf_static_msg(T0), stamp_ns=T0)
        for k in range(N_PAIRS):
            t = T0 + k * PERIOD
            writer.write_msg("/stereo/left/image_rect", image_msg(left, "rgb8", t))
            # The right camera is triggered 2 ms later and published as bgr8.
            writer.write_msg("/stereo/right/image_rect", image_msg(np.ascontiguousarray(right[..., ::-1]), "bgr8", t + 2_000_000, "right_optical"))
            writer.write_msg("/stereo/left/camera_info", info_msg(CAM, "left", t))
            writer.write_msg("/stereo/right/camera_info", info_msg(CAM, "right", t + 2_000_000))
            writer.write_msg("/lidar/points", cloud_msg(points_lidar, t + 1_000_000))
            mm = np.where(np.isfinite(depth), np.round(depth * 1000), 0).astype(np.uint16)
            writer.write_msg("/depth/image", image_msg(mm, "16UC1", t))
        # A right frame without a left partner within slop.
        writer.write_msg("/stereo/right/image_rect", image_msg(right, "rgb8", T0 + N_PAIRS * PERIOD + 30_000_000))
    return writer.path


def test_pairs_images_and_camera_round_trip(stereo_bag, motorcycle):
    left, right, _ = motorcycle
    reader = StereoBagReader(stereo_bag)
    assert (reader.left_topic, reader.right_topic) == ("/stereo/left/image_rect", "/stereo/right/image_rect")
    assert reader.left_info_topic == "/stereo/left/camera_info"
    assert len(reader) == N_PAIRS
    assert reader.stamps == [T0 + k * PERIOD for k in range(N_PAIRS)]
    sample = reader[-1]
    assert sample.left.dtype == np.uint8 and sample.left.shape == (500, 741, 3)
    np.testing.assert_array_equal(sample.left, left)
    np.testing.assert_array_equal(sample.right, right)
    assert sample.sparse_depth is None
    assert sample.frame_id == "left_optical"
    cam = sample.camera
    for name in ("fx", "fy", "cx", "cy", "baseline", "doffs", "width", "height"):
        assert getattr(cam, name) == pytest.approx(getattr(CAM, name), rel=1e-9), name
    # A single .mcap file reads the same as its bag directory.
    assert StereoBagReader(stereo_bag / "session_0.mcap").stamps == reader.stamps
    # Pickling (DataLoader workers) drops the open file handles and reopens lazily.
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone[0].right, right)


def test_lidar_projected_with_tf_static_equals_ground_truth(stereo_bag, motorcycle, lidar_pixels):
    depth_gt = motorcycle[2]
    mask, _ = lidar_pixels
    reader = StereoBagReader(stereo_bag, lidar_topic="/lidar/points", slop_s=0.005, require_depth=True)
    assert len(reader) == N_PAIRS
    sparse = reader[0].sparse_depth
    assert sparse.shape == depth_gt.shape and sparse.dtype == np.float32
    hit = np.isfinite(sparse)
    # Every sampled pixel comes back (nearest-pixel rounding of an exact back-projection), nothing else does.
    np.testing.assert_array_equal(hit, mask)
    rel = np.abs(sparse[mask] - depth_gt[mask]) / depth_gt[mask]
    assert rel.max() < 1e-3, rel.max()


def test_static_extrinsic_parameter_replaces_tf(stereo_bag, motorcycle, lidar_pixels):
    mask, _ = lidar_pixels
    reader = StereoBagReader(stereo_bag, lidar_topic="/lidar/points", slop_s=0.005, T_cam_lidar=T_CAM_LIDAR)
    sparse = reader[1].sparse_depth
    assert np.array_equal(np.isfinite(sparse), mask)
    wrong = T_CAM_LIDAR.copy()
    wrong[0, 3] += 0.5  # a 0.5 m calibration error moves every point
    moved = StereoBagReader(stereo_bag, lidar_topic="/lidar/points", slop_s=0.005, T_cam_lidar=wrong)[1].sparse_depth
    assert (np.isfinite(moved) & mask).sum() < 0.2 * mask.sum()


def test_depth_image_topic_gives_metres(stereo_bag, motorcycle):
    depth_gt = motorcycle[2]
    sparse = StereoBagReader(stereo_bag, depth_topic="/depth/image")[2].sparse_depth
    valid = np.isfinite(depth_gt)
    np.testing.assert_array_equal(np.isfinite(sparse), valid)
    assert np.abs(sparse[valid] - depth_gt[valid]).max() <= 0.0005 + 1e-6


def test_rosbags_and_mcap_read_the_writer_output(stereo_bag):
    with Reader(stereo_bag) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts["/stereo/left/image_rect"] == N_PAIRS
        assert counts["/stereo/right/image_rect"] == N_PAIRS + 1
        assert counts["/tf_static"] == 1
        tf_conn = next(c for c in reader.connections if c.topic == "/tf_static")
        assert tf_conn.ext.offered_qos_profiles[0].durability.name == "TRANSIENT_LOCAL"
        assert sum(1 for _ in reader.messages()) == reader.message_count
    files = sorted(stereo_bag.glob("*.mcap"))
    assert [f.name for f in files] == ["session_0.mcap"]
    with files[0].open("rb") as f:
        decoded = [
            (channel.topic, msg.height)
            for _, channel, _, msg in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages(
                topics=["/stereo/left/image_rect"]
            )
        ]
    assert decoded == [("/stereo/left/image_rect", 500)] * N_PAIRS


def test_split_by_size_produces_several_readable_files(tmp_path, motorcycle):
    left, right, _ = motorcycle
    with StereoBagWriter(tmp_path, split_size_bytes=3_000_000) as writer:
        for k in range(5):
            t = T0 + k * PERIOD
            writer.write_msg("/cam/left/image_rect", image_msg(left, "rgb8", t))
            writer.write_msg("/cam/right/image_rect", image_msg(right, "rgb8", t))
            writer.write_msg("/cam/left/camera_info", info_msg(CAM, "left", t))
            writer.write_msg("/cam/right/camera_info", info_msg(CAM, "right", t))
    files = sorted(writer.path.glob("*.mcap"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert len(files) >= 3
    assert writer.path.name.startswith("rosbag2_")
    total = 0
    for f in files:
        assert f.stat().st_size <= 3_000_000 + 100_000
        with f.open("rb") as fh:
            total += make_reader(fh).get_summary().statistics.message_count
    assert total == 20
    with Reader(writer.path) as reader:
        assert reader.message_count == 20
    info = yaml.safe_load((writer.path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["relative_file_paths"] == [f.name for f in files]
    assert sum(f["message_count"] for f in info["files"]) == 20
    assert len(StereoBagReader(writer.path)) == 5
    assert find_bags(tmp_path) == [writer.path]


def test_split_by_duration(tmp_path, motorcycle):
    small = motorcycle[0][:48, :64]
    with StereoBagWriter(tmp_path, session_name="dur", split_duration_s=1.0) as writer:
        for k in range(30):  # 3 s at 10 Hz
            writer.write_msg("/left/image_rect", image_msg(small, "rgb8", T0 + k * 100_000_000))
    assert len(list(writer.path.glob("*.mcap"))) == 3
    with Reader(writer.path) as reader:
        assert reader.message_count == 30


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from mono2stereo_core.bags import StereoBagWriter
    from mono2stereo_core.image_encoding import encode_image
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    writer = StereoBagWriter(sys.argv[1], session_name="crash", flush_interval_s=0.2)
    stop_after = int(sys.argv[2])
    img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    step, data = encode_image(img, "rgb8")
    k = 0
    while True:
        t = 1_700_000_000_000_000_000 + k * 50_000_000
        msg = ts.types["sensor_msgs/msg/Image"](
            header=ts.types["std_msgs/msg/Header"](
                stamp=ts.types["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9), frame_id="l"),
            height=120, width=160, encoding="rgb8", is_bigendian=0, step=step,
            data=np.frombuffer(data, np.uint8))
        writer.write_msg("/left/image_rect", msg)
        k += 1
        print(k, flush=True)
        time.sleep(0.05)
        if k == stop_after:
            # The camera stops; the recorder stays up (only the background flush runs) until it is killed.
            time.sleep(3600)
    """
)


def run_and_kill(tmp_path, *, stop_after, kill_after, idle_s=0.0):
    """Starts the writer script, SIGKILLs it once it reported ``kill_after`` messages (+ idle_s); returns count."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "out"), str(stop_after)], stdout=subprocess.PIPE, text=True, env=env
    )
    written = 0
    deadline = time.monotonic() + 60
    try:
        while written < kill_after and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            written = int(line)
        time.sleep(idle_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert written >= kill_after, "writer subprocess did not get going"
    return written


def test_kill_9_while_idle_loses_nothing(tmp_path):
    written = run_and_kill(tmp_path, stop_after=25, kill_after=25, idle_s=1.0)
    report = recover_bag(tmp_path / "out" / "crash")
    # The background flush handed the last messages to the OS although no further write came.
    assert report.message_count == written == 25


def test_kill_9_then_recover_reads_up_to_the_last_second(tmp_path):
    written = run_and_kill(tmp_path, stop_after=0, kill_after=40)
    bag = tmp_path / "out" / "crash"
    assert not (bag / "metadata.yaml").exists()
    with pytest.raises(BagError, match="recover_bag"):
        StereoBagReader(bag)

    report = recover_bag(bag)
    assert report.salvaged_files == ("crash_0.mcap",)
    # 20 messages per second, flushed every 0.2 s: at most ~0.5 s (10 messages) may be lost, never ~1 s.
    assert report.message_count >= written - 10
    with Reader(bag) as reader:
        stamps = [t for _, t, _ in reader.messages()]
    assert len(stamps) == report.message_count
    assert stamps == [1_700_000_000_000_000_000 + k * 50_000_000 for k in range(len(stamps))]
    # Recovery is idempotent on a now-healthy bag.
    assert recover_bag(bag).salvaged_files == ()


def test_truncated_bag_is_a_clear_error_and_recoverable(tmp_path, motorcycle):
    small = motorcycle[0][:48, :64]
    cam = CAM.scaled(64 / 741, 48 / 500)
    with StereoBagWriter(tmp_path, session_name="t", flush_interval_s=0.0) as writer:
        for k in range(20):
            t = T0 + k * PERIOD
            writer.write_msg("/left/image_rect", image_msg(small, "rgb8", t))
            writer.write_msg("/right/image_rect", image_msg(small, "rgb8", t))
            writer.write_msg("/left/camera_info", info_msg(cam, "left", t))
            writer.write_msg("/right/camera_info", info_msg(cam, "right", t))
    mcap_file = writer.path / "t_0.mcap"
    size = mcap_file.stat().st_size
    with mcap_file.open("r+b") as f:
        f.truncate(int(size * 0.6))
    with pytest.raises(BagError, match="corrupt or truncated"):
        StereoBagReader(writer.path)
    recover_bag(writer.path)
    n = len(StereoBagReader(writer.path))
    assert 8 <= n < 20


def test_error_messages_name_the_problem(tmp_path, stereo_bag, motorcycle):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StereoBagReader(tmp_path / "nope")
    with pytest.raises(BagError, match=r"(?s)/nope/image.*the bag has: .*/stereo/left/camera_info"):
        StereoBagReader(stereo_bag, left_topic="/nope/image")
    with pytest.raises(BagError, match="must be a sensor_msgs/msg/PointCloud2 topic but it is sensor_msgs/msg/Image"):
        StereoBagReader(stereo_bag, lidar_topic="/depth/image")

    left = motorcycle[0]
    cases = {
        "zero focal length": dict(fx=0.0),
        "not a rectified pair": dict(right_cy_offset=12.0),
        "camera_info says": dict(width=640),
    }
    for k, (message, kwargs) in enumerate(cases.items()):
        with StereoBagWriter(tmp_path, session_name=f"bad{k}") as writer:
            writer.write_msg("/l/image_rect", image_msg(left, "rgb8", T0))
            writer.write_msg("/r/image_rect", image_msg(left, "rgb8", T0))
            fx = kwargs.get("fx")
            width = kwargs.get("width")
            writer.write_msg("/l/camera_info", info_msg(CAM, "left", T0, fx=fx, width=width))
            writer.write_msg("/r/camera_info", info_msg(CAM, "right", T0, fx=fx, width=width, right_cy_offset=kwargs.get("right_cy_offset", 0.0)))
        with pytest.raises(BagError, match=message):
            StereoBagReader(writer.path, left_topic="/l/image_rect", right_topic="/r/image_rect",
                            left_info_topic="/l/camera_info", right_info_topic="/r/camera_info")

    # No /tf_static and no T_cam_lidar: the LiDAR cannot be placed.
    with StereoBagWriter(tmp_path, session_name="notf") as writer:
        writer.write_msg("/left/image_rect", image_msg(left, "rgb8", T0))
        writer.write_msg("/right/image_rect", image_msg(left, "rgb8", T0))
        writer.write_msg("/left/camera_info", info_msg(CAM, "left", T0))
        writer.write_msg("/right/camera_info", info_msg(CAM, "right", T0))
        writer.write_msg("/points", cloud_msg(np.ones((5, 3), np.float32), T0))
    with pytest.raises(BagError, match="no /tf_static .* pass T_cam_lidar"):
        StereoBagReader(writer.path, lidar_topic="/points")


def test_other_typestore_and_ambiguous_topics(tmp_path, motorcycle):
    small = motorcycle[0][:48, :64]
    cam = CAM.scaled(64 / 741, 48 / 500)
    with StereoBagWriter(tmp_path, session_name="humble", typestore="ros2_humble") as writer:
        for topic in ("/a/left/image_rect", "/b/left/image_rect", "/a/right/image_rect"):
            writer.write_msg(topic, image_msg(small, "rgb8", T0))
        writer.write_msg("/a/left/camera_info", info_msg(cam, "left", T0))
        writer.write_msg("/a/right/camera_info", info_msg(cam, "right", T0))
    with pytest.raises(BagError, match="several left image topics .* pass left_topic= explicitly"):
        StereoBagReader(writer.path, typestore=Stores.ROS2_HUMBLE)
    reader = StereoBagReader(writer.path, left_topic="/a/left/image_rect", typestore=Stores.ROS2_HUMBLE)
    assert len(reader) == 1 and reader[0].left.shape == (48, 64, 3)
    with pytest.raises(ValueError, match="unknown typestore"):
        StereoBagWriter(tmp_path, typestore="ros2_nonexistent")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # lark, imported by rclpy's message packages
def test_rclpy_serialized_messages_record_and_read_back(tmp_path, motorcycle):
    """The recorder passes rclpy's CDR bytes straight to write(); the reader must decode them exactly."""
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    left, right, _ = motorcycle

    def ros_image(array, stamp_ns, frame):
        msg = sensor_msgs.Image()
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
        msg.header.frame_id = frame
        msg.height, msg.width, msg.encoding = array.shape[0], array.shape[1], "rgb8"
        msg.step, data = encode_image(array, "rgb8")
        msg.data = data
        return msg

    def ros_info(side, stamp_ns):
        ref = info_msg(CAM, side, stamp_ns)
        msg = sensor_msgs.CameraInfo()
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
        msg.header.frame_id = f"{side}_optical"
        msg.height, msg.width, msg.distortion_model = ref.height, ref.width, ref.distortion_model
        msg.k, msg.r, msg.p, msg.d = ref.k.tolist(), ref.r.tolist(), ref.p.tolist(), ref.d.tolist()
        return msg

    with StereoBagWriter(tmp_path, session_name="rclpy") as writer:
        for k in range(2):
            t = T0 + k * PERIOD
            for topic, msg, msgtype in (
                ("/left/image_rect", ros_image(left, t, "left_optical"), "sensor_msgs/msg/Image"),
                ("/right/image_rect", ros_image(right, t, "right_optical"), "sensor_msgs/msg/Image"),
                ("/left/camera_info", ros_info("left", t), "sensor_msgs/msg/CameraInfo"),
                ("/right/camera_info", ros_info("right", t), "sensor_msgs/msg/CameraInfo"),
            ):
                writer.write(topic, msgtype, t + 5_000_000, serialization.serialize_message(msg))
    assert writer.topic_counts == {t: 2 for t in ("/left/image_rect", "/right/image_rect", "/left/camera_info", "/right/camera_info")}
    reader = StereoBagReader(writer.path)
    assert reader.stamps == [T0, T0 + PERIOD]
    np.testing.assert_array_equal(reader[1].left, left)
    np.testing.assert_array_equal(reader[1].right, right)
    assert reader[0].camera.baseline == pytest.approx(CAM.baseline)
