"""``stereo_node``: rectified left/right images -> disparity, depth, points2, confidence, disparity/color.

Threading: subscriptions and the synchronizer run on the executor; each synchronized pair replaces the one
waiting in a single-slot mailbox (latest frame wins, the replaced one is counted as dropped), and one worker
thread runs inference and publishing, so callbacks never block on the network and stale frames never queue.

Run: ``ros2 run mono2stereo stereo_node --ros-args -p model_path:=model.onnx`` or
``python -m mono2stereo.stereo_node --ros-args ...``.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np
import rclpy
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from mono2stereo.allocator import tune_allocator
from mono2stereo.conversions import (
    OutputBuffers,
    array_to_image,
    buffer_view,
    depth_camera_info,
    disparity_image,
    image_pair_to_rgb8,
    point_cloud,
    stamp_to_ns,
    stereo_camera_from_infos,
)
from mono2stereo.diagnostics import ERROR, OK, LatencyWindow, RateWindow, diagnostic_array
from mono2stereo.qos import RELIABILITY_CHOICES, publisher_qos, subscription_qos
from mono2stereo.synchronizer import ImagePairSynchronizer
from mono2stereo_core.arrays import fill_masked
from mono2stereo_core.viz import colorize_disparity

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16")
# Outputs of a float regression network are continuous; 1/16 px (the SGBM convention stereo_image_proc users
# know) is reported as the resolution at the network's input size, scaled to the published image.
SUBPIXEL_STEP = 1.0 / 16.0
ERROR_LOG_PERIOD_S = 30.0
# How long a pair waits for a camera_info of its size (see StereoNode._infos_for) before it is reported.
INFO_WAIT_S = 0.5


def _floats(lo: float, hi: float) -> list[FloatingPointRange]:
    return [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]


def _ints(lo: int, hi: int) -> list[IntegerRange]:
    return [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]


# name: (default, description, constraints, ranges, read_only). Read-only parameters shape the pipeline
# (model, QoS, synchronizer) and are fixed at start-up; the rest take effect on the next frame.
PARAMETERS: dict[str, tuple] = {
    "model_path": ("", "Model file: .safetensors (torch), .onnx (onnxruntime/TensorRT) or .engine; '' = shipped default", "", None, True),
    "backend": ("auto", "Inference backend", f"one of {BACKENDS}", None, True),
    "precision": ("fp32", "Inference precision (fp16 on CUDA/TensorRT only)", f"one of {PRECISIONS}", None, True),
    "input_width": (0, "Network input width in pixels; 0 = the model's own size or the image size", "0 or a multiple of the model stride", _ints(0, 8192), True),
    "input_height": (0, "Network input height in pixels; 0 = the model's own size or the image size", "0 or a multiple of the model stride", _ints(0, 8192), True),
    "input_scale": (1.0, "Torch backend: run the network on the pair resized by this factor (1.5: about a quarter fewer bad pixels on the real test pairs, 2.25x the inference time); ONNX/TensorRT models get it by being exported at the larger size", "not with input_width/input_height", _floats(0.25, 4.0), True),
    "max_disparity": (192.0, "Disparities above this (image pixels) are invalid; also DisparityImage.max_disparity", "", _floats(1.0, 2048.0), False),
    "min_depth": (0.1, "Depth/points closer than this (m) are NaN", "< max_depth", _floats(0.0, 1000.0), False),
    "max_depth": (50.0, "Depth/points farther than this (m) are NaN", "> min_depth", _floats(0.01, 10000.0), False),
    "confidence_threshold": (0.0, "Pixels with confidence below this are invalid in disparity, depth and points", "", _floats(0.0, 1.0), False),
    "lr_check": (False, "Left-right consistency check: a second, mirrored network pass; pixels the right view does not confirm (occlusions, left border) get the background's disparity and confidence 0 (drop them with confidence_threshold > 0). More accurate, twice the inference time", "", None, False),
    "occlusion_fill": (True, "Pixels the disparity itself puts out of the right camera's view (behind a nearer surface, left of the right image) get their row's background disparity and confidence 0, in one pass (about 15 ms of CPU at 640x480 on a 2-core machine with tune_allocator); false = the network's own values there. Not applied while lr_check is on (it fills occlusions itself)", "", None, False),
    "publish_points": (True, "Compute and publish points2 (when subscribed)", "", None, False),
    "points_decimation": (1, "Keep every n-th row and column in points2 (organized cloud of H/n x W/n)", "", _ints(1, 16), False),
    "qos_reliability": ("reliable", "Input subscription reliability", f"one of {RELIABILITY_CHOICES}", None, True),
    "qos_depth": (5, "History depth of the input subscriptions", "", _ints(1, 100), True),
    "output_qos_depth": (1, "History depth of the output publishers: samples a reliable publisher keeps for slow readers (each 640x480 cloud is 4.9 MB); 1 = latest only", "", _ints(1, 100), True),
    "approximate_sync": (False, "Pair left/right stamps within slop instead of requiring equal stamps", "", None, True),
    "slop": (0.01, "Approximate sync: largest stamp difference of a pair (s)", "", _floats(0.0, 1.0), True),
    "queue_size": (5, "Unmatched messages kept per input by the synchronizer", "", _ints(1, 100), True),
    "tune_allocator": (True, "Raise glibc's malloc mmap/trim thresholds (process-wide) so the multi-megabyte buffers rclpy allocates per published message are reused instead of page-faulted in every frame; no-op off glibc", "", None, True),
}

OUTPUT_TOPICS = ("disparity", "depth", "depth/camera_info", "points2", "confidence", "disparity/color")


@dataclass(frozen=True)
class Settings:
    """Per-frame post-processing settings; replaced atomically when parameters change at run time."""

    max_disparity: float
    min_depth: float
    max_depth: float
    confidence_threshold: float
    lr_check: bool
    occlusion_fill: bool
    publish_points: bool
    points_decimation: int


@dataclass
class _Frame:
    left: Image
    right: Image
    received: float  # time.monotonic() when the pair completed


class StereoNode(Node):
    """The stereo depth node. ``runner`` may be injected (in-process use); otherwise it is loaded from parameters."""

    def __init__(self, *, runner=None, node_name: str = "stereo_node", **node_kwargs) -> None:
        # Set before anything can raise: rclpy destroys half-built nodes on shutdown (destroy_node below).
        self._mailbox: _Frame | None = None
        self._mailbox_cv = threading.Condition()
        self._stopping = False
        self._worker: threading.Thread | None = None
        super().__init__(node_name, **node_kwargs)
        for name, (default, description, constraints, ranges, read_only) in PARAMETERS.items():
            descriptor = ParameterDescriptor(
                name=name, description=description, additional_constraints=constraints, read_only=read_only
            )
            if ranges is not None:
                if ranges[0].__class__ is FloatingPointRange:
                    descriptor.floating_point_range = ranges
                else:
                    descriptor.integer_range = ranges
            descriptor.type = {
                str: ParameterType.PARAMETER_STRING,
                bool: ParameterType.PARAMETER_BOOL,
                int: ParameterType.PARAMETER_INTEGER,
                float: ParameterType.PARAMETER_DOUBLE,
            }[type(default)]
            self.declare_parameter(name, default, descriptor)
        values = {name: self.get_parameter(name).value for name in PARAMETERS}
        problem = validate_parameters(values)
        if problem:
            raise ValueError(problem)
        self._settings = _settings_from(values)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.allocator = tune_allocator() if values["tune_allocator"] else "default (tune_allocator: false)"

        if runner is None:
            from mono2stereo_core.inference.runner import load_runner

            input_size = None
            if values["input_width"] > 0 and values["input_height"] > 0:
                input_size = (values["input_width"], values["input_height"])
            elif values["input_width"] or values["input_height"]:
                raise ValueError(
                    "stereo_node: set both input_width and input_height (or neither), instead got "
                    f"{values['input_width']}x{values['input_height']}"
                )
            runner = load_runner(
                values["model_path"] or None,
                backend=values["backend"],
                precision=values["precision"],
                input_size=input_size,
                lr_check=values["lr_check"],
                input_scale=values["input_scale"],
                occlusion_fill=values["occlusion_fill"],
            )
        elif problem := runner_problem(values, runner):
            raise ValueError(f"stereo_node: {problem}")
        self._runner = runner
        self.backend = str(getattr(runner, "backend", "unknown"))
        self.get_logger().info(f"inference: {getattr(runner, 'description', self.backend)}")
        self.get_logger().info(f"allocator: {self.allocator}")

        # Outputs follow the node's latest-frame-wins rule: by default a slow reader gets the newest result, and
        # the publisher holds one sample per topic instead of qos_depth (5 x 7 MB of outputs at 640x480 was
        # the whole RSS growth of a 10-minute run; docs/ros.md).
        out_qos = publisher_qos(depth=values["output_qos_depth"])
        self._pub_disparity = self.create_publisher(DisparityImage, "disparity", out_qos)
        self._pub_depth = self.create_publisher(Image, "depth", out_qos)
        self._pub_depth_info = self.create_publisher(CameraInfo, "depth/camera_info", out_qos)
        self._pub_points = self.create_publisher(PointCloud2, "points2", out_qos)
        self._pub_confidence = self.create_publisher(Image, "confidence", out_qos)
        self._pub_color = self.create_publisher(Image, "disparity/color", out_qos)
        from diagnostic_msgs.msg import DiagnosticArray

        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        in_qos = subscription_qos(reliability=values["qos_reliability"], depth=values["qos_depth"])
        self._left_topic = self.resolve_topic_name("left/image_rect")
        self._right_topic = self.resolve_topic_name("right/image_rect")
        self._left_info_topic = self.resolve_topic_name("left/camera_info")
        self._right_info_topic = self.resolve_topic_name("right/camera_info")
        self._infos: dict[str, CameraInfo | None] = {"left": None, "right": None}
        self._infos_cv = threading.Condition()
        input_group = MutuallyExclusiveCallbackGroup()
        # Calibration is static per session: the latest camera_info of each side is used for every pair,
        # so a driver publishing camera_info at a lower rate (or with its own stamps) loses no image pairs.
        for side in ("left", "right"):
            self.create_subscription(
                CameraInfo, f"{side}/camera_info", lambda msg, side=side: self._on_camera_info(side, msg), in_qos,
                callback_group=input_group,
            )
        self._sync = ImagePairSynchronizer(
            self,
            left_topic="left/image_rect",
            right_topic="right/image_rect",
            qos=in_qos,
            approximate=values["approximate_sync"],
            slop_s=values["slop"],
            queue_size=values["queue_size"],
            callback=self._on_pair,
            # One log line for a time jump, not one per input topic.
            on_out_of_order=lambda exc: self._report_error(str(exc), key="out-of-order stamp"),
            callback_group=input_group,
        )

        # Counters are written by the executor thread and the worker; each has a single writer.
        self._pairs_received = 0
        self._skipped_no_subscribers = 0
        self._dropped_stale = 0
        self._inferences = 0
        self._published = 0
        self._errors = 0
        self._last_error = ""
        self._last_error_time = 0.0
        self._errors_in_window = 0
        self._last_frame_failed = False
        self._error_log_times: dict[str, float] = {}
        self._input_rate = RateWindow()
        self._output_rate = RateWindow()
        self._latency = LatencyWindow()
        self._processing = LatencyWindow()
        self._inference = LatencyWindow()
        self._overhead = LatencyWindow()
        # The same, counted in CPU time of the worker thread: the node's own work, without the time it waited
        # for a core (on a small CPU the wall-clock overhead includes whatever else runs beside the node).
        self._overhead_cpu = LatencyWindow()
        # Reused output buffers (only the worker thread publishes): no per-frame allocations of images/clouds.
        self._buffers = OutputBuffers()
        self._rays_cache: tuple | None = None
        self._stats_lock = threading.Lock()

        self._worker = threading.Thread(target=self._work, name="stereo_node-inference", daemon=True)
        self._worker.start()
        self.create_timer(1.0, self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(
            f"listening on {self._left_topic}, {self._right_topic} ({self._sync.implementation}, "
            f"{'approximate' if values['approximate_sync'] else 'exact'} sync, {values['qos_reliability']})"
        )

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        values = {name: self.get_parameter(name).value for name in PARAMETERS}
        values.update({p.name: p.value for p in parameters if p.name in PARAMETERS})
        problem = validate_parameters(values) or runner_problem(values, self._runner)
        if problem:
            return SetParametersResult(successful=False, reason=problem)
        self._settings = _settings_from(values)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ input
    def _has_output_subscribers(self) -> bool:
        return any(
            pub.get_subscription_count() > 0
            for pub in (
                self._pub_disparity,
                self._pub_depth,
                self._pub_depth_info,
                self._pub_points,
                self._pub_confidence,
                self._pub_color,
            )
        )

    def _on_camera_info(self, side: str, msg: CameraInfo) -> None:
        with self._infos_cv:
            self._infos[side] = msg  # validated per frame in the worker, where errors are reported
            self._infos_cv.notify_all()

    def _infos_for(self, frame: _Frame) -> tuple[CameraInfo | None, CameraInfo | None]:
        """The latest camera_info pair, waiting up to INFO_WAIT_S for one that fits the frame's image size.

        Camera_info and images travel on separate topics with no ordering between them, and the executor may
        hand the images over first: at start-up, or when a camera (or a played bag) switches resolution,
        the matching camera_info is often a few milliseconds behind the pair that needs it.
        """
        size = (frame.left.width, frame.left.height)

        def fits() -> bool:
            return all(i is not None and (i.width, i.height) in ((0, 0), size) for i in self._infos.values())

        with self._infos_cv:
            self._infos_cv.wait_for(fits, timeout=INFO_WAIT_S)
            return self._infos["left"], self._infos["right"]

    def _on_pair(self, left: Image, right: Image) -> None:
        self._pairs_received += 1
        self._input_rate.tick()
        if not self._has_output_subscribers():
            # Nobody listens: skip inference entirely (stereo_image_proc's lazy subscription, per frame).
            self._skipped_no_subscribers += 1
            return
        with self._mailbox_cv:
            if self._mailbox is not None:
                self._dropped_stale += 1
            self._mailbox = _Frame(left=left, right=right, received=time.monotonic())
            self._mailbox_cv.notify()

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._mailbox_cv:
                while self._mailbox is None and not self._stopping:
                    self._mailbox_cv.wait()
                if self._stopping:
                    return
                frame, self._mailbox = self._mailbox, None
            try:
                self._process(frame)
                self._last_frame_failed = False
            except ValueError as exc:
                self._report_error(str(exc))
            except Exception as exc:  # never let one frame kill the node
                self._report_error(f"{type(exc).__name__}: {exc}", details=traceback.format_exc())

    def _process(self, frame: _Frame) -> None:
        decode_start = time.perf_counter()
        decode_cpu = time.thread_time()
        left_info, right_info = self._infos_for(frame)
        missing = [t for t, i in ((self._left_info_topic, left_info), (self._right_info_topic, right_info)) if i is None]
        if missing:
            raise ValueError(f"no camera_info received yet on {', '.join(missing)}; cannot compute depth")
        left_rgb, right_rgb = image_pair_to_rgb8(
            frame.left, frame.right, left_topic=self._left_topic, right_topic=self._right_topic
        )
        height, width = left_rgb.shape[:2]
        camera = stereo_camera_from_infos(
            left_info,
            right_info,
            width=width,
            height=height,
            left_topic=self._left_info_topic,
            right_topic=self._right_info_topic,
        )
        settings = self._settings
        if getattr(self._runner, "lr_check", settings.lr_check) != settings.lr_check:
            self._runner.lr_check = settings.lr_check
        # An injected runner without the attribute (any callable) does its own post-processing.
        if getattr(self._runner, "occlusion_fill", settings.occlusion_fill) != settings.occlusion_fill:
            self._runner.occlusion_fill = settings.occlusion_fill

        start_cpu = time.thread_time()
        start = time.perf_counter()
        disparity, confidence = self._runner(left_rgb, right_rgb)
        inference_s = time.perf_counter() - start
        inference_done_cpu = time.thread_time()
        self._inferences += 1
        if disparity.shape != (height, width) or confidence.shape != (height, width):
            raise RuntimeError(
                f"runner returned disparity {disparity.shape} / confidence {confidence.shape} for a "
                f"{height}x{width} pair"
            )

        network_max = getattr(self._runner, "max_disparity_at", None)
        max_disparity = settings.max_disparity
        if callable(network_max):
            max_disparity = min(max_disparity, float(network_max(width=width)))
        # Every output is computed straight into the buffer its message carries, and masks are applied with
        # fill_masked (OpenCV) instead of boolean indexing: docs/ros.md, "Node overhead".
        with np.errstate(invalid="ignore"):
            keep = (disparity >= 0) & (disparity <= max_disparity)  # False for NaN
            if settings.confidence_threshold > 0:
                keep &= confidence >= settings.confidence_threshold
        disparity = fill_masked(np.array(disparity, dtype=np.float32), ~keep, np.nan)

        header = Header(stamp=frame.left.header.stamp, frame_id=frame.left.header.frame_id)
        buffers = self._buffers
        if self._pub_disparity.get_subscription_count():
            plan = getattr(self._runner, "plan", None)
            scale = plan(height=height, width=width).disparity_scale if callable(plan) else 1.0
            self._pub_disparity.publish(
                disparity_image(
                    disparity,
                    header=header,
                    camera=camera,
                    max_disparity=max_disparity,
                    delta_d=SUBPIXEL_STEP * scale,
                    buffer=buffers.get("disparity", height * width * 4),
                )
            )
        want_depth = self._pub_depth.get_subscription_count() > 0
        want_points = settings.publish_points and self._pub_points.get_subscription_count() > 0
        if want_depth or want_points:
            depth_buffer = buffers.get("depth", height * width * 4)
            depth = camera.disparity_to_depth(disparity, out=buffer_view(depth_buffer, (height, width), np.float32))
            fill_masked(depth, ~((depth >= settings.min_depth) & (depth <= settings.max_depth)), np.nan)
            if want_depth:
                self._pub_depth.publish(array_to_image(depth, encoding="32FC1", header=header, buffer=depth_buffer))
            if want_points:
                n = settings.points_decimation
                self._pub_points.publish(
                    point_cloud(
                        None,
                        left_rgb[::n, ::n],
                        header=header,
                        buffers=buffers,
                        depth=depth[::n, ::n],
                        rays=self._rays(camera, n),
                    )
                )
        if self._pub_depth_info.get_subscription_count():
            self._pub_depth_info.publish(depth_camera_info(left_info, header=header))
        if self._pub_confidence.get_subscription_count():
            conf_buffer = buffers.get("confidence", height * width * 4)
            conf = buffer_view(conf_buffer, (height, width), np.float32)
            # Clipped to [0, 1] with NaN -> 0 (fmax returns the non-NaN operand).
            np.fmin(np.fmax(confidence, np.float32(0.0), out=conf), np.float32(1.0), out=conf)
            self._pub_confidence.publish(array_to_image(conf, encoding="32FC1", header=header, buffer=conf_buffer))
        if self._pub_color.get_subscription_count():
            color_buffer = buffers.get("color", height * width * 3)
            color = colorize_disparity(
                disparity, vmin=0.0, vmax=max_disparity, out=buffer_view(color_buffer, (height, width, 3), np.uint8)
            )
            self._pub_color.publish(array_to_image(color, encoding="rgb8", header=header, buffer=color_buffer))

        done = time.perf_counter()
        self._published += 1
        self._output_rate.tick()
        self._inference.add(inference_s)
        # Everything the node adds around the network: decoding, checks, depth, cloud, colour, publishing.
        self._overhead.add((done - start - inference_s) + (start - decode_start))
        self._overhead_cpu.add((time.thread_time() - inference_done_cpu) + (start_cpu - decode_cpu))
        self._processing.add(time.monotonic() - frame.received)
        now_ns = self.get_clock().now().nanoseconds
        self._latency.add(max(0.0, (now_ns - stamp_to_ns(frame.left.header.stamp)) * 1e-9))

    def _rays(self, camera, decimation: int) -> np.ndarray:
        """``(x/z, y/z, 1)`` of every kept pixel, H/n x W/n x 3; cached because calibration rarely changes.

        ``depth[..., None] * rays`` is then the back-projection (``mono2stereo_core.geometry.depth_to_points``)
        in one multiply instead of three arrays and a stack, per frame.
        """
        key = (camera, decimation)
        if self._rays_cache is None or self._rays_cache[0] != key:
            u = np.arange(0, camera.width, decimation, dtype=np.float32)
            v = np.arange(0, camera.height, decimation, dtype=np.float32)
            rays = np.empty((v.size, u.size, 3), np.float32)
            rays[..., 0] = ((u - np.float32(camera.cx)) / np.float32(camera.fx))[None, :]
            rays[..., 1] = ((v - np.float32(camera.cy)) / np.float32(camera.fy))[:, None]
            rays[..., 2] = 1.0
            self._rays_cache = (key, rays)
        return self._rays_cache[1]

    # ------------------------------------------------------------------ errors and diagnostics
    def _report_error(self, message: str, *, details: str = "", key: str | None = None) -> None:
        """Counts the error, shows it on /diagnostics and logs each distinct error at most every 30 s."""
        now = time.monotonic()
        with self._stats_lock:
            self._errors += 1
            self._errors_in_window += 1
            self._last_error = message
            self._last_error_time = now
            self._last_frame_failed = True
            # Numbers (stamps, sizes) vary frame to frame; the rest identifies "the same" error.
            key = key or re.sub(r"-?\d+(\.\d+)?", "#", message)
            last = self._error_log_times.get(key)
            should_log = last is None or now - last >= ERROR_LOG_PERIOD_S
            if should_log:
                self._error_log_times[key] = now
        if should_log:
            suffix = f"\n{details}" if details else ""
            self.get_logger().error(f"{message} (repeats suppressed for {ERROR_LOG_PERIOD_S:.0f} s){suffix}")

    def _publish_diagnostics(self) -> None:
        with self._stats_lock:
            errors_in_window, self._errors_in_window = self._errors_in_window, 0
            last_error, last_error_time = self._last_error, self._last_error_time
        failing = errors_in_window > 0 or self._last_frame_failed
        latency = self._latency.summary_ms()
        processing = self._processing.summary_ms()
        inference = self._inference.summary_ms()
        overhead = self._overhead.summary_ms()
        overhead_cpu = self._overhead_cpu.summary_ms()
        values = {
            "backend": self.backend,
            "lr_check": bool(getattr(self._runner, "lr_check", False)),
            "occlusion_fill": bool(getattr(self._runner, "occlusion_fill", False)),
            "synchronizer": self._sync.implementation,
            "allocator": self.allocator,
            "input_rate_hz": self._input_rate.rate_hz(),
            "output_rate_hz": self._output_rate.rate_hz(),
            "latency_ms_median": latency["median"],
            "latency_ms_p95": latency["p95"],
            "processing_ms_median": processing["median"],
            "inference_ms_median": inference["median"],
            "overhead_ms_median": overhead["median"],
            "overhead_ms_p95": overhead["p95"],
            "overhead_cpu_ms_median": overhead_cpu["median"],
            "pairs_received": self._pairs_received,
            "inferences": self._inferences,
            "published": self._published,
            "dropped_stale": self._dropped_stale,
            "dropped_unsynchronized": self._sync.dropped,
            "skipped_no_subscribers": self._skipped_no_subscribers,
            "errors": self._errors,
            "errors_last_period": errors_in_window,
            "last_error": last_error,
            "last_error_age_s": time.monotonic() - last_error_time if last_error else -1.0,
        }
        self._pub_diagnostics.publish(
            diagnostic_array(
                stamp=self.get_clock().now().to_msg(),
                name=f"{self.get_name()}: stereo depth",
                hardware_id=self.backend,
                level=ERROR if failing else OK,
                message=last_error if failing else "ok",
                values=values,
            )
        )

    def destroy_node(self) -> None:
        with self._mailbox_cv:
            self._stopping = True
            self._mailbox_cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
        super().destroy_node()


def validate_parameters(values: dict) -> str:
    """Cross-parameter checks the descriptors cannot express; returns the problem or ``''``."""
    if values["backend"] not in BACKENDS:
        return f"backend must be one of {BACKENDS}, instead got {values['backend']!r}"
    if values["precision"] not in PRECISIONS:
        return f"precision must be one of {PRECISIONS}, instead got {values['precision']!r}"
    if values["qos_reliability"] not in RELIABILITY_CHOICES:
        return f"qos_reliability must be one of {RELIABILITY_CHOICES}, instead got {values['qos_reliability']!r}"
    if values["input_scale"] != 1.0 and (values["input_width"] or values["input_height"]):
        return (
            f"set input_scale ({values['input_scale']}) or input_width/input_height "
            f"({values['input_width']}x{values['input_height']}), not both"
        )
    if not values["min_depth"] < values["max_depth"]:
        return f"min_depth must be < max_depth, instead got min_depth={values['min_depth']}, max_depth={values['max_depth']}"
    return ""


def runner_problem(values: dict, runner) -> str:
    """What ``runner`` cannot do that the parameters ask for (an injected runner may be any callable); or ``''``."""
    if values["lr_check"] and not hasattr(runner, "lr_check"):
        return f"lr_check needs a StereoRunner; this node runs a {type(runner).__name__}"
    return ""


def _settings_from(values: dict) -> Settings:
    return Settings(
        max_disparity=float(values["max_disparity"]),
        min_depth=float(values["min_depth"]),
        max_depth=float(values["max_depth"]),
        confidence_threshold=float(values["confidence_threshold"]),
        lr_check=bool(values["lr_check"]),
        occlusion_fill=bool(values["occlusion_fill"]),
        publish_points=bool(values["publish_points"]),
        points_decimation=int(values["points_decimation"]),
    )


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = StereoNode()
        # Two threads: the input/synchronizer group and the diagnostics timer never wait on each other.
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError, ParameterException) as exc:
        # Configuration errors (bad parameters, missing model): one clear line, non-zero exit.
        print(f"stereo_node: {exc}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
