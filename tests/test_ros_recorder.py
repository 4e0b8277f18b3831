"""recorder_node as a real process: no synchronized pair lost, sessions via SetBool, throttling, splitting,
extra sensors, and bags that stay readable after SIGINT, SIGTERM and ``kill -9``."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from mcap.reader import make_reader
from ros_helpers import NodeProcess, RosClient, camera_info_pair, image_msg, ros_args, stamp, wait_until
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import SetBool

from mono2stereo_core.bags import StereoBagReader, recover_bag
from mono2stereo_core.geometry import StereoCamera

pytestmark = pytest.mark.ros

DOMAIN_ID = 62
FRAME = "left_camera_optical_frame"


class StereoPublisher:
    """Publishes synchronized left/right images + camera_info at a fixed rate with consecutive stamps."""

    def __init__(self, client: RosClient, *, width: int, height: int) -> None:
        self.left = client.publisher(Image, "/left/image_rect")
        self.right = client.publisher(Image, "/right/image_rect")
        self.left_info = client.publisher(CameraInfo, "/left/camera_info")
        self.right_info = client.publisher(CameraInfo, "/right/camera_info")
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        self.left_msg = image_msg(image, encoding="rgb8", stamp_ns=0, frame_id=FRAME)
        self.right_msg = image_msg(image[:, ::-1].copy(), encoding="rgb8", stamp_ns=0, frame_id="right")
        camera = StereoCamera(fx=500.0, fy=500.0, cx=width / 2, cy=height / 2, baseline=0.12, width=width, height=height)
        self.infos = camera_info_pair(camera, stamp_ns=0, frame_id=FRAME)
        self.stamps: list[int] = []
        self.next_ns = time.time_ns()

    def wait_for_recorder(self) -> None:
        pubs = (self.left, self.right, self.left_info, self.right_info)
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs), timeout=60), "recorder not discovered"
        time.sleep(0.5)

    def publish(self, count: int, *, rate_hz: float) -> None:
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate_hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.next_ns += int(1e9 / rate_hz)
            header_stamp = stamp(self.next_ns)
            for msg in (self.left_msg, self.right_msg, *self.infos):
                msg.header.stamp = header_stamp
            self.left_info.publish(self.infos[0])
            self.right_info.publish(self.infos[1])
            self.left.publish(self.left_msg)
            self.right.publish(self.right_msg)
            self.stamps.append(self.next_ns)


def read_with_rosbags(bag: Path) -> dict[str, list[int]]:
    """Header stamps per topic, deserialized with rosbags."""
    stamps: dict[str, list[int]] = {}
    with AnyReader([bag]) as reader:
        for connection, _, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            header = getattr(msg, "header", None)
            value = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec if header is not None else -1
            stamps.setdefault(connection.topic, []).append(value)
    return stamps


def count_with_mcap(bag: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in sorted(bag.glob("*.mcap")):
        with path.open("rb") as f:
            for _, channel, _ in make_reader(f).iter_messages():
                counts[channel.topic] = counts.get(channel.topic, 0) + 1
    return counts


def only_bag(output_dir: Path) -> Path:
    bags = sorted(p for p in output_dir.iterdir() if p.is_dir())
    assert len(bags) == 1, bags
    return bags[0]


@pytest.fixture(scope="module")
def client():
    c = RosClient(domain_id=DOMAIN_ID)
    yield c
    c.close()


@pytest.mark.slow
def test_20s_session_at_15hz_640x480_loses_no_pair_and_sigint_finalizes(client, tmp_path):
    out = tmp_path / "recorded"
    proc = NodeProcess("mono2stereo.recorder_node", ros_args({"output_dir": str(out)}), domain_id=DOMAIN_ID, log_path=tmp_path / "rec.log")
    diagnostics, diag_sub = client.collect(DiagnosticArray, "/diagnostics")
    try:
        pub = StereoPublisher(client, width=640, height=480)
        pub.wait_for_recorder()
        pub.publish(300, rate_hz=15.0)
        # On a loaded machine the recorder may still be draining its DDS history when publishing ends;
        # "no pair lost" means all of them are written once it has caught up.
        assert wait_until(
            lambda: diagnostics and {kv.key: kv.value for kv in diagnostics[-1].status[0].values}["pairs_written"] == "300",
            timeout=30,
        ), (str({kv.key: kv.value for kv in diagnostics[-1].status[0].values}) if diagnostics else proc.log())
    finally:
        client.node.destroy_subscription(diag_sub)
        proc.signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, proc.log()
    bag = only_bag(out)
    assert (bag / "metadata.yaml").is_file()
    stamps = read_with_rosbags(bag)
    assert stamps["/left/image_rect"] == pub.stamps, proc.log()
    assert stamps["/right/image_rect"] == pub.stamps
    assert stamps["/left/camera_info"] == pub.stamps and stamps["/right/camera_info"] == pub.stamps
    counts = count_with_mcap(bag)
    assert counts["/left/image_rect"] == counts["/right/image_rect"] == 300


def test_service_sessions_throttle_split_extras_and_sigterm(client, tmp_path):
    out = tmp_path / "recorded"
    params = {
        "output_dir": str(out),
        "autostart": False,
        "min_interval": 0.1,
        "split_duration_s": 1.0,
        "record_lidar": True,
        "static_extrinsic": [0.1, 0.0, -0.05, 0.0, 0.0, 0.0, 1.0],
    }
    proc = NodeProcess("mono2stereo.recorder_node", ros_args(params), domain_id=DOMAIN_ID, log_path=tmp_path / "rec.log")
    diagnostics, diag_sub = client.collect(DiagnosticArray, "/diagnostics")
    try:
        pub = StereoPublisher(client, width=160, height=120)
        lidar = client.publisher(PointCloud2, "/lidar/points")
        pub.wait_for_recorder()
        pub.publish(5, rate_hz=15.0)  # not recording yet: nothing written
        srv = client.node.create_client(SetBool, "/recorder_node/record")
        assert srv.wait_for_service(timeout_sec=20)

        def call(data: bool) -> SetBool.Response:
            future = srv.call_async(SetBool.Request(data=data))
            assert wait_until(future.done, timeout=20)
            return future.result()

        assert call(True).success
        first = len(pub.stamps)
        pub.publish(30, rate_hz=15.0)  # 2 s of stamps 66.7 ms apart; min_interval 0.1 s keeps every other one
        cloud = PointCloud2()
        cloud.header.stamp, cloud.header.frame_id = stamp(pub.next_ns), "lidar"
        lidar.publish(cloud)
        time.sleep(1.0)
        stopped = call(False)
        assert stopped.success and "finalized" in stopped.message
        bag = only_bag(out)
        stamps = read_with_rosbags(bag)  # readable while the node keeps running
        assert stamps["/left/image_rect"] == pub.stamps[first::2]
        assert stamps["/right/image_rect"] == pub.stamps[first::2]
        assert len(stamps["/lidar/points"]) == 1
        assert len(stamps["/tf_static"]) == 1
        assert len(list(bag.glob("*.mcap"))) >= 2  # split every 1 s of bag time
        time.sleep(1.2)
        values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
        assert values["recording"] == "False"
        assert (values["pairs_written"], values["pairs_throttled"], values["dropped_queue_full"]) == ("15", "15", "0")
        assert int(values["pairs_synchronized"]) == 35  # 5 before the session started + 30

        assert call(True).success
        pub.publish(6, rate_hz=15.0)
        time.sleep(1.0)
    finally:
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.log()
        client.node.destroy_subscription(diag_sub)
    second = [p for p in out.iterdir() if p.is_dir() and p != bag]
    assert len(second) == 1
    counts = count_with_mcap(second[0])
    assert counts["/left/image_rect"] == counts["/right/image_rect"] == 3  # 6 pairs, every other kept
    assert len(read_with_rosbags(second[0])["/left/image_rect"]) == 3
    # What training/finetune.py reads: pairs with their calibration.
    with StereoBagReader(second[0]) as reader:
        assert len(reader) == 3
        assert reader[0].camera.baseline == pytest.approx(0.12)


def test_kill_9_leaves_a_recoverable_bag(client, tmp_path):
    out = tmp_path / "recorded"
    proc = NodeProcess("mono2stereo.recorder_node", ros_args({"output_dir": str(out)}), domain_id=DOMAIN_ID, log_path=tmp_path / "rec.log")
    try:
        pub = StereoPublisher(client, width=320, height=240)
        pub.wait_for_recorder()
        pub.publish(60, rate_hz=15.0)
        time.sleep(0.3)
    finally:
        proc.signal(signal.SIGKILL)
        proc.wait(timeout=20)
        proc.stop()
    bag = only_bag(out)
    recovery = recover_bag(bag)
    stamps = read_with_rosbags(bag)
    left = stamps["/left/image_rect"]
    # Everything older than ~1 s before the kill survives (the writer flushes every 0.5 s).
    assert len(left) >= 60 - 15, (len(left), recovery)
    assert left == pub.stamps[: len(left)]
    assert count_with_mcap(bag)["/left/image_rect"] == len(left)
