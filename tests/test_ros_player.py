"""player as a real process: a recorded bag comes back on the wire with its timing, rate factor and restamping."""

from __future__ import annotations

import time

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from ros_helpers import NodeProcess, RosClient, camera_info_pair, image_msg, stamp_to_ns, wait_until
from sensor_msgs.msg import CameraInfo, Image

from mono2stereo_core.bags import StereoBagWriter
from mono2stereo_core.geometry import StereoCamera

pytestmark = pytest.mark.ros

DOMAIN_ID = 63
PERIOD_NS = 100_000_000  # recorded at 10 Hz
COUNT = 10


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    out = tmp_path_factory.mktemp("bags")
    camera = StereoCamera(fx=400.0, fy=400.0, cx=80.0, cy=60.0, baseline=0.1, width=160, height=120)
    rng = np.random.default_rng(1)
    writer = StereoBagWriter(out, session_name="sample")
    start = 1_600_000_000_000_000_000
    for i in range(COUNT):
        t = start + i * PERIOD_NS
        image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        left_info, right_info = camera_info_pair(camera, stamp_ns=t, frame_id="left")
        writer.write("/left/image_rect", "sensor_msgs/msg/Image", t, serialize_message(image_msg(image, encoding="rgb8", stamp_ns=t, frame_id="left")))
        writer.write("/right/image_rect", "sensor_msgs/msg/Image", t, serialize_message(image_msg(image, encoding="rgb8", stamp_ns=t, frame_id="right")))
        writer.write("/left/camera_info", "sensor_msgs/msg/CameraInfo", t, serialize_message(left_info))
        writer.write("/right/camera_info", "sensor_msgs/msg/CameraInfo", t, serialize_message(right_info))
    return writer.close(), start


def test_player_replays_with_rate_restamp_and_exits(bag, tmp_path):
    path, start = bag
    client = RosClient(domain_id=DOMAIN_ID)
    try:
        arrivals: list[tuple[float, int]] = []
        client.node.create_subscription(
            Image, "/cam/left/image_rect", lambda m: arrivals.append((time.monotonic(), stamp_to_ns(m.header.stamp))), 50
        )
        infos, _ = client.collect(CameraInfo, "/cam/left/camera_info")
        before_ns = time.time_ns()
        proc = NodeProcess(
            "mono2stereo.player",
            [str(path), "--rate", "2", "--restamp", "--exit-when-done", "--wait-for-subscribers", "/cam/left/image_rect",
             "--ros-args", "-r", "/left/image_rect:=/cam/left/image_rect", "-r", "/left/camera_info:=/cam/left/camera_info"],
            domain_id=DOMAIN_ID,
            log_path=tmp_path / "player.log",
        )
        assert proc.wait(timeout=60) == 0, proc.log()
        assert wait_until(lambda: len(arrivals) == COUNT and len(infos) == COUNT, timeout=10), (len(arrivals), proc.log())
        times = np.array([a[0] for a in arrivals])
        stamps = np.array([a[1] for a in arrivals])
        # rate 2: the 100 ms recorded spacing plays back as 50 ms, and restamped headers keep that spacing.
        assert np.median(np.diff(times)) == pytest.approx(0.05, abs=0.02)
        np.testing.assert_array_equal(np.diff(stamps), PERIOD_NS // 2)
        assert stamps[0] >= before_ns and stamps[0] != start
        # Left image and left camera_info of one frame share the restamped stamp.
        assert [stamp_to_ns(m.header.stamp) for m in infos] == stamps.tolist()
        assert f"published {4 * COUNT} messages" in proc.log()
    finally:
        client.close()


def test_player_rejects_a_folder_that_is_not_a_bag(tmp_path):
    proc = NodeProcess("mono2stereo.player", [str(tmp_path), "--exit-when-done"], domain_id=DOMAIN_ID, log_path=tmp_path / "p.log")
    assert proc.wait(timeout=60) == 1
    assert "not a rosbag2 directory" in proc.log()
