#!/usr/bin/env python3
"""The main demo (``make demo``): the real ``stereo_node`` with the shipped model on a sample sequence.

    python scripts/demo.py --out demo_out [--frames 48] [--model weights/m2s_rt.safetensors] [--backend auto]

What it does, end to end through ROS 2 (real processes, reliable QoS, discovery kept on this host):

1. On first run it generates a sample into ``<out>/sample/`` (reused afterwards): a rosbag2 MCAP bag of a
   procedural scene filmed by a moving stereo rig (``synthesis.procedural.render_sequence``, exact ground
   truth), recorded as a 15 Hz camera, and a second bag with the Middlebury 2014 motorcycle pair
   (``skimage.data.stereo_motorcycle``, 741 x 500, with its calibration as camera_info). The two have different
   image sizes and calibrations, so they are played as two runs rather than one stream.
2. Starts ``python -m mono2stereo.stereo_node`` (namespace ``/stereo``) with the model, plays both bags through
   the package's :class:`~mono2stereo.player.BagPlayer` (restamped to playback time) and subscribes to
   ``disparity``, ``depth``, ``points2`` and ``/diagnostics``.
3. Writes ``<out>/``: ``frames/<segment>_NNNN.png`` (left | colorized disparity | depth) for every frame the
   node processed, ``summary.png`` (contact sheet), ``motorcycle.ply`` and ``procedural.ply`` (coloured point
   clouds from ``points2``), ``report.json`` (the motorcycle scored against ground truth beside OpenCV SGBM,
   bad-2 / density vs ground truth on the procedural frames, rate, latency, the node's diagnostics) and
   ``stereo_node.log``; prints rate and latency, exits 0. On failure it exits non-zero with the reason; the
   node process is stopped on every exit path, Ctrl-C included.

The player publishes at the camera rate times ``--rate`` (default 0.1, i.e. 1.5 Hz): the node keeps only the
newest pair (latest frame wins), so on a slow CPU frames it cannot keep up with are dropped, counted and
reported rather than queued.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PACKAGE_SRC = REPO / "ros2_ws" / "src" / "mono2stereo"
# In-tree use without colcon: the core from the repo root, the ROS package from its source folder.
for _path in (str(REPO), str(PACKAGE_SRC)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

NAMESPACE = "/stereo"
LEFT_FRAME = "left_camera_optical_frame"
RIGHT_FRAME = "right_camera_optical_frame"
DEFAULT_DOMAIN_ID = 77  # the demo's own domain, so it neither hears nor disturbs a robot on the default one
CAMERA_RATE_HZ = 15.0
SAMPLE_FORMAT = 2  # bump when the sample layout changes, so stale caches are regenerated
PRETRAIN_COMMAND = "python training/pretrain.py --config config/train/pretrain_rt.yaml"
INPUT_TOPICS = ("left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info")


class DemoError(RuntimeError):
    """A failure the user can act on; printed as one message, exit code 1."""


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# --------------------------------------------------------------------------------------------- the sample


@dataclass(frozen=True)
class SampleSpec:
    """What the cached sample was generated from; a different spec regenerates it."""

    width: int
    height: int
    frames: int
    seed: int
    max_disparity: float
    camera_rate_hz: float = CAMERA_RATE_HZ
    format: int = SAMPLE_FORMAT


def procedural_camera(width: int, height: int):
    """A robot-like rig for the procedural scene: ~58 deg horizontal field of view, 12 cm baseline."""
    from mono2stereo_core.geometry import StereoCamera

    f = 0.9 * width
    return StereoCamera(
        fx=f, fy=f, cx=width / 2 - 0.5, cy=height / 2 - 0.5, baseline=0.12, width=width, height=height
    )


def frame_key(rgb: np.ndarray) -> str:
    """Identity of a left image by content: the node's outputs are matched to frames through the left topic."""
    return hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=12).hexdigest()


