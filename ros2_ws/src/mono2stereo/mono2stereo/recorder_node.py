"""``recorder_node``: synchronized stereo pairs (+ their camera_info, optional sparse depth / LiDAR, ``/tf_static``)
to rosbag2 MCAP sessions for ``training/finetune.py --bags recorded/``.

Messages are received serialized (``raw=True``) and written byte-for-byte, so recording costs no
deserialization; pairing uses the stamp read straight from the CDR header. A writer thread owns the bag, so a
slow disk delays writes instead of blocking subscriptions (its queue is bounded; overflow is counted as
dropped). Sessions start at launch (``autostart``) or through the ``~/record`` ``std_srvs/SetBool`` service.
SIGINT and SIGTERM close the bag cleanly; after ``kill -9`` ``mono2stereo_core.bags.recover_bag`` restores it.
"""

from __future__ import annotations

import queue
import signal
import struct
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import SetBool

from mono2stereo.diagnostics import ERROR, OK, WARN, RateWindow, diagnostic_array
from mono2stereo.qos import RELIABILITY_CHOICES, latched_qos, subscription_qos
from mono2stereo_core.bags import StereoBagWriter
from mono2stereo_core.sync import ApproximateTimeSynchronizer, ExactTimeSynchronizer

try:  # not on PyPI; present on every ROS install
    from tf2_msgs.msg import TFMessage
except ImportError:  # pragma: no cover - depends on the environment
    TFMessage = None

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_CLOUD = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
_STAMP = struct.Struct("<iI")
_STAMP_BE = struct.Struct(">iI")


def cdr_header_stamp_ns(data: bytes) -> int:
    """``header.stamp`` of a serialized message whose first field is a ``std_msgs/Header``, in nanoseconds.

    CDR starts with a 4-byte encapsulation header (byte 1: 0 = big, 1 = little endian); ``stamp.sec``
    (int32) and ``stamp.nanosec`` (uint32) follow, already 4-byte aligned.
    """
    if len(data) < 12:
        raise ValueError(f"serialized message of {len(data)} bytes is too short to hold a header stamp")
    sec, nanosec = (_STAMP if data[1] & 1 else _STAMP_BE).unpack_from(data, 4)
    return sec * 1_000_000_000 + nanosec


def _descriptor(description: str, *, read_only: bool = False, floats=None, ints=None) -> ParameterDescriptor:
    d = ParameterDescriptor(description=description, read_only=read_only)
    if floats is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(floats[0]), to_value=float(floats[1]))]
    if ints is not None:
        d.integer_range = [IntegerRange(from_value=int(ints[0]), to_value=int(ints[1]), step=1)]
    return d


class _BagWorker(threading.Thread):
    """Owns the ``StereoBagWriter``: every open/write/close goes through one queue, so order is preserved."""

    def __init__(self, *, max_queue: int, logger) -> None:
        super().__init__(name="recorder_node-writer", daemon=True)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._logger = logger
        self._writer: StereoBagWriter | None = None
        self.written = 0
        self.write_errors = 0
        self.last_error = ""

    def submit(self, item: tuple, *, block: bool = False) -> bool:
        try:
            self._queue.put(item, block=block)
            return True
        except queue.Full:
            return False

    def run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                # Idle: hand buffered messages to the OS so a crash now loses nothing already received.
                if self._writer is not None:
                    self._writer.flush()
                continue
            kind = item[0]
            try:
                if kind == "open":
                    self._writer = item[1]
                elif kind == "write" and self._writer is not None:
                    _, topic, msgtype, stamp_ns, data = item
                    self._writer.write(topic, msgtype, stamp_ns, data)
                    self.written += 1
                elif kind in ("close", "stop") and self._writer is not None:
                    writer, self._writer = self._writer, None
                    writer.close()
            except Exception as exc:  # a full disk must not kill the node; diagnostics show it
                self.write_errors += 1
                self.last_error = f"{kind}: {type(exc).__name__}: {exc}"
                self._logger.error(f"bag writer: {self.last_error}")
            if kind == "stop":
                return


class RecorderNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__("recorder_node", **node_kwargs)
        p = self.declare_parameter
        p("output_dir", "recorded", _descriptor("Directory receiving one bag per session", read_only=True))
        p("session_prefix", "session", _descriptor("Bag directory name prefix; a UTC timestamp follows", read_only=True))
        p("autostart", True, _descriptor("Start a session at launch (otherwise wait for ~/record true)", read_only=True))
        p("split_size_mb", 4096, _descriptor("Start a new bag file after this many MB; 0 = never", read_only=True, ints=(0, 1 << 20)))
        p("split_duration_s", 0.0, _descriptor("Start a new bag file after this many seconds; 0 = never", read_only=True, floats=(0.0, 86400.0)))
        p("min_interval", 0.0, _descriptor("Keep at most one pair per this many seconds (0 = every pair)", floats=(0.0, 3600.0)))
        p("approximate_sync", False, _descriptor("Pair left/right within slop instead of equal stamps", read_only=True))
        p("slop", 0.01, _descriptor("Approximate sync: largest stamp difference of a pair (s)", read_only=True, floats=(0.0, 1.0)))
        # Large images reach the node seconds behind their small camera_info over DDS at high bandwidth (measured:
        # 640x480 at 15 Hz arrives in bursts); the queue must span that lag or the early camera_info is dropped.
        p("queue_size", 100, _descriptor("Unmatched messages kept per input by the synchronizer", read_only=True, ints=(1, 10000)))
        p("qos_reliability", "reliable", _descriptor(f"Input reliability, one of {RELIABILITY_CHOICES}", read_only=True))
        # Measured here: with depth 10, 640x480 pairs at 15 Hz lost ~half of their camera_info messages in the
        # reader history (images arrive in bursts and the small topics overflow); 100 lost none.
        p("qos_depth", 100, _descriptor("Input history depth", read_only=True, ints=(1, 10000)))
        p("max_write_queue", 256, _descriptor("Messages waiting for the disk before new ones are dropped", read_only=True, ints=(8, 100000)))
        p("record_sparse_depth", False, _descriptor("Also record sparse_depth (sensor_msgs/Image, REP 118)", read_only=True))
        p("record_lidar", False, _descriptor("Also record lidar/points (sensor_msgs/PointCloud2)", read_only=True))
        p("record_tf_static", True, _descriptor("Record /tf_static when tf2_msgs is installed", read_only=True))
        p(
            "static_extrinsic",
            [0.0],
            _descriptor(
                "Sensor-to-left-camera transform written as /tf_static when tf2_msgs is unavailable: "
                "[x, y, z, qx, qy, qz, qw] (m, unit quaternion); [0.0] = none",
                read_only=True,
            ),
        )
        p("static_extrinsic_parent", "left_camera_optical_frame", _descriptor("Parent frame of static_extrinsic", read_only=True))
        p("static_extrinsic_child", "lidar", _descriptor("Child frame of static_extrinsic", read_only=True))

        v = {name: param.value for name, param in self.get_parameters_by_prefix("").items()}
        if v["qos_reliability"] not in RELIABILITY_CHOICES:
            raise ValueError(f"qos_reliability must be one of {RELIABILITY_CHOICES}, instead got {v['qos_reliability']!r}")
        extrinsic = list(v["static_extrinsic"])
        if extrinsic != [0.0] and len(extrinsic) != 7:
            raise ValueError(f"static_extrinsic must be [x, y, z, qx, qy, qz, qw], instead got {extrinsic}")
        self._output_dir = Path(v["output_dir"]).expanduser()
        self._prefix = v["session_prefix"]
        self._split = {
            "split_size_bytes": int(v["split_size_mb"]) * 1024 * 1024 or None,
            "split_duration_s": float(v["split_duration_s"]) or None,
        }
        self._min_interval_ns = int(v["min_interval"] * 1e9)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._bag = _BagWorker(max_queue=int(v["max_write_queue"]), logger=self.get_logger())
        self._bag.start()
        self._recording = False
        self._session: Path | None = None
        self._state_lock = threading.Lock()
        self._last_pair_ns: int | None = None
        self._tf_static: bytes | None = None
        self._tf_static_written = False
        self._static_extrinsic = extrinsic if len(extrinsic) == 7 else None
        self._extrinsic_frames = (v["static_extrinsic_parent"], v["static_extrinsic_child"])
        self.pairs_synchronized = 0
        self.pairs_enqueued = 0
        self.pairs_throttled = 0
        self.dropped_queue_full = 0
        self.sparse_enqueued = 0
        self._pair_rate = RateWindow()

        qos = subscription_qos(reliability=v["qos_reliability"], depth=int(v["qos_depth"]))
        group = MutuallyExclusiveCallbackGroup()
        topics = {name: self.resolve_topic_name(name) for name in (
            "left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info", "sparse_depth", "lidar/points"
        )}
        self._topics = topics
        # Images and camera_info are synchronized together (as stereo_image_proc does), so every recorded
        # pair carries the calibration stamped with it and a reader never has to guess which one applies.
        if v["approximate_sync"]:
            self._sync = ApproximateTimeSynchronizer(
                4, queue_size=int(v["queue_size"]), slop_s=float(v["slop"]), callback=self._on_pair
            )
        else:
            self._sync = ExactTimeSynchronizer(4, queue_size=int(v["queue_size"]), callback=self._on_pair)

        def feed(index: int):
            return lambda data: self._sync.add(index, cdr_header_stamp_ns(data), data)

        for index, (msg_type, topic) in enumerate(
            ((Image, "left/image_rect"), (Image, "right/image_rect"), (CameraInfo, "left/camera_info"),
             (CameraInfo, "right/camera_info"))
        ):
            self.create_subscription(msg_type, topic, feed(index), qos, raw=True, callback_group=group)
        if v["record_sparse_depth"]:
            self.create_subscription(
                Image, "sparse_depth", lambda d: self._write_extra(topics["sparse_depth"], IMAGE, d), qos, raw=True,
                callback_group=group,
            )
        if v["record_lidar"]:
            self.create_subscription(
                PointCloud2, "lidar/points", lambda d: self._write_extra(topics["lidar/points"], POINT_CLOUD, d), qos,
                raw=True, callback_group=group,
            )
        self.tf_static_source = "none"
        if v["record_tf_static"] and TFMessage is not None:
            self.tf_static_source = "/tf_static"
            self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, latched_qos(), raw=True, callback_group=group)
        elif self._static_extrinsic is not None:
            self.tf_static_source = "static_extrinsic parameter"
            self._tf_static = _serialize_static_transform(self._static_extrinsic, *self._extrinsic_frames)

        self.create_service(SetBool, "~/record", self._on_record)
        self._pub_diagnostics = None
        from diagnostic_msgs.msg import DiagnosticArray

        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup())
        if v["autostart"]:
            self.start_session()
        self.get_logger().info(
            f"recording {topics['left/image_rect']} + {topics['right/image_rect']} into {self._output_dir} "
            f"(tf_static: {self.tf_static_source}); service {self.resolve_service_name('~/record')}"
        )

    # ------------------------------------------------------------------ sessions
    def start_session(self) -> Path:
        with self._state_lock:
            if self._recording:
                return self._session
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            # Created here (cheap: a folder and an empty file) so the path is known before the first write.
            writer = StereoBagWriter(self._output_dir, session_name=f"{self._prefix}_{stamp}", **self._split)
            path = writer.path
            self._bag.submit(("open", writer), block=True)
            self._session, self._recording, self._last_pair_ns = path, True, None
            self._tf_static_written = False
        self.get_logger().info(f"session started: {path}")
        return path

    def stop_session(self) -> Path | None:
        with self._state_lock:
            if not self._recording:
                return None
            self._recording = False
            path = self._session
            self._bag.submit(("close",), block=True)
        self.get_logger().info(f"session stopped: {path}")
        return path

    def shutdown(self) -> None:
        """Closes the session (bag metadata written) and waits for the writer to drain."""
        self.stop_session()
        self._bag.submit(("stop",), block=True)
        self._bag.join(timeout=60.0)

    def _on_record(self, request, response):
        if request.data:
            path = self.start_session()
            response.success, response.message = True, f"recording to {path}"
        else:
            path = self.stop_session()
            response.success = True
            response.message = f"stopped; bag {path} finalized" if path else "was not recording"
        return response

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        for param in parameters:
            if param.name == "min_interval":
                self._min_interval_ns = int(param.value * 1e9)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ data
    def _enqueue(self, topic: str, msgtype: str, stamp_ns: int, data: bytes) -> bool:
        if self._bag.submit(("write", topic, msgtype, stamp_ns, bytes(data))):
            return True
        self.dropped_queue_full += 1
        return False

    def _on_pair(self, left: bytes, right: bytes, left_info: bytes, right_info: bytes) -> None:
        stamp = cdr_header_stamp_ns(left)
        self.pairs_synchronized += 1
        with self._state_lock:
            if not self._recording:
                return
            if self._last_pair_ns is not None and stamp - self._last_pair_ns < self._min_interval_ns:
                self.pairs_throttled += 1
                return
            self._last_pair_ns = stamp
            t = self._topics
            if self._tf_static is not None and not self._tf_static_written:
                # Logged at the first pair's stamp: bag time stays camera time (splitting, readers).
                self._tf_static_written = self._enqueue("/tf_static", TF_MESSAGE, stamp, self._tf_static)
            # Log time = the pair's header stamp: split_duration_s and readers then follow camera time.
            ok = self._enqueue(t["left/image_rect"], IMAGE, stamp, left)
            ok = self._enqueue(t["right/image_rect"], IMAGE, stamp, right) and ok
            ok = self._enqueue(t["left/camera_info"], CAMERA_INFO, stamp, left_info) and ok
            ok = self._enqueue(t["right/camera_info"], CAMERA_INFO, stamp, right_info) and ok
            if ok:
                self.pairs_enqueued += 1
        self._pair_rate.tick()

    def _write_extra(self, topic: str, msgtype: str, data: bytes) -> None:
        with self._state_lock:
            if self._recording and self._enqueue(topic, msgtype, cdr_header_stamp_ns(data), data):
                self.sparse_enqueued += 1

    def _on_tf_static(self, data: bytes) -> None:
        with self._state_lock:
            self._tf_static = bytes(data)
            self._tf_static_written = False  # written again with the next pair

    def _publish_diagnostics(self) -> None:
        bag = self._bag
        level, message = OK, "recording" if self._recording else "idle"
        if self.dropped_queue_full or self._sync.dropped:
            level, message = WARN, (
                f"{self.dropped_queue_full} messages dropped (write queue full), {self._sync.dropped} unpaired; "
                "bursty input? see docs/ros.md, 'Large images over DDS'"
            )
        if bag.write_errors:
            level, message = ERROR, bag.last_error
        values = {
            "recording": self._recording,
            "session": str(self._session or ""),
            "pair_rate_hz": self._pair_rate.rate_hz(),
            "pairs_synchronized": self.pairs_synchronized,
            "pairs_written": self.pairs_enqueued,
            "pairs_throttled": self.pairs_throttled,
            "messages_written": bag.written,
            "write_queue": bag._queue.qsize(),
            "dropped_queue_full": self.dropped_queue_full,
            "dropped_unsynchronized": self._sync.dropped,
            "dropped_per_input": "left={} right={} left_info={} right_info={}".format(*self._sync.dropped_per_input),
            "sparse_written": self.sparse_enqueued,
            "write_errors": bag.write_errors,
            "tf_static_source": self.tf_static_source,
        }
        self._pub_diagnostics.publish(
            diagnostic_array(
                stamp=self.get_clock().now().to_msg(),
                name=f"{self.get_name()}: recorder",
                hardware_id=str(self._output_dir),
                level=level,
                message=message,
                values=values,
            )
        )


