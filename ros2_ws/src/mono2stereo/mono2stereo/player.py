"""``player``: publishes a rosbag2 directory (MCAP or sqlite3) through rclpy with its recorded timing.

For machines without ``ros2 bag play`` (rosbag2_py is not on PyPI), for the demo and for tests. Messages are
read serialized with ``rosbags`` and published as raw CDR, so nothing is deserialized on the way.

    python -m mono2stereo.player recorded/session_x --rate 2 --restamp --exit-when-done \\
        --wait-for-subscribers /left/image_rect --ros-args -r /left/image_rect:=/stereo/left/image_rect

Topics are renamed with ordinary ROS remapping (``--ros-args -r FROM:=TO``).

From Python (what the demo and tests drive)::

    player = BagPlayer(node, "recorded/session_x", rate=1.0, restamp=True)
    player.wait_for_subscribers(["/left/image_rect"], timeout_s=10)
    published = player.play()
"""

from __future__ import annotations

import argparse
import importlib
import struct
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.utilities import remove_ros_args

from mono2stereo.qos import latched_qos, publisher_qos

_STAMP = struct.Struct("<iI")
_LATCHED_TOPICS = ("/tf_static",)


def message_class(msgtype: str):
    """``'sensor_msgs/msg/Image'`` -> the rclpy class; ``ImportError`` naming the type when not installed."""
    parts = msgtype.split("/")
    if len(parts) != 3:
        raise ValueError(f"message type must look like 'pkg/msg/Name', instead got {msgtype!r}")
    package, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"message type {msgtype} is not installed ({exc})") from exc


def _starts_with_header(cls) -> bool:
    fields = cls.get_fields_and_field_types()
    first = next(iter(fields.items()), None)
    return first is not None and first[0] == "header" and first[1] == "std_msgs/Header"


def restamp_cdr(data: bytes, stamp_ns: int) -> bytes:
    """Returns ``data`` with ``header.stamp`` replaced (the message must start with a Header, little-endian CDR)."""
    if len(data) < 12 or not data[1] & 1:
        raise ValueError(f"cannot restamp: expected little-endian CDR of >= 12 bytes, instead got {bytes(data[:4])!r}")
    patched = bytearray(data)
    _STAMP.pack_into(patched, 4, stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)
    return bytes(patched)