def _header(ts, stamp_ns: int, frame_id: str):
    time_type = ts.types["builtin_interfaces/msg/Time"]
    return ts.types["std_msgs/msg/Header"](
        stamp=time_type(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id
    )


def _image(ts, rgb: np.ndarray, stamp_ns: int, frame_id: str):
    height, width = rgb.shape[:2]
    return ts.types["sensor_msgs/msg/Image"](
        header=_header(ts, stamp_ns, frame_id), height=height, width=width, encoding="rgb8", is_bigendian=0,
        step=3 * width, data=np.ascontiguousarray(rgb).reshape(-1),
    )


def _camera_infos(ts, camera, stamp_ns: int) -> tuple:
    """Rectified left/right CameraInfo: right ``P[3] = -fx * B`` and ``cx_right = cx + doffs`` (ROS convention)."""
    roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    infos = []
    for side, frame_id in (("left", LEFT_FRAME), ("right", RIGHT_FRAME)):
        cx = camera.cx + (camera.doffs if side == "right" else 0.0)
        tx = -camera.fx * camera.baseline if side == "right" else 0.0
        infos.append(
            ts.types["sensor_msgs/msg/CameraInfo"](
                header=_header(ts, stamp_ns, frame_id), height=camera.height, width=camera.width,
                distortion_model="plumb_bob", d=np.zeros(5),
                k=np.array([camera.fx, 0.0, cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0]),
                r=np.eye(3).reshape(-1),
                p=np.array([camera.fx, 0.0, cx, tx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0]),
                binning_x=0, binning_y=0,
                roi=roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
            )
        )
    return tuple(infos)


def _write_segment(bag_parent: Path, name: str, pairs, camera, *, period_ns: int) -> None:
    """One bag of synchronized pairs (+ camera_info with the same stamps) as a camera driver records them.

    A camera_info pair leads the first image by 0.2 s: a node that takes the latest camera_info then has the
    calibration before the first pair reaches it, whatever order DDS delivers the four topics in.
    """
    from mono2stereo_core.bags import StereoBagWriter, resolve_typestore

    ts = resolve_typestore(None)
    topic = {name_: f"{NAMESPACE}/{name_}" for name_ in INPUT_TOPICS}
    start_ns = 1_700_000_000 * 1_000_000_000
    with StereoBagWriter(bag_parent, session_name=name, typestore=ts) as writer:
        lead_ns = start_ns - 200_000_000
        for side, info in zip(("left", "right"), _camera_infos(ts, camera, lead_ns)):
            writer.write_msg(topic[f"{side}/camera_info"], info)
        for i, (left, right) in enumerate(pairs):
            stamp_ns = start_ns + i * period_ns
            left_info, right_info = _camera_infos(ts, camera, stamp_ns)
            writer.write_msg(topic["left/camera_info"], left_info)
            writer.write_msg(topic["right/camera_info"], right_info)
            writer.write_msg(topic["left/image_rect"], _image(ts, left, stamp_ns, LEFT_FRAME))
            writer.write_msg(topic["right/image_rect"], _image(ts, right, stamp_ns, RIGHT_FRAME))


def generate_sample(sample_dir: Path, spec: SampleSpec) -> dict:
    """Renders the sample into ``sample_dir`` (atomically: a half-written sample is never mistaken for a cache).

    Layout: ``procedural/`` and ``motorcycle/`` (rosbag2 MCAP bags), ``ground_truth.npz`` (procedural
    disparities, float16, and the motorcycle's) and ``sample.json`` (the spec and per-frame content keys).
    """
    from skimage.data import stereo_motorcycle
    from tqdm import tqdm

    from mono2stereo_core.geometry import MOTORCYCLE_CAMERA
    from mono2stereo_core.synthesis.procedural import render_sequence

    sample_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".sample-", dir=sample_dir.parent))
    try:
        camera = procedural_camera(spec.width, spec.height)
        frames, gt, keys = [], [], []
        sequence = render_sequence(
            spec.seed, num_frames=spec.frames, width=spec.width, height=spec.height,
            max_disparity=spec.max_disparity, camera=camera,
        )
        for scene in tqdm(sequence, total=spec.frames, desc="[demo] rendering sample sequence", unit="frame"):
            frames.append((scene.left, scene.right))
            gt.append(scene.disparity.astype(np.float16))
            keys.append(frame_key(scene.left))
        _write_segment(work, "procedural", frames, camera, period_ns=round(1e9 / spec.camera_rate_hz))

        moto_left, moto_right, moto_gt = stereo_motorcycle()
        _write_segment(work, "motorcycle", [(moto_left, moto_right)], MOTORCYCLE_CAMERA, period_ns=0)
        np.savez_compressed(
            work / "ground_truth.npz", procedural=np.stack(gt), motorcycle=moto_gt.astype(np.float32)
        )
        all_gt = np.stack(gt).astype(np.float32)
        meta = {
            "spec": asdict(spec),
            "procedural": {
                "keys": keys,
                "camera": asdict(camera),
                "gt_disparity_max": float(all_gt.max()),
                # Colour ranges from robust percentiles: one small object passing close to the rig must not
                # squeeze the rest of the scene into one colour.
                "gt_disparity_range": [float(np.percentile(all_gt, 1)), float(np.percentile(all_gt, 99.5))],
            },
            "motorcycle": {"keys": [frame_key(moto_left)], "camera": asdict(MOTORCYCLE_CAMERA)},
        }
        (work / "sample.json").write_text(json.dumps(meta, indent=2))
        if sample_dir.exists():
            shutil.rmtree(sample_dir)
        os.replace(work, sample_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return meta


def ensure_sample(sample_dir: Path, spec: SampleSpec) -> dict:
    """The cached sample when it matches ``spec``, otherwise a freshly generated one."""
    meta_path = sample_dir / "sample.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            meta = {}
        if meta.get("spec") == asdict(spec):
            log(f"using the cached sample in {sample_dir}")
            return meta
        log(f"the sample in {sample_dir} was made with other settings; regenerating it")
    else:
        log(f"first run: generating the sample sequence into {sample_dir}")
    return generate_sample(sample_dir, spec)


# --------------------------------------------------------------------------------------------- processes


def ros_environment(domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_SRC), str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class StereoNodeProcess:
    """``python -m mono2stereo.stereo_node`` in its own session; output goes to ``log_path``.

    Its own session keeps a terminal's Ctrl-C away from it, so the demo stops it in order (SIGINT, then
    SIGKILL after ``timeout``) and never leaves it running.
    """

    def __init__(self, *, model: Path, backend: str, domain_id: int, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        args = [
            sys.executable, "-m", "mono2stereo.stereo_node", "--ros-args",
            "-r", f"__ns:={NAMESPACE}",
            "-p", f"model_path:={model}",
            "-p", f"backend:={backend}",
            "-p", "qos_reliability:=reliable",
            "-p", "qos_depth:=10",
            "-p", "publish_points:=true",
        ]
        self.proc = subprocess.Popen(
            args, env=ros_environment(domain_id), stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO),
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


# --------------------------------------------------------------------------------------------- collection


@dataclass
class FrameResult:
    """The node's outputs for one input pair (matched by header stamp)."""

    stamp_ns: int
    key: str | None = None
    left_received_ns: int | None = None
    disparity: np.ndarray | None = None  # H x W float32 network disparity (principal-point offset removed), NaN invalid
    disparity_received_ns: int | None = None
    depth: np.ndarray | None = None  # H x W float32 metres, NaN invalid
    frame_id: str = ""
    f: float = 0.0
    t: float = 0.0


@dataclass
class Collector:
    """Everything received, keyed by header stamp; written by the executor thread, read after playback."""

    frames: dict[int, FrameResult] = field(default_factory=dict)
    clouds: dict[int, object] = field(default_factory=dict)
    diagnostics: dict[str, str] = field(default_factory=dict)
    diagnostics_level: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def frame(self, stamp_ns: int) -> FrameResult:
        result = self.frames.get(stamp_ns)
        if result is None:
            result = self.frames[stamp_ns] = FrameResult(stamp_ns)
        return result


class DemoClient:
    """The demo's rclpy node: plays the bags (in-process ``BagPlayer``) and receives the node's outputs."""

    def __init__(self, *, domain_id: int) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, PointCloud2
        from stereo_msgs.msg import DisparityImage

        self._rclpy = rclpy
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node("mono2stereo_demo", namespace=NAMESPACE, context=self.context)
        self.data = Collector()
        self.players = 0
        # Deep reliable histories: the demo must see every left image and every output the node sends.
        qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = {
            "left/image_rect": self.node.create_subscription(Image, "left/image_rect", self._on_left, qos),
            "disparity": self.node.create_subscription(DisparityImage, "disparity", self._on_disparity, qos),
            "depth": self.node.create_subscription(Image, "depth", self._on_depth, qos),
            "points2": self.node.create_subscription(PointCloud2, "points2", self._on_points, qos),
            "/diagnostics": self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos),
        }
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="demo-executor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - the context is torn down under the executor at shutdown
                if not self.context.ok():
                    return
                raise

    @staticmethod
    def _stamp_ns(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _on_left(self, msg) -> None:
        now = time.time_ns()
        key = hashlib.blake2b(msg.data, digest_size=12).hexdigest()
        with self.data.lock:
            result = self.data.frame(self._stamp_ns(msg))
            result.key, result.left_received_ns = key, now

    def _on_disparity(self, msg) -> None:
        from mono2stereo_core.image_encoding import decode_image

        now = time.time_ns()
        image = msg.image
        raw = decode_image(
            encoding=image.encoding, height=image.height, width=image.width, step=image.step, data=image.data,
            is_bigendian=image.is_bigendian,
        ).astype(np.float32)
        # stereo_image_proc convention: values carry + doffs and invalid pixels are below min_disparity.
        with np.errstate(invalid="ignore"):
            disparity = np.where(raw >= msg.min_disparity, raw - np.float32(msg.min_disparity), np.float32(np.nan))
        with self.data.lock:
            result = self.data.frame(self._stamp_ns(msg))
            result.disparity, result.disparity_received_ns = disparity, now
            result.frame_id, result.f, result.t = msg.header.frame_id, float(msg.f), float(msg.t)

    def _on_depth(self, msg) -> None:
        from mono2stereo_core.image_encoding import decode_image

        depth = decode_image(
            encoding=msg.encoding, height=msg.height, width=msg.width, step=msg.step, data=msg.data,
            is_bigendian=msg.is_bigendian,
        ).astype(np.float32)
        with self.data.lock:
            self.data.frame(self._stamp_ns(msg)).depth = depth

    def _on_points(self, msg) -> None:
        with self.data.lock:
            self.data.clouds[self._stamp_ns(msg)] = msg
            # Clouds are megabytes each; only the newest few are ever written out.
            for stale in sorted(self.data.clouds)[:-2]:
                del self.data.clouds[stale]

    def _on_diagnostics(self, msg) -> None:
        from mono2stereo.diagnostics import level_of

        for status in msg.status:
            if "stereo" in status.name:
                with self.data.lock:
                    self.data.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.data.diagnostics["message"] = status.message
                    self.data.diagnostics_level = level_of(status.level)

    def outputs_connected(self) -> bool:
        """True once the stereo node's output publishers are matched (nothing sent before is lost)."""
        return all(
            self.subscriptions[name].get_publisher_count() > 0 for name in ("disparity", "depth", "points2")
        )

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)


def wait_for(condition, *, timeout: float, node: StereoNodeProcess, what: str, interval: float = 0.05) -> None:
    """Polls ``condition`` until true; raises with the node's log when it times out or the node dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if not node.alive():
            raise DemoError(
                f"stereo_node exited (code {node.proc.returncode}) while waiting for {what}; its log "
                f"({node.log_path}):\n{node.log_tail()}"
            )
        time.sleep(interval)
    if condition():
        return
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}; stereo_node log ({node.log_path}):\n{node.log_tail()}")


def play_segment(
    client: DemoClient, node: StereoNodeProcess, bag: Path, keys: Sequence[str], *, rate: float, timeout: float,
    stop: threading.Event,
) -> list[FrameResult]:
    """Plays one bag and returns the results of its frames (in frame order; unprocessed ones have no disparity).

    Waits until the last pair's outputs arrive: with latest-frame-wins the newest pair is never dropped, so
    its disparity, depth and cloud mark the end of the segment.
    """
    from mono2stereo.player import BagPlayer
    from tqdm import tqdm

    player = BagPlayer(client.node, bag, rate=rate, restamp=True, qos_depth=10)
    client.players += 1  # each player adds its own publishers to the demo's node
    inputs = [f"{NAMESPACE}/{name}" for name in INPUT_TOPICS]
    if not player.wait_for_subscribers(inputs, timeout_s=timeout):
        raise DemoError(f"stereo_node did not subscribe to {inputs} within {timeout:.0f} s:\n{node.log_tail()}")
    # The demo identifies frames by the left images it receives itself, so this player's left publisher must be
    # matched to the demo's subscription too (earlier players' publishers are still there: count them all).
    wait_for(
        lambda: client.subscriptions["left/image_rect"].get_publisher_count() >= client.players,
        timeout=timeout, node=node, what="the demo's own left image subscription to match the player",
    )
    wanted = set(keys)

    def segment() -> list[FrameResult]:
        with client.data.lock:
            return [r for r in client.data.frames.values() if r.key in wanted]

    start = time.monotonic()
    # The player paces itself on a worker thread; this thread shows progress and stays interruptible.
    playing = threading.Thread(target=player.play, kwargs={"stop": stop}, name="demo-player", daemon=True)
    playing.start()
    try:
        with tqdm(total=len(keys), desc=f"[demo] playing {bag.name}", unit="pair", disable=len(keys) < 2) as bar:
            while playing.is_alive():
                playing.join(timeout=0.25)
                results = segment()
                bar.update(len(results) - bar.n)
                bar.set_postfix(processed=sum(r.disparity is not None for r in results), refresh=False)
                if not node.alive():
                    raise DemoError(
                        f"stereo_node exited (code {node.proc.returncode}) during playback; its log "
                        f"({node.log_path}):\n{node.log_tail()}"
                    )
    finally:
        if playing.is_alive():  # interrupted or failed: stop publishing before the node and context go down
            stop.set()
            playing.join(timeout=5)
    if stop.is_set():
        raise KeyboardInterrupt

    wait_for(
        lambda: len(segment()) >= len(keys), timeout=30, node=node, what=f"the {len(keys)} left images of {bag.name}"
    )
    last = max(segment(), key=lambda r: r.stamp_ns).stamp_ns

    def finished() -> bool:
        with client.data.lock:
            result = client.data.frames[last]
            return result.disparity is not None and result.depth is not None and last in client.data.clouds

    remaining = max(10.0, timeout - (time.monotonic() - start))
    wait_for(finished, timeout=remaining, node=node, what=f"the node's outputs for the last frame of {bag.name}")
    order = {key: i for i, key in enumerate(keys)}
    return sorted(segment(), key=lambda r: order[r.key])


# --------------------------------------------------------------------------------------------- outputs


def _panel(left: np.ndarray, result: FrameResult, *, vmax: float, depth_range: tuple[float, float], title: str):
    from mono2stereo_core.viz import colorize_depth, colorize_disparity

    disparity = colorize_disparity(result.disparity, vmin=0.0, vmax=vmax)
    depth = colorize_depth(result.depth, min_depth=depth_range[0], max_depth=depth_range[1])
    labels = [title, f"disparity 0-{vmax:.0f} px", f"depth {depth_range[0]:.1f}-{depth_range[1]:.0f} m"]
    return [left, disparity, depth], labels


def write_ply_from_cloud(path: Path, cloud) -> int:
    from mono2stereo_core.pointcloud import unpack_xyzrgb
    from mono2stereo_core.viz import write_ply

    points, colors = unpack_xyzrgb(
        fields=cloud.fields, point_step=cloud.point_step, data=cloud.data, height=cloud.height,
        width=cloud.width, row_step=cloud.row_step, is_bigendian=cloud.is_bigendian,
    )
    return write_ply(path, points, colors)


def model_name(model: Path) -> str:
    """The architecture name from a checkpoint's sidecar (``m2s_rt``), else the file name (ONNX, engines)."""
    sidecar = model.with_suffix(".json")
    if model.suffix == ".safetensors" and sidecar.is_file():
        try:
            return str(json.loads(sidecar.read_text())["architecture"]["name"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    return model.name


def _latency_summary(results: Sequence[FrameResult]) -> dict:
    latencies = np.array(
        [(r.disparity_received_ns - r.stamp_ns) * 1e-6 for r in results if r.disparity_received_ns is not None]
    )
    if latencies.size == 0:
        return {"count": 0}
    return {
        "count": int(latencies.size),
        "median_ms": round(float(np.median(latencies)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "max_ms": round(float(latencies.max()), 1),
    }


def _output_rate(results: Sequence[FrameResult]) -> float | None:
    times = sorted(r.disparity_received_ns for r in results if r.disparity_received_ns is not None)
    if len(times) < 2 or times[-1] == times[0]:
        return None
    return round((len(times) - 1) / ((times[-1] - times[0]) * 1e-9), 2)


def _diagnostics_number(diagnostics: dict[str, str], key: str) -> float | None:
    try:
        return float(diagnostics[key])
    except (KeyError, ValueError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="demo.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=REPO / "demo_out", help="output folder (default demo_out)")
    parser.add_argument("--frames", type=int, default=48, help="frames of the procedural sequence (default 48)")
    parser.add_argument("--size", default="480x360", help="procedural image size WxH (default 480x360)")
    parser.add_argument(
        "--model", type=Path, default=None,
        help="model for the node (.safetensors, .onnx, .engine); default: the shipped weights/m2s_rt.safetensors",
    )
    parser.add_argument(
        "--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"), help="inference backend"
    )
    parser.add_argument(
        "--rate", type=float, default=0.1,
        help=f"playback speed factor of the {CAMERA_RATE_HZ:.0f} Hz sample (default 0.1 = 1.5 Hz; 1 = real time)",
    )
    parser.add_argument("--sample-dir", type=Path, default=None, help="sample cache (default <out>/sample)")
    parser.add_argument("--seed", type=int, default=27, help="procedural scene number (default 27)")
    parser.add_argument("--domain-id", type=int, default=DEFAULT_DOMAIN_ID, help="ROS_DOMAIN_ID for the demo")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per segment (default 300)")
    parser.add_argument(
        "--docs-image", type=Path, default=None,
        help="also write a README-sized copy of summary.png (<= 300 KB, .png or .jpg) here, e.g. docs/img/demo.png",
    )
    args = parser.parse_args(argv)

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 480x360, instead got {args.size!r}")
    if width < 64 or height < 64 or width % 8 or height % 8:
        parser.error(f"--size must be at least 64x64 and a multiple of 8, instead got {args.size!r}")
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, instead got {args.frames}")
    if not args.rate > 0:
        parser.error(f"--rate must be > 0, instead got {args.rate}")
    if not 0 <= args.domain_id <= 232:
        parser.error(f"--domain-id must be in [0, 232], instead got {args.domain_id}")

    from mono2stereo_core.inference.runner import resolve_model_path

    try:
        model = resolve_model_path(args.model).resolve()
    except FileNotFoundError as exc:
        if args.model is not None:
            print(f"demo: {exc}", file=sys.stderr)
        else:
            print(
                "demo: the shipped default model weights/m2s_rt.safetensors (+ .json sidecar) is not here.\n"
                f"  Train it with:   {PRETRAIN_COMMAND}\n"
                "  or run the demo with any checkpoint:   python scripts/demo.py --model PATH\n"
                f"  (details: {exc})",
                file=sys.stderr,
            )
        return 2

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sample_dir = args.sample_dir or out / "sample"
    spec = SampleSpec(width=width, height=height, frames=args.frames, seed=args.seed, max_disparity=128.0)
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        stop.set()
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = None
    client = None
    try:
        meta = ensure_sample(sample_dir, spec)
        log(f"starting stereo_node (model {model}, backend {args.backend}, ROS_DOMAIN_ID {args.domain_id}); "
            f"log: {out / 'stereo_node.log'}")
        # rclpy reads this when the demo's own context starts: its participant stays on this host as well.
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        # The Fast DDS writer profile docs/ros.md asks every process to use ("Large images over DDS"): with
        # Fast DDS's 3 s default heartbeat a lost camera_info sample of the one-frame motorcycle segment reaches
        # the node after it gave up waiting for a matching one (0.5 s) and the frame is dropped. An explicit
        # setting wins; the node process inherits it.
        from mono2stereo.dds_profile import PROFILE_FILE_NAME, use_profile

        use_profile(REPO / "config" / PROFILE_FILE_NAME)
        node = StereoNodeProcess(model=model, backend=args.backend, domain_id=args.domain_id, log_path=out / "stereo_node.log")
        client = DemoClient(domain_id=args.domain_id)
        started = time.monotonic()
        wait_for(client.outputs_connected, timeout=args.timeout, node=node, what="stereo_node to load the model and come up")
        log(f"stereo_node (pid {node.proc.pid}) is up after {time.monotonic() - started:.1f} s")

        publish_hz = CAMERA_RATE_HZ * args.rate
        log(f"playing {args.frames} procedural frames {width}x{height} at {publish_hz:.2g} Hz "
            f"({CAMERA_RATE_HZ:.0f} Hz camera x rate {args.rate:g})")
        t0 = time.monotonic()
        sequence = play_segment(
            client, node, sample_dir / "procedural", meta["procedural"]["keys"], rate=args.rate,
            timeout=args.timeout, stop=stop,
        )
        sequence_s = time.monotonic() - t0
        diagnostics_sequence = dict(client.data.diagnostics)
        log("playing the Middlebury motorcycle pair (741x500)")
        motorcycle = play_segment(
            client, node, sample_dir / "motorcycle", meta["motorcycle"]["keys"], rate=1.0,
            timeout=args.timeout, stop=stop,
        )[0]
        # One more diagnostics period so the report holds the node's counters after the last frame.
        time.sleep(1.2)
        with client.data.lock:
            diagnostics = dict(client.data.diagnostics)
            clouds = dict(client.data.clouds)
        report = write_outputs(
            out, meta=meta, sample_dir=sample_dir, sequence=sequence, motorcycle=motorcycle, clouds=clouds,
            model=model, backend=args.backend, rate=args.rate, sequence_s=sequence_s,
            diagnostics=diagnostics, diagnostics_sequence=diagnostics_sequence,
        )
        print_summary(report, out)
        if args.docs_image is not None:
            write_docs_image(out / "summary.png", args.docs_image)
            log(f"wrote {args.docs_image}")
        return 0
    except KeyboardInterrupt:
        stop.set()
        print("demo: interrupted; stopping stereo_node", file=sys.stderr)
        return 130
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        # A second Ctrl-C during cleanup must not skip stopping the node: ignore signals until it is down.
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        try:
            if client is not None:
                client.close()
            if node is not None:
                node.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def write_outputs(
    out: Path, *, meta: dict, sample_dir: Path, sequence: list[FrameResult], motorcycle: FrameResult, clouds: dict,
    model: Path, backend: str, rate: float, sequence_s: float, diagnostics: dict, diagnostics_sequence: dict,
) -> dict:
    """Frame PNGs, summary.png, PLY clouds and report.json; returns the report."""
    from skimage.data import stereo_motorcycle
    from tqdm import tqdm

    from mono2stereo_core.bags import StereoBagReader
    from mono2stereo_core.evaluation import (
        disparity_metrics,
        evaluate_disparity,
        metrics_json,
        sgbm_disparity,
        sgbm_num_disparities,
    )
    from mono2stereo_core.viz import colorize_disparity, contact_sheet, save_png

    gt = np.load(sample_dir / "ground_truth.npz")
    gt_sequence = gt["procedural"]
    proc = meta["procedural"]
    low, high = proc["gt_disparity_range"]
    vmax = float(np.ceil(high * 1.05))
    focal_baseline = proc["camera"]["fx"] * proc["camera"]["baseline"]
    depth_range = (round(focal_baseline / vmax, 1), float(np.ceil(focal_baseline / max(low, 0.5))))
    order = {key: i for i, key in enumerate(proc["keys"])}
    processed = [r for r in sequence if r.disparity is not None and r.depth is not None]
    # The input images come back from the bag (not the node), so they are exactly what was published.
    pairs = {}
    with StereoBagReader(sample_dir / "procedural") as reader:
        for sample in reader:
            pairs[frame_key(sample.left)] = (sample.left, sample.right)

    frames_dir = out / "frames"
    if frames_dir.exists():
        shutil.rmtree(frames_dir)  # a previous run's frames would mix with this run's selection
    per_frame = []
    panels, panels_disparity = {}, {}
    for result in tqdm(processed, desc="[demo] writing frame images", unit="frame"):
        index = order[result.key]
        tiles, labels = _panel(pairs[result.key][0], result, vmax=vmax, depth_range=depth_range, title=f"frame {index}")
        panels[index] = (tiles, labels, result.key)
        panels_disparity[index] = result.disparity
        save_png(frames_dir / f"procedural_{index:04d}.png", contact_sheet([tiles], labels=[labels], tile_width=tiles[0].shape[1]))
        m = disparity_metrics(result.disparity, gt_sequence[index].astype(np.float32))
        per_frame.append({"frame": index, "bad2": round(m.bad2, 2), "density": round(m.density, 2)})

    moto_left, moto_right, moto_gt = stereo_motorcycle()
    num_disp = sgbm_num_disparities(float(moto_gt[np.isfinite(moto_gt)].max()))
    sgbm = sgbm_disparity(moto_left, moto_right, num_disparities=num_disp)
    regions = evaluate_disparity(motorcycle.disparity, moto_gt, compare=sgbm)
    moto_camera = meta["motorcycle"]["camera"]
    finite_gt = moto_gt[np.isfinite(moto_gt)]
    moto_vmax = float(np.ceil(finite_gt.max() * 1.05))
    fb = moto_camera["fx"] * moto_camera["baseline"]
    moto_depth_range = (
        round(fb / (finite_gt.max() + moto_camera["doffs"]) * 0.9, 1),
        float(np.ceil(fb / (finite_gt.min() + moto_camera["doffs"]))),
    )
    moto_tiles, moto_labels = _panel(moto_left, motorcycle, vmax=moto_vmax, depth_range=moto_depth_range, title="motorcycle")
    save_png(frames_dir / "motorcycle.png", contact_sheet([moto_tiles], labels=[moto_labels], tile_width=moto_left.shape[1]))

    net, base = regions["all"], regions["compare_all"]
    name = model_name(model)
    # Summary: a few procedural frames spread over the sequence, then the motorcycle with GT and SGBM beside it.
    rows, labels = [], []
    chosen = sorted(panels)
    if len(chosen) > 3:
        chosen = [chosen[round(i * (len(chosen) - 1) / 2)] for i in range(3)]
    for index in chosen:
        tiles, tile_labels, key = panels[index]
        frame_gt = gt_sequence[index].astype(np.float32)
        frame_sgbm = sgbm_disparity(*pairs[key], num_disparities=sgbm_num_disparities(float(frame_gt.max())))
        net_m, sgbm_m = disparity_metrics(panels_disparity[index], frame_gt), disparity_metrics(frame_sgbm, frame_gt)
        rows.append([
            *tiles, colorize_disparity(frame_gt, vmin=0.0, vmax=vmax), colorize_disparity(frame_sgbm, vmin=0.0, vmax=vmax)
        ])
        labels.append([
            tile_labels[0], f"{name}: bad-2 {net_m.bad2:.1f}%, density {net_m.density:.0f}%", tile_labels[2],
            "ground truth", f"SGBM: bad-2 {sgbm_m.bad2:.1f}%, density {sgbm_m.density:.0f}%",
        ])
    rows.append([*moto_tiles, colorize_disparity(moto_gt, vmin=0.0, vmax=moto_vmax), colorize_disparity(sgbm, vmin=0.0, vmax=moto_vmax)])
    labels.append([
        "motorcycle (Middlebury)",
        f"{name}: bad-2 {net.bad2:.1f}%, density {net.density:.0f}%",
        moto_labels[2],
        "ground truth",
        f"SGBM: bad-2 {base.bad2:.1f}%, density {base.density:.0f}%",
    ])
    summary = contact_sheet(rows, labels=labels, tile_width=320)
    save_png(out / "summary.png", summary)

    ply = {}
    moto_cloud = clouds.get(motorcycle.stamp_ns)
    if moto_cloud is not None:
        ply["motorcycle.ply"] = write_ply_from_cloud(out / "motorcycle.ply", moto_cloud)
    last = max(processed, key=lambda r: r.stamp_ns, default=None)
    if last is not None and last.stamp_ns in clouds:
        ply["procedural.ply"] = write_ply_from_cloud(out / "procedural.ply", clouds[last.stamp_ns])

    published = len(sequence)
    bad2 = [f["bad2"] for f in per_frame]
    report = {
        "model": str(model),
        "model_name": model_name(model),
        "backend": diagnostics.get("backend", backend),
        "sample": meta["spec"],
        "sequence": {
            "frames_published": published,
            "frames_processed": len(processed),
            "publish_rate_hz": round(CAMERA_RATE_HZ * rate, 3),
            "output_rate_hz": _output_rate(sequence),
            "latency": _latency_summary(processed),
            "wall_s": round(sequence_s, 1),
            "bad2_median": round(float(np.median(bad2)), 2) if bad2 else None,
            "frames": per_frame,
            "node_diagnostics": diagnostics_sequence,
        },
        "motorcycle": {
            "network": {region: metrics_json(regions[region]) for region in ("all", "noc", "both")},
            "sgbm": {region: metrics_json(regions[f"compare_{region}"]) for region in ("all", "noc", "both")},
            "sgbm_num_disparities": num_disp,
            "latency_ms": _latency_summary([motorcycle]).get("median_ms"),
            "f": motorcycle.f,
            "t": motorcycle.t,
            "frame_id": motorcycle.frame_id,
        },
        "node_diagnostics": diagnostics,
        "files": {
            "summary": "summary.png",
            "frames": sorted(str(p.relative_to(out)) for p in frames_dir.glob("*.png")),
            "point_clouds": ply,
            "node_log": "stereo_node.log",
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def write_docs_image(summary: Path, path: Path, *, max_bytes: int = 300_000) -> None:
    """A README-sized copy of the contact sheet, at most ``max_bytes``.

    ``.png``: downscaled and reduced to a palette (the sheet is colour maps and photos, 256 colours read fine),
    shrinking until it fits; ``.jpg``: downscaled, quality lowered until it fits.
    """
    import io

    from PIL import Image as PilImage

    image = PilImage.open(summary).convert("RGB")
    png = path.suffix.lower() == ".png"
    if not png and path.suffix.lower() not in (".jpg", ".jpeg"):
        raise DemoError(f"--docs-image must end in .png, .jpg or .jpeg, instead got {path}")
    attempts = [(1100, 256), (960, 256), (960, 128), (800, 128), (640, 64)] if png else [(1100, q) for q in (88, 78, 68, 58)]
    data = b""
    for width, setting in attempts:
        small = image.resize((width, round(image.height * width / image.width)), PilImage.Resampling.LANCZOS)
        buffer = io.BytesIO()
        if png:
            small.quantize(colors=setting, dither=PilImage.Dither.NONE).save(buffer, format="PNG", optimize=True)
        else:
            small.save(buffer, format="JPEG", quality=setting, optimize=True)
        data = buffer.getvalue()
        if len(data) <= max_bytes:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def print_summary(report: dict, out: Path) -> None:
    seq = report["sequence"]
    moto = report["motorcycle"]
    diag = report["node_diagnostics"]
    latency = seq["latency"]
    log(
        f"sequence: {seq['frames_processed']}/{seq['frames_published']} pairs processed at "
        f"{seq['output_rate_hz'] or 0:.2f} Hz (published at {seq['publish_rate_hz']:.2g} Hz; the node keeps the "
        f"newest pair and drops the rest), latency stamp->disparity median {latency.get('median_ms', 'n/a')} ms, "
        f"p95 {latency.get('p95_ms', 'n/a')} ms"
    )
    log(
        "stereo_node /diagnostics: backend {b}, inference median {i} ms, overhead median {o} ms, "
        "latency median {lat} ms, pairs received {p}, dropped stale {d}, errors {e}".format(
            b=diag.get("backend", "?"), i=_fmt(diag.get("inference_ms_median")), o=_fmt(diag.get("overhead_ms_median")),
            lat=_fmt(diag.get("latency_ms_median")), p=diag.get("pairs_received", "?"),
            d=diag.get("dropped_stale", "?"), e=diag.get("errors", "?"),
        )
    )
    if seq["bad2_median"] is not None:
        log(f"procedural frames vs ground truth: bad-2 median {seq['bad2_median']:.1f} %")
    net, sgbm = moto["network"]["all"], moto["sgbm"]["all"]
    log(
        f"motorcycle vs ground truth (all pixels, holes count as errors): network bad-2 {net['bad2']:.1f} %, "
        f"density {net['density']:.0f} % | SGBM bad-2 {sgbm['bad2']:.1f} %, density {sgbm['density']:.0f} %"
    )
    log(f"wrote {out}/summary.png, {len(report['files']['frames'])} frame images, "
        f"{', '.join(report['files']['point_clouds']) or 'no point clouds'}, report.json")


def _fmt(value) -> str:
    try:
        return f"{float(value):.0f}"
    except (TypeError, ValueError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
