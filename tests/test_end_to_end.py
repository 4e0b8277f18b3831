"""End to end through real processes: record -> fine-tune -> export -> serve.

The test process publishes a procedural stereo sequence (synchronized left/right rgb8 + camera_info + a sparse
ground-truth depth image, as a robot with a depth sensor would) to a ``recorder_node`` process; SIGINT closes
the bag; ``training/finetune.py --bags`` fine-tunes a tiny checkpoint on it (S2DKD with the sparse depth) for
a few steps; ``training/export.py`` exports the result to ONNX; a ``stereo_node`` process loads that ONNX on
ONNX Runtime and publishes the disparity of a new pair, which must equal what ONNX Runtime computes for that
file in-process. Discovery stays on this host, reliable QoS, own ``ROS_DOMAIN_ID``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from ros_helpers import (
    REPO,
    NodeProcess,
    RosClient,
    camera_info_pair,
    image_msg,
    ros_args,
    ros_env,
    stamp_to_ns,
    tiny_checkpoint,
    wait_until,
)
from safetensors.numpy import load_file
from sensor_msgs.msg import CameraInfo, Image
from stereo_msgs.msg import DisparityImage

from mono2stereo_core.bags import StereoBagReader
from mono2stereo_core.geometry import StereoCamera
from mono2stereo_core.image_encoding import decode_image
from mono2stereo_core.synthesis.procedural import render_sequence

pytestmark = [pytest.mark.ros, pytest.mark.slow]

DOMAIN_ID = 65
FRAME = "left_camera_optical_frame"
WIDTH, HEIGHT = 256, 192
PAIRS = 10
SPARSE_FRACTION = 0.05  # a depth sensor's worth of ground truth: 5 % of the pixels


def _statuses(messages: list, name_part: str) -> list[dict[str, str]]:
    return [
        {kv.key: kv.value for kv in status.values}
        for msg in list(messages)
        for status in msg.status
        if name_part in status.name
    ]


def _run(args: list[str], *, log_path: Path, timeout: float) -> str:
    """Runs a command-line entry point to completion; fails the test with its output otherwise."""
    with log_path.open("wb") as log:
        result = subprocess.run(
            [sys.executable, *args], cwd=str(REPO), env=ros_env(DOMAIN_ID), stdout=log, stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    output = log_path.read_text(errors="replace")
    assert result.returncode == 0, f"{' '.join(args[:1])} exited {result.returncode}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def client():
    c = RosClient(domain_id=DOMAIN_ID, name="e2e_client")
    yield c
    c.close()


@pytest.fixture(scope="module")
def scenes():
    camera = StereoCamera(
        fx=0.9 * WIDTH, fy=0.9 * WIDTH, cx=WIDTH / 2 - 0.5, cy=HEIGHT / 2 - 0.5, baseline=0.12, width=WIDTH, height=HEIGHT
    )
    frames = list(render_sequence(11, num_frames=PAIRS, width=WIDTH, height=HEIGHT, max_disparity=48, camera=camera))
    return camera, frames


def test_recorded_bag_finetunes_exports_and_serves(client, scenes, tmp_path):
    camera, frames = scenes
    start = time.monotonic()

    # -- 1. record: publisher (this process) -> recorder_node -> bag, closed by SIGINT ---------------------
    recorded = tmp_path / "recorded"
    recorder = NodeProcess(
        "mono2stereo.recorder_node",
        ros_args({"output_dir": str(recorded), "record_sparse_depth": True, "qos_reliability": "reliable"}),
        domain_id=DOMAIN_ID,
        log_path=tmp_path / "recorder.log",
    )
    diagnostics, diag_sub = client.collect(DiagnosticArray, "/diagnostics")
    pubs = {
        "left": client.publisher(Image, "/left/image_rect"),
        "right": client.publisher(Image, "/right/image_rect"),
        "left_info": client.publisher(CameraInfo, "/left/camera_info"),
        "right_info": client.publisher(CameraInfo, "/right/camera_info"),
        "sparse": client.publisher(Image, "/sparse_depth"),
    }
    rng = np.random.default_rng(0)
    stamps = []
    try:
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), timeout=60), (
            "recorder_node did not subscribe:\n" + recorder.log()
        )
        time.sleep(0.5)
        next_ns = time.time_ns()
        for scene in frames:
            next_ns += 200_000_000  # 5 Hz
            sparse = np.full(scene.depth.shape, np.nan, np.float32)  # REP 118: NaN = no measurement
            keep = rng.random(scene.depth.shape) < SPARSE_FRACTION
            sparse[keep] = scene.depth[keep]
            left_info, right_info = camera_info_pair(camera, stamp_ns=next_ns, frame_id=FRAME)
            pubs["left_info"].publish(left_info)
            pubs["right_info"].publish(right_info)
            pubs["sparse"].publish(image_msg(sparse, encoding="32FC1", stamp_ns=next_ns, frame_id=FRAME))
            pubs["left"].publish(image_msg(scene.left, encoding="rgb8", stamp_ns=next_ns, frame_id=FRAME))
            pubs["right"].publish(image_msg(scene.right, encoding="rgb8", stamp_ns=next_ns, frame_id="right"))
            stamps.append(next_ns)
            time.sleep(0.2)

        def written() -> dict[str, str]:
            found = _statuses(diagnostics, "recorder")
            return found[-1] if found else {}

        assert wait_until(
            lambda: written().get("pairs_written") == str(PAIRS) and written().get("sparse_written") == str(PAIRS),
            timeout=30,
        ), f"recorder diagnostics: {written()}\n{recorder.log()}"
    finally:
        client.node.destroy_subscription(diag_sub)
        recorder.signal(signal.SIGINT)
        assert recorder.wait(timeout=30) == 0, recorder.log()
    bags = [p for p in recorded.iterdir() if p.is_dir()]
    assert len(bags) == 1, bags
    with StereoBagReader(bags[0], depth_topic="/sparse_depth", require_depth=True) as reader:
        assert len(reader) == PAIRS
        sample = reader[0]
        np.testing.assert_array_equal(sample.left, frames[0].left)
        measured = np.isfinite(sample.sparse_depth)
        assert 0.03 < measured.mean() < 0.07
        np.testing.assert_allclose(sample.sparse_depth[measured], frames[0].depth[measured], rtol=1e-6)

    # -- 2. fine-tune a tiny checkpoint on the recorded bag (S2DKD with the sparse depth) ------------------
    init = tiny_checkpoint(tmp_path / "init")
    run_dir = tmp_path / "ft"
    output = _run(
        [
            "training/finetune.py", "--bags", str(recorded), "--init", str(init), "--depth-topic", "/sparse_depth",
            "--steps", "3", "--out", str(run_dir), "--threads", "1", "--no-progress",
            "--set", "data.crop_height=128", "--set", "data.crop_width=192", "--set", "optim.batch_size=2",
            "--set", "trainer.workers=0", "--set", "trainer.validation=none",
        ],
        log_path=tmp_path / "finetune.log",
        timeout=120,
    )
    finetuned = Path(output.rsplit("weights:", 1)[1].split()[0])
    assert finetuned.is_file() and finetuned.with_suffix(".json").is_file(), output[-2000:]
    # The sidecar records what the weights were trained on: the recorded bag, all its pairs, the sparse topic.
    recipe = json.loads(finetuned.with_suffix(".json").read_text())
    assert recipe["data"]["pairs"] == PAIRS and recipe["data"]["depth_topic"] == "/sparse_depth", recipe["data"]
    assert recipe["data"]["bags"] == [str(bags[0])], recipe["data"]
    before, after = load_file(str(init)), load_file(str(finetuned))
    assert before.keys() == after.keys()
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    assert len(changed) > len(before) // 4, f"fine-tuning changed only {changed}"

    # -- 3. export the fine-tuned checkpoint to ONNX (export.py checks torch vs ONNX Runtime parity) ------
    onnx_path = tmp_path / "finetuned.onnx"
    _run(
        ["training/export.py", "--checkpoint", str(finetuned), "--height", str(HEIGHT), "--width", str(WIDTH), "--onnx", str(onnx_path)],
        log_path=tmp_path / "export.log",
        timeout=120,
    )
    assert onnx_path.is_file() and onnx_path.stat().st_size > 10_000

    # -- 4. a stereo_node loads the new ONNX and publishes the disparity of a new pair --------------------
    node = NodeProcess(
        "mono2stereo.stereo_node",
        ros_args(
            {"model_path": str(onnx_path), "backend": "onnxruntime", "qos_reliability": "reliable", "output_qos_depth": 10},
            namespace="/e2e",
        ),
        domain_id=DOMAIN_ID,
        log_path=tmp_path / "stereo_node.log",
    )
    try:
        disparities, _ = client.collect(DisparityImage, "/e2e/disparity")
        node_diagnostics, _ = client.collect(DiagnosticArray, "/diagnostics")
        inputs = {
            "left": client.publisher(Image, "/e2e/left/image_rect"),
            "right": client.publisher(Image, "/e2e/right/image_rect"),
            "left_info": client.publisher(CameraInfo, "/e2e/left/camera_info"),
            "right_info": client.publisher(CameraInfo, "/e2e/right/camera_info"),
        }
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in inputs.values()), timeout=60), node.log()
        assert wait_until(lambda: client.node.count_publishers("/e2e/disparity") > 0, timeout=30), node.log()
        time.sleep(0.5)
        scene = frames[-1]
        stamp_ns = time.time_ns()
        left_info, right_info = camera_info_pair(camera, stamp_ns=stamp_ns, frame_id=FRAME)
        inputs["left_info"].publish(left_info)
        inputs["right_info"].publish(right_info)
        time.sleep(0.2)
        inputs["left"].publish(image_msg(scene.left, encoding="rgb8", stamp_ns=stamp_ns, frame_id=FRAME))
        inputs["right"].publish(image_msg(scene.right, encoding="rgb8", stamp_ns=stamp_ns, frame_id="right"))
        assert wait_until(lambda: len(disparities) > 0, timeout=60), node.log()
        msg = disparities[0]
        assert stamp_to_ns(msg.header.stamp) == stamp_ns and msg.header.frame_id == FRAME
        assert msg.f == pytest.approx(camera.fx) and msg.t == pytest.approx(camera.baseline)
        assert wait_until(lambda: any(s.get("backend") == "onnxruntime" for s in _statuses(node_diagnostics, "stereo")), timeout=10)
        assert str(onnx_path) in node.log(), node.log()
    finally:
        assert node.stop() == 0, node.log()

    # The node's numbers are the new model's: ONNX Runtime on the same file and pair, in this process.
    from mono2stereo_core.inference import load_runner

    expected, _ = load_runner(onnx_path, backend="onnxruntime")(scene.left, scene.right)
    image = msg.image
    published = decode_image(
        encoding=image.encoding, height=image.height, width=image.width, step=image.step, data=image.data,
        is_bigendian=image.is_bigendian,
    )
    valid = published >= msg.min_disparity
    assert valid.mean() > 0.5
    np.testing.assert_allclose(published[valid] - msg.min_disparity, expected[valid], atol=1e-3)
    assert time.monotonic() - start < 120, f"end-to-end took {time.monotonic() - start:.0f} s"