class BagPlayer:
    """Publishes the messages of one rosbag2 directory from ``node``, paced by their log times.

    Args:
        bag: rosbag2 directory (``metadata.yaml`` + MCAP/sqlite3 files), as written by ``recorder_node``.
        rate: playback speed factor (2 = twice as fast); must be > 0.
        loop: start over at the end (combine with ``restamp`` for consumers that reject old stamps).
        topics: only these recorded topics (default: all whose message types are installed).
        remap: recorded topic -> published topic.
        restamp: rewrite ``header.stamp`` to the playback time (same offset for every topic, so exactly
            synchronized pairs stay exactly synchronized).
        qos_depth: history depth of the reliable publishers.
    """

    def __init__(
        self,
        node: Node,
        bag: str | Path,
        *,
        rate: float = 1.0,
        loop: bool = False,
        topics: Sequence[str] | None = None,
        remap: dict[str, str] | None = None,
        restamp: bool = False,
        qos_depth: int = 10,
    ) -> None:
        from rosbags.rosbag2 import Reader

        if not rate > 0:
            raise ValueError(f"rate must be > 0, instead got {rate}")
        self._bag = Path(bag)
        if not (self._bag / "metadata.yaml").is_file():
            raise FileNotFoundError(
                f"{self._bag} is not a rosbag2 directory (no metadata.yaml); after a crash run "
                "mono2stereo_core.bags.recover_bag on it first"
            )
        self._node = node
        self._rate = float(rate)
        self._loop = loop
        self._restamp = restamp
        self._reader_cls = Reader
        remap = dict(remap or {})
        self.published = 0
        self._publishers: dict[str, Publisher] = {}
        self._restampable: set[str] = set()
        with Reader(self._bag) as reader:
            connections = list(reader.connections)
        recorded = {c.topic for c in connections}
        for topic in topics or ():
            if topic not in recorded:
                raise ValueError(f"topic {topic} is not in {self._bag}; recorded topics: {sorted(recorded)}")
        for connection in connections:
            if topics and connection.topic not in topics or connection.topic in self._publishers:
                continue
            try:
                cls = message_class(connection.msgtype)
            except ImportError as exc:
                node.get_logger().warning(f"skipping {connection.topic}: {exc}")
                continue
            out_topic = remap.get(connection.topic, connection.topic)
            qos = latched_qos() if connection.topic in _LATCHED_TOPICS else publisher_qos(depth=qos_depth)
            self._publishers[connection.topic] = node.create_publisher(cls, out_topic, qos)
            if _starts_with_header(cls):
                self._restampable.add(connection.topic)
        if not self._publishers:
            raise ValueError(f"{self._bag}: none of the recorded topics can be published here")

    @property
    def topics(self) -> list[str]:
        """The published topic names (after remapping)."""
        return [pub.topic_name for pub in self._publishers.values()]

    def wait_for_subscribers(self, topics: Iterable[str], *, count: int = 1, timeout_s: float = 30.0) -> bool:
        """Blocks until each of ``topics`` (published names) has ``count`` subscribers; False on timeout."""
        by_name = {pub.topic_name: pub for pub in self._publishers.values()}
        wanted = []
        for topic in topics:
            name = self._node.resolve_topic_name(topic)
            if name not in by_name:
                raise ValueError(f"{topic} is not published by this player; published: {sorted(by_name)}")
            wanted.append(by_name[name])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(pub.get_subscription_count() >= count for pub in wanted):
                return True
            time.sleep(0.05)
        return False

    def play(self, *, stop: threading.Event | None = None) -> int:
        """Publishes the bag (repeatedly when looping) and returns the number of messages published."""
        stop = stop or threading.Event()
        offset_ns = 0
        while not stop.is_set():
            last_ns = self._play_once(stop, offset_ns)
            if not self._loop or last_ns is None:
                break
            offset_ns = last_ns + 1
        return self.published

    def _play_once(self, stop: threading.Event, offset_ns: int) -> int | None:
        """One pass; returns the last restamped time (so a loop continues monotonically)."""
        start_wall = time.monotonic()
        start_ros = self._node.get_clock().now().nanoseconds
        if offset_ns:
            start_ros = max(start_ros, offset_ns)
        first_ns = None
        last_stamp = None
        with self._reader_cls(self._bag) as reader:
            connections = [c for c in reader.connections if c.topic in self._publishers]
            for connection, log_ns, data in reader.messages(connections=connections):
                if stop.is_set():
                    break
                if first_ns is None:
                    first_ns = log_ns
                elapsed_s = (log_ns - first_ns) * 1e-9 / self._rate
                delay = start_wall + elapsed_s - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                if self._restamp and connection.topic in self._restampable:
                    last_stamp = start_ros + int(elapsed_s * 1e9)
                    data = restamp_cdr(data, last_stamp)
                self._publishers[connection.topic].publish(bytes(data))
                self.published += 1
        return last_stamp if last_stamp is not None else (None if first_ns is None else start_ros)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="player", description=__doc__.split("\n\n")[0])
    parser.add_argument("bag", type=Path, help="rosbag2 directory")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    parser.add_argument("--loop", action="store_true", help="start over at the end")
    parser.add_argument("--restamp", action="store_true", help="rewrite header stamps to the playback time")
    parser.add_argument("--topics", nargs="+", default=None, help="only these recorded topics")
    parser.add_argument("--qos-depth", type=int, default=10, help="reliable publisher history depth")
    parser.add_argument(
        "--wait-for-subscribers", nargs="+", default=[], metavar="TOPIC",
        help="do not start before each of these published topics has a subscriber",
    )
    parser.add_argument("--wait-timeout", type=float, default=60.0, help="seconds to wait for subscribers")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to sleep before playing (discovery)")
    parser.add_argument(
        "--exit-when-done", action="store_true",
        help="exit after the last message (default: keep the publishers alive until Ctrl-C)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    args = _parse(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = Node("player")
    stop = threading.Event()
    try:
        player = BagPlayer(
            node, args.bag, rate=args.rate, loop=args.loop, topics=args.topics,
            restamp=args.restamp, qos_depth=args.qos_depth,
        )
        if args.wait_for_subscribers and not player.wait_for_subscribers(
            args.wait_for_subscribers, timeout_s=args.wait_timeout
        ):
            node.get_logger().error(f"no subscriber on {args.wait_for_subscribers} after {args.wait_timeout} s")
            return 2
        time.sleep(args.delay)
        start = time.monotonic()
        count = player.play(stop=stop)
        node.get_logger().info(f"published {count} messages from {args.bag} in {time.monotonic() - start:.1f} s")
        if not args.exit_when_done:
            rclpy.spin(node)
    except KeyboardInterrupt:
        stop.set()
    except (ValueError, FileNotFoundError) as exc:
        print(f"player: {exc}", file=sys.stderr)
        return 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
