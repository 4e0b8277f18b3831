"""Shared plumbing for the ``tests/test_ros_*.py`` files: node subprocesses and an in-test rclpy client.

Each test file owns a ``ROS_DOMAIN_ID``; everything stays on this host (``ROS_AUTOMATIC_DISCOVERY_RANGE``).
The nodes under test run as real processes (``python -m mono2stereo.<node> --ros-args ...``); the test talks
to them through its own rclpy context with reliable QoS, waiting for discovery before publishing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PACKAGE_SRC = REPO / "ros2_ws" / "src" / "mono2stereo"
if str(PACKAGE_SRC) not in sys.path:
    sys.path.insert(0, str(PACKAGE_SRC))

import rclpy  # noqa: E402
from mono2stereo.conversions import stamp_to_ns, uint8_array  # noqa: E402
from mono2stereo.dds_profile import PROFILE_FILE_NAME, use_profile  # noqa: E402
from mono2stereo.dds_profile import PROFILE_VARIABLES as DDS_PROFILE_VARIABLES  # noqa: E402
from mono2stereo.diagnostics import level_of  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from mono2stereo_core.geometry import StereoCamera  # noqa: E402

__all__ = ["stamp_to_ns", "level_of", "uint8_array", "DDS_PROFILE_VARIABLES"]  # re-exported: test modules import the package through this file

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


# In-process clients (RosClient) read discovery settings from this process's environment; the benchmarks
# import this module outside pytest (no conftest), so it pins discovery to this host itself.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# The shipped Fast DDS profile (50 ms writer heartbeats) for this process and every node it starts, as
# docs/ros.md recommends for large images: with Fast DDS's 3 s default, one lost fragment stalls a topic for
# seconds and the recorder test lost pairs on a loaded CI machine. Set before any participant exists (pytest
# imports every test module, hence this one, before the first test runs). An explicit setting wins.
DDS_PROFILE = REPO / "config" / PROFILE_FILE_NAME
use_profile(DDS_PROFILE)


def ros_env(domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_SRC), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # The nodes share 2 cores with the test; one torch thread keeps timings honest and the machine usable.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class NodeProcess:
    """A node started with ``python -m <module> <args>``; stdout+stderr go to ``log_path``."""

    def __init__(self, module: str, args: list[str], *, domain_id: int, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=ros_env(domain_id),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, *, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def ros_args(params: dict[str, object], *, namespace: str | None = None, name: str | None = None) -> list[str]:
    """``--ros-args -p k:=v ...`` (lists as YAML flow sequences, booleans lower-case)."""
    out = ["--ros-args"]
    for key, value in params.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = "[" + ",".join(repr(float(v)) for v in value) + "]"
        else:
            text = str(value)
        out += ["-p", f"{key}:={text}"]
    if namespace:
        out += ["-r", f"__ns:={namespace}"]
    if name:
        out += ["-r", f"__node:={name}"]
    return out


class RosClient:
    """The test's own rclpy context + node, spun on a background thread."""

    def __init__(self, *, domain_id: int, name: str = "test_client") -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutdown races
                if not self.context.ok():
                    return
                raise

    def collect(self, msg_type, topic: str, *, qos: QoSProfile = RELIABLE) -> tuple[list, object]:
        """Subscribes and returns ``(messages, subscription)``; messages are appended as they arrive."""
        messages: list = []
        sub = self.node.create_subscription(msg_type, topic, messages.append, qos)
        return messages, sub

    def publisher(self, msg_type, topic: str, *, qos: QoSProfile = RELIABLE):
        return self.node.create_publisher(msg_type, topic, qos)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def stamp(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def image_msg(array: np.ndarray, *, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    """A ``sensor_msgs/Image`` from an H x W (x C) array already in ``encoding``'s dtype/channels."""
    from mono2stereo_core.image_encoding import encode_image

    msg = Image()
    msg.header.stamp = stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    if array.size:
        step, data = encode_image(array, encoding)
        msg.step, msg.data = step, uint8_array(data)
    return msg


def camera_info_pair(camera: StereoCamera, *, stamp_ns: int, frame_id: str) -> tuple[CameraInfo, CameraInfo]:
    """Rectified left/right CameraInfo for ``camera``: right ``P[3] = -fx * B``, ``cx_r = cx + doffs``."""
    infos = []
    for side in ("left", "right"):
        info = CameraInfo()
        info.header.stamp = stamp(stamp_ns)
        info.header.frame_id = frame_id
        info.width, info.height = camera.width, camera.height
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        cx = camera.cx + (camera.doffs if side == "right" else 0.0)
        tx = -camera.fx * camera.baseline if side == "right" else 0.0
        info.k = [camera.fx, 0.0, cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [camera.fx, 0.0, cx, tx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        infos.append(info)
    return infos[0], infos[1]


def motorcycle_pair(*, width: int, height: int) -> tuple[np.ndarray, np.ndarray, StereoCamera]:
    """The Middlebury motorcycle pair resized to ``width x height`` with its rescaled calibration."""
    import cv2
    from skimage.data import stereo_motorcycle

    from mono2stereo_core.geometry import MOTORCYCLE_CAMERA

    left, right, _ = stereo_motorcycle()
    sx, sy = width / left.shape[1], height / left.shape[0]
    left = cv2.resize(left, (width, height), interpolation=cv2.INTER_AREA)
    right = cv2.resize(right, (width, height), interpolation=cv2.INTER_AREA)
    camera = MOTORCYCLE_CAMERA.scaled(sx, sy)
    camera = StereoCamera(
        fx=camera.fx, fy=camera.fy, cx=camera.cx, cy=camera.cy, baseline=camera.baseline, doffs=camera.doffs,
        width=width, height=height,
    )
    return left, right, camera


def tiny_checkpoint(directory: Path, *, max_disparity: int = 64) -> Path:
    """A randomly initialised ``m2s_tiny`` checkpoint (safetensors + JSON sidecar); no weights are downloaded."""
    import torch

    from mono2stereo_core.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("m2s_tiny", max_disparity=max_disparity)
    return Path(save_checkpoint(directory / "m2s_tiny.safetensors", model, sidecar={}))
