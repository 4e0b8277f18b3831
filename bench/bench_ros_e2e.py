"""End-to-end benchmark of stereo_node through real rclpy (not a test).

Publishes synchronized 640x480 rgb8 pairs + camera_info at a fixed rate from this process to a
``stereo_node`` subprocess and subscribes to ``disparity`` (+ ``depth`` and ``points2``, so the node does
its full post-processing). Reports:

- latency median / p99 from publish to disparity receipt (same host, monotonic clock of this process);
- drop rate: published pairs without a disparity (latest-frame-wins drops when inference is slower than
  the camera, plus anything lost in transport);
- the node's own overhead beyond inference (decode, checks, depth, cloud, colour, publish), from its
  ``/diagnostics``; goal <= 10 ms per frame (wall clock; also reported as CPU time of the node's worker
  thread, which leaves out the time spent waiting for a core that the rest of the machine holds);
- RSS growth of the node process between the end of warm-up and the end of the run (goal < 20 MB / 10 min).

    python bench/bench_ros_e2e.py --duration 60 [--model m.onnx] [--input-size 320x240] [--json out.json]

Without ``--model`` a randomly initialised ``m2s_tiny`` checkpoint is created in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from ros_helpers import (  # noqa: E402
    NodeProcess,
    RosClient,
    camera_info_pair,
    motorcycle_pair,
    ros_args,
    stamp,
    stamp_to_ns,
    tiny_checkpoint,
    uint8_array,
    wait_until,
)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

from mono2stereo_core.image_encoding import encode_image  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of publishing after warm-up")
    parser.add_argument("--rate", type=float, default=15.0, help="camera rate (Hz)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--model", type=Path, default=None, help=".safetensors/.onnx (default: random m2s_tiny)")
    parser.add_argument("--input-size", default="", help="network input WxH (node parameters input_width/height)")
    parser.add_argument("--points-decimation", type=int, default=1, help="node parameter points_decimation")
    parser.add_argument("--qos-depth", type=int, default=5, help="node parameter qos_depth (input history)")
    parser.add_argument(
        "--output-qos-depth", type=int, default=None,
        help="node parameter output_qos_depth (default: the node's, 1 = latest only for slow readers)",
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds published before measuring")
    parser.add_argument("--domain-id", type=int, default=90)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_ros_e2e_"))
    model = args.model or tiny_checkpoint(tmp)
    params = {
        "model_path": str(model), "qos_reliability": "reliable", "qos_depth": args.qos_depth,
        "points_decimation": args.points_decimation,
    }
    if args.output_qos_depth is not None:
        params["output_qos_depth"] = args.output_qos_depth
    if args.input_size:
        w, h = (int(v) for v in args.input_size.lower().split("x"))
        params.update(input_width=w, input_height=h)
    node = NodeProcess("mono2stereo.stereo_node", ros_args(params), domain_id=args.domain_id, log_path=tmp / "node.log")
    client = RosClient(domain_id=args.domain_id, name="bench")
    try:
        pubs = [client.publisher(t, n) for t, n in (
            (Image, "/left/image_rect"), (Image, "/right/image_rect"),
            (CameraInfo, "/left/camera_info"), (CameraInfo, "/right/camera_info"))]
        sent: dict[int, float] = {}
        received: dict[int, float] = {}
        client.node.create_subscription(
            DisparityImage, "/disparity", lambda m: received.setdefault(stamp_to_ns(m.header.stamp), time.monotonic()), 10
        )
        client.node.create_subscription(Image, "/depth", lambda m: None, 10)
        client.node.create_subscription(PointCloud2, "/points2", lambda m: None, 10)
        diagnostics, _ = client.collect(DiagnosticArray, "/diagnostics")
        if not wait_until(lambda: all(p.get_subscription_count() for p in pubs) and diagnostics, timeout=120):
            raise RuntimeError(f"stereo_node did not come up:\n{node.log()}")
        time.sleep(1.0)

        left, right, camera = motorcycle_pair(width=args.width, height=args.height)
        msgs = []
        for array, frame in ((left, "left"), (right, "right")):
            msg = Image(height=args.height, width=args.width, encoding="rgb8")
            msg.header.frame_id = frame
            step, data = encode_image(array, "rgb8")
            msg.step, msg.data = step, uint8_array(data)
            msgs.append(msg)
        infos = camera_info_pair(camera, stamp_ns=0, frame_id="left")

        rss_samples: list[tuple[float, float]] = []

        def publish_for(seconds: float, record: bool) -> int:
            start, i = time.monotonic(), 0
            while time.monotonic() - start < seconds:
                if record and i % int(args.rate * 10) == 0:  # every ~10 s
                    rss_samples.append((round(time.monotonic() - start, 1), round(rss_mb(node.proc.pid), 1)))
                delay = start + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now_ns = time.time_ns()
                for m in (*msgs, *infos):
                    m.header.stamp = stamp(now_ns)
                pubs[2].publish(infos[0])
                pubs[3].publish(infos[1])
                if record:
                    sent[now_ns] = time.monotonic()
                pubs[0].publish(msgs[0])
                pubs[1].publish(msgs[1])
                i += 1
            return i

        publish_for(args.warmup, record=False)
        time.sleep(2.0)
        rss_start = rss_mb(node.proc.pid)
        received.clear()
        count = publish_for(args.duration, record=True)
        time.sleep(3.0)
        rss_end = rss_mb(node.proc.pid)

        latencies = np.array([(received[s] - sent[s]) * 1e3 for s in sent if s in received])
        values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
        result = {
            "card": "CPU only (2 shared cores), torch threads=1",
            "resolution": f"{args.width}x{args.height}",
            "network_input": args.input_size or "image size",
            "points_decimation": args.points_decimation,
            "backend": values.get("backend"),
            "rate_hz": args.rate,
            "duration_s": args.duration,
            "published_pairs": count,
            "disparity_received": int(latencies.size),
            "drop_rate": 1.0 - latencies.size / max(count, 1),
            "latency_ms_median": float(np.median(latencies)) if latencies.size else None,
            "latency_ms_p99": float(np.percentile(latencies, 99)) if latencies.size else None,
            "output_rate_hz": float(values.get("output_rate_hz", "nan")),
            "inference_ms_median": float(values.get("inference_ms_median", "nan")),
            "node_overhead_ms_median": float(values.get("overhead_ms_median", "nan")),
            "node_overhead_ms_p95": float(values.get("overhead_ms_p95", "nan")),
            "node_overhead_cpu_ms_median": float(values.get("overhead_cpu_ms_median", "nan")),
            "dropped_stale": int(values.get("dropped_stale", 0)),
            # Since the node started (warm-up included): where published pairs went.
            "node_pairs_received": int(values.get("pairs_received", 0)),
            "node_dropped_unsynchronized": int(values.get("dropped_unsynchronized", 0)),
            "node_published": int(values.get("published", 0)),
            "rss_start_mb": rss_start,
            "rss_end_mb": rss_end,
            "rss_growth_mb": rss_end - rss_start,
            # Growth over the second half separates a leak (keeps growing) from allocator warm-up (plateaus).
            "rss_growth_second_half_mb": rss_end - rss_samples[len(rss_samples) // 2][1] if rss_samples else None,
            # After the first minute the bounded queues (input history, synchronizer, DDS pools, output buffers)
            # are full: growth from there on is what a leak would show.
            "rss_growth_after_60s_mb": (
                None if (at_60s := next((mb for t, mb in rss_samples if t >= 59.0), None)) is None else rss_end - at_60s
            ),
            "rss_samples_s_mb": rss_samples,
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        client.close()
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