def _serialize_static_transform(extrinsic: list[float], parent: str, child: str) -> bytes:
    """CDR of a one-transform ``tf2_msgs/TFMessage``, built with rosbags (tf2_msgs may not be installed)."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    t = store.types
    x, y, z, qx, qy, qz, qw = (float(e) for e in extrinsic)
    now = time.time_ns()
    transform = t["geometry_msgs/msg/TransformStamped"](
        header=t["std_msgs/msg/Header"](
            stamp=t["builtin_interfaces/msg/Time"](sec=now // 1_000_000_000, nanosec=now % 1_000_000_000),
            frame_id=parent,
        ),
        child_frame_id=child,
        transform=t["geometry_msgs/msg/Transform"](
            translation=t["geometry_msgs/msg/Vector3"](x=x, y=y, z=z),
            rotation=t["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
        ),
    )
    return bytes(store.serialize_cdr(t[TF_MESSAGE](transforms=[transform]), TF_MESSAGE))


def main(args=None) -> int:
    # rclpy's own handlers would shut the context down mid-write; ours stop spinning, then close the bag.
    rclpy.init(args=args, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node = None
    try:
        node = RecorderNode()
        # One thread: every callback is short (the writer thread does the I/O), and rclpy's multi-threaded
        # executor was measured to starve small camera_info subscriptions next to 640x480 images.
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (ValueError, FileNotFoundError, ParameterException) as exc:
        print(f"recorder_node: {exc}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.shutdown()
            node.get_logger().info(
                f"finalized; {node.pairs_enqueued} pairs written, {node.dropped_queue_full} dropped"
            )
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
