"""rosbag2 (MCAP) recording and reading for stereo fine-tuning data, without rclpy.

Writing (:class:`StereoBagWriter`): one rosbag2 directory per session, split into ``<session>_<N>.mcap``
files exactly like ``ros2 bag record --max-bag-size/--max-bag-duration`` (one ``metadata.yaml`` lists them),
so ``ros2 bag play``, ``rosbags`` and Foxglove read the result. Messages are CDR bytes (the recorder passes
``rclpy.serialization.serialize_message`` output; rosbags' CDR is byte-identical) or rosbags message objects.
Storage is written with the ``mcap`` library rather than ``rosbags.rosbag2.Writer`` because crash safety
needs control over chunking: rosbags' MCAP writer keeps up to 1 MiB per chunk in memory with no public
flush, whereas ``mcap.writer.Writer.flush()`` closes the chunk and hands it to the OS. Flushing every
``flush_interval_s`` means a ``kill -9`` loses at most that much data; :func:`recover_bag` then salvages
the unterminated file (non-seeking read up to the last complete record) and rebuilds ``metadata.yaml``.

Reading (:class:`StereoBagReader`): pairs left/right images and camera_infos by approximate time
(:mod:`mono2stereo_core.sync`, header stamps), builds an index of pairs on open and decodes samples lazily,
with optional sparse metric depth from a depth image topic or a LiDAR cloud projected into the left
rectified camera with ``/tf_static`` extrinsics.
"""

from __future__ import annotations

import bisect
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import ReaderError
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from .geometry import StereoCamera
from .image_encoding import DEPTH_ENCODINGS, decode_image, depth_image_to_metres, to_rgb8
from .pointcloud import StaticTransformTree, project_points, read_points
from .sync import ApproximateTimeSynchronizer

DEFAULT_STORE = Stores.ROS2_KILTED
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
_MCAP_MAGIC = b"\x89MCAP0\r\n"
_LIBRARY = "mono2stereo_core.bags"
# Latched topics must be replayed with transient-local durability or late subscribers never see them.
_LATCHED_QOS = [
    {
        "history": "keep_last",
        "depth": 1,
        "reliability": "reliable",
        "durability": "transient_local",
        "deadline": {"sec": 0, "nsec": 0},
        "lifespan": {"sec": 0, "nsec": 0},
        "liveliness": "automatic",
        "liveliness_lease_duration": {"sec": 0, "nsec": 0},
        "avoid_ros_namespace_conventions": False,
    }
]


class BagError(ValueError):
    """A bag that cannot be used as asked: missing, corrupt, truncated, or without the needed topics."""


def resolve_typestore(typestore: Typestore | Stores | str | None = None) -> Typestore:
    """A rosbags typestore from an instance, a ``Stores`` member or its name (``"ros2_humble"``); None = Kilted."""
    if typestore is None:
        return get_typestore(DEFAULT_STORE)
    if isinstance(typestore, Stores):
        return get_typestore(typestore)
    if isinstance(typestore, str):
        try:
            return get_typestore(Stores[typestore.upper()])
        except KeyError:
            raise ValueError(
                f"unknown typestore {typestore!r}; choose one of {[s.name.lower() for s in Stores]}"
            ) from None
    return typestore


# --------------------------------------------------------------------------------------------- metadata


def _mcap_is_complete(path: Path) -> bool:
    """True when the file ends with the MCAP footer magic (its writer called ``finish``)."""
    try:
        size = path.stat().st_size
        if size < 2 * len(_MCAP_MAGIC) + 29:
            return False
        with path.open("rb") as f:
            f.seek(-len(_MCAP_MAGIC), os.SEEK_END)
            return f.read() == _MCAP_MAGIC
    except OSError:
        return False


def _split_index(path: Path) -> int:
    match = re.search(r"_(\d+)\.mcap$", path.name)
    return int(match.group(1)) if match else -1


def write_metadata(bag_dir: Path | str, *, typestore: Typestore | Stores | str | None = None) -> dict:
    """(Re)writes ``metadata.yaml`` (rosbag2 format version 9) from the complete MCAP files of ``bag_dir``.

    Per-file statistics come from each file's MCAP summary, so the result is right whoever wrote the files.
    Files without messages are left out (rosbag2 readers cannot open a file that has no chunk). Returns the
    ``rosbag2_bagfile_information`` mapping.
    """
    bag_dir = Path(bag_dir)
    ts = resolve_typestore(typestore)
    files = sorted((p for p in bag_dir.glob("*.mcap") if _mcap_is_complete(p)), key=lambda p: (_split_index(p), p.name))
    topics: dict[tuple[str, str], dict] = {}
    file_entries = []
    for path in files:
        with path.open("rb") as f:
            try:
                summary = make_reader(f).get_summary()
            except (McapError, ValueError, EOFError) as err:
                raise BagError(f"MCAP file {path} has a corrupt summary: {err}") from err
        if summary is None or summary.statistics is None or summary.statistics.message_count == 0:
            continue
        stats = summary.statistics
        for channel_id, channel in summary.channels.items():
            schema = summary.schemas.get(channel.schema_id)
            msgtype = schema.name if schema is not None else ""
            key = (channel.topic, msgtype)
            if key not in topics:
                qos_text = channel.metadata.get("offered_qos_profiles", "")
                try:
                    qos = yaml.safe_load(qos_text) if qos_text else []
                except yaml.YAMLError:
                    qos = []
                try:
                    digest = ts.hash_rihs01(msgtype)
                except Exception:  # noqa: BLE001 - a type this store does not know simply gets no hash
                    digest = ""
                topics[key] = {
                    "topic_metadata": {
                        "name": channel.topic,
                        "type": msgtype,
                        "serialization_format": channel.message_encoding,
                        "offered_qos_profiles": qos or [],
                        "type_description_hash": digest,
                    },
                    "message_count": 0,
                }
            topics[key]["message_count"] += int(stats.channel_message_counts.get(channel_id, 0))
        file_entries.append(
            {
                "path": path.name,
                "starting_time": {"nanoseconds_since_epoch": int(stats.message_start_time)},
                "duration": {"nanoseconds": int(stats.message_end_time - stats.message_start_time)},
                "message_count": int(stats.message_count),
            }
        )
    start = min((e["starting_time"]["nanoseconds_since_epoch"] for e in file_entries), default=0)
    end = max(
        (e["starting_time"]["nanoseconds_since_epoch"] + e["duration"]["nanoseconds"] for e in file_entries),
        default=0,
    )
    info = {
        "version": 9,
        "storage_identifier": "mcap",
        "relative_file_paths": [e["path"] for e in file_entries],
        "duration": {"nanoseconds": end - start},
        "starting_time": {"nanoseconds_since_epoch": start},
        "message_count": sum(e["message_count"] for e in file_entries),
        "topics_with_message_count": list(topics.values()),
        "compression_format": "",
        "compression_mode": "",
        "files": file_entries,
        "custom_data": None,
        "ros_distro": "mono2stereo",
    }
    tmp = bag_dir / "metadata.yaml.tmp"
    tmp.write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False))
    os.replace(tmp, bag_dir / "metadata.yaml")
    return info


# --------------------------------------------------------------------------------------------- recovery


@dataclass(frozen=True)
class BagRecovery:
    """What :func:`recover_bag` did: files salvaged and the messages the bag now holds."""

    path: Path
    salvaged_files: tuple[str, ...]
    salvaged_messages: int
    message_count: int


def _salvage_mcap(path: Path) -> int:
    """Rewrites an unterminated MCAP file as a complete one holding every fully written message.

    The file is read front to back with the non-seeking reader (no footer or index needed); the first
    incomplete or corrupt record ends the salvage. The rewrite replaces the file atomically.
    """
    tmp = path.with_name(path.name + ".recovering")
    count = 0
    with path.open("rb") as src, tmp.open("wb") as dst:
        writer = McapWriter(dst, compression=CompressionType.NONE)
        schema_ids: dict[int, int] = {}
        channel_ids: dict[int, int] = {}
        header_seen = False
        try:
            for record in StreamReader(src, skip_magic=False, validate_crcs=True).records:
                kind = type(record).__name__
                if kind == "Header":
                    writer.start(profile=record.profile or "ros2", library=record.library or _LIBRARY)
                    header_seen = True
                elif not header_seen:
                    break
                elif kind == "Schema" and record.id not in schema_ids:
                    schema_ids[record.id] = writer.register_schema(record.name, record.encoding, record.data)
                elif kind == "Channel" and record.id not in channel_ids:
                    channel_ids[record.id] = writer.register_channel(
                        record.topic, record.message_encoding, schema_ids.get(record.schema_id, 0),
                        dict(record.metadata),
                    )
                elif kind == "Message" and record.channel_id in channel_ids:
                    writer.add_message(
                        channel_ids[record.channel_id], record.log_time, record.data, record.publish_time,
                        record.sequence,
                    )
                    count += 1
                elif kind in ("DataEnd", "Footer"):
                    break
        except Exception:  # noqa: BLE001
            # Any error here is tail damage: the killed writer left a partial record or chunk (the reader raises
            # EndOfFile, McapError, struct/zlib/zstd errors depending on where it was cut). Everything before it
            # has been copied, which is the point of salvaging.
            pass
        if not header_seen:
            dst.close()
            tmp.unlink()
            raise BagError(f"{path} is not an MCAP file (no MCAP header at its start); cannot recover it")
        writer.finish()
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    return count


def recover_bag(path: Path | str, *, typestore: Typestore | Stores | str | None = None) -> BagRecovery:
    """Makes a bag whose writer died (``kill -9``, power loss) readable again.

    Every ``*.mcap`` file of the bag directory that lacks its footer is salvaged up to its last complete
    record (with :class:`StreamReader`, tolerating a truncated tail), then ``metadata.yaml`` is rebuilt from
    all files. Safe to run on a healthy bag (it only rewrites ``metadata.yaml``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    if not path.is_dir():
        raise BagError(f"recover_bag expects a rosbag2 directory, instead got the file {path}")
    mcaps = sorted(path.glob("*.mcap"))
    if not mcaps:
        raise BagError(f"bag directory {path} contains no .mcap file; nothing to recover")
    for stale in path.glob("*.mcap.recovering"):
        stale.unlink()
    salvaged, salvaged_messages = [], 0
    for mcap_path in mcaps:
        if not _mcap_is_complete(mcap_path):
            salvaged_messages += _salvage_mcap(mcap_path)
            salvaged.append(mcap_path.name)
    info = write_metadata(path, typestore=typestore)
    return BagRecovery(path, tuple(salvaged), salvaged_messages, int(info["message_count"]))


# --------------------------------------------------------------------------------------------- writer


class StereoBagWriter:
    """Records one session as a rosbag2 MCAP bag, split by size and/or duration, crash-tolerant.

    Layout: ``<output_dir>/<session>/<session>_<N>.mcap`` + ``metadata.yaml`` (rewritten after every
    split and on :meth:`close`, so completed splits stay readable even if the process dies).

    Args:
        output_dir: parent folder of the session folder (created if needed).
        session_name: folder name; default ``rosbag2_YYYY_MM_DD-HH_MM_SS`` (``ros2 bag record``'s naming),
            with ``_1``, ``_2`` ... appended when it exists.
        split_size_bytes: start a new file once the current one holds this many bytes of messages.
        split_duration_s: start a new file once the current one spans this much bag time.
        flush_interval_s: hand buffered messages to the OS at least this often (bounds the loss on a crash).
            A background thread enforces it even when messages stop arriving; 0 flushes after every message.
        chunk_size_bytes: MCAP chunk size before a forced flush.
        typestore: rosbags typestore used for message definitions (default ROS 2 Kilted).
        topics: optional ``{topic: msgtype}`` registered up front in every split file.
        compression: ``"none"`` (default; images barely compress), ``"zstd"`` or ``"lz4"`` per chunk.
    """

    def __init__(
        self,
        output_dir: Path | str,
        *,
        session_name: str | None = None,
        split_size_bytes: int | None = None,
        split_duration_s: float | None = None,
        flush_interval_s: float = 0.5,
        chunk_size_bytes: int = 1 << 20,
        typestore: Typestore | Stores | str | None = None,
        topics: Mapping[str, str] | None = None,
        compression: str = "none",
    ) -> None:
        if split_size_bytes is not None and int(split_size_bytes) <= 0:
            raise ValueError(f"split_size_bytes must be positive, instead got {split_size_bytes}")
        if split_duration_s is not None and not float(split_duration_s) > 0:
            raise ValueError(f"split_duration_s must be positive, instead got {split_duration_s}")
        if not float(flush_interval_s) >= 0:
            raise ValueError(f"flush_interval_s must be >= 0, instead got {flush_interval_s}")
        compressions = {"none": CompressionType.NONE, "zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4}
        if compression not in compressions:
            raise ValueError(f"compression must be one of {sorted(compressions)}, instead got {compression!r}")
        self.typestore = resolve_typestore(typestore)
        self.split_size_bytes = None if split_size_bytes is None else int(split_size_bytes)
        self.split_duration_ns = None if split_duration_s is None else round(float(split_duration_s) * 1e9)
        self.flush_interval_s = float(flush_interval_s)
        self.chunk_size_bytes = int(chunk_size_bytes)
        self._compression = compressions[compression]
        self._declared = dict(topics or {})
        for topic, msgtype in self._declared.items():
            self._schema_text(msgtype, topic)

        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        base = session_name or datetime.now().strftime("rosbag2_%Y_%m_%d-%H_%M_%S")
        if "/" in base or base in ("", ".", ".."):
            raise ValueError(f"session_name must be a plain folder name, instead got {base!r}")
        path, suffix = output_dir / base, 0
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                suffix += 1
                path = output_dir / f"{base}_{suffix}"
        self.path = path
        self.name = path.name
        self.message_count = 0
        self.files: list[Path] = []
        self._lock = threading.Lock()
        self._writer: McapWriter | None = None
        self._stream = None
        self._channels: dict[tuple[str, str], int] = {}
        self._schemas: dict[str, int] = {}
        self._split_bytes = 0
        self._split_start_ns: int | None = None
        self.topic_counts: dict[str, int] = {}
        self._last_flush = time.monotonic()
        self._closed = False
        self._open_split()
        self._stop_flusher = threading.Event()
        self._flusher: threading.Thread | None = None
        if self.flush_interval_s > 0:
            self._flusher = threading.Thread(target=self._flush_periodically, name=f"bag-flush-{self.name}", daemon=True)
            self._flusher.start()

    # -- internals --------------------------------------------------------------------------------------

    def _flush_periodically(self) -> None:
        while not self._stop_flusher.wait(self.flush_interval_s):
            with self._lock:
                if self._writer is not None and time.monotonic() - self._last_flush >= self.flush_interval_s:
                    self._writer.flush()
                    self._last_flush = time.monotonic()

    def _schema_text(self, msgtype: str, topic: str) -> str:
        try:
            text, _ = self.typestore.generate_msgdef(msgtype, ros_version=2)
        except Exception as err:  # noqa: BLE001 - rosbags raises several types for unknown messages
            raise ValueError(
                f"message type {msgtype!r} of topic {topic!r} is unknown to the typestore; register it first"
            ) from err
        return text

    def _open_split(self) -> None:
        path = self.path / f"{self.name}_{len(self.files)}.mcap"
        self._stream = path.open("xb")
        self._writer = McapWriter(self._stream, chunk_size=self.chunk_size_bytes, compression=self._compression)
        self._writer.start(profile="ros2", library=_LIBRARY)
        self.files.append(path)
        self._channels.clear()
        self._schemas.clear()
        self._split_bytes = 0
        self._split_start_ns = None
        for topic, msgtype in self._declared.items():
            self._channel(topic, msgtype)
        self._writer.flush()

    def _close_split(self) -> None:
        assert self._writer is not None and self._stream is not None
        self._writer.finish()
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        self._writer, self._stream = None, None
        write_metadata(self.path, typestore=self.typestore)

    def _channel(self, topic: str, msgtype: str) -> int:
        key = (topic, msgtype)
        channel = self._channels.get(key)
        if channel is not None:
            return channel
        assert self._writer is not None
        schema = self._schemas.get(msgtype)
        if schema is None:
            text = self._schema_text(msgtype, topic)
            schema = self._writer.register_schema(name=msgtype, encoding="ros2msg", data=text.encode())
            self._schemas[msgtype] = schema
        qos = _LATCHED_QOS if topic.rstrip("/").endswith("tf_static") else []
        # The same two keys rosbag2 (Jazzy and later) writes, so its MCAP plugin replays the QoS.
        channel = self._writer.register_channel(
            topic=topic, message_encoding="cdr", schema_id=schema,
            metadata={"offered_qos_profiles": yaml.safe_dump(qos), "topic_type_hash": self.typestore.hash_rihs01(msgtype)},
        )
        self._channels[key] = channel
        return channel

    # -- public API ---------------------------------------------------------------------------------------

    def write(self, topic: str, msgtype: str, stamp_ns: int, data: bytes | bytearray | memoryview) -> None:
        """Appends one CDR-serialized message.

        Args:
            topic: topic name (e.g. ``/stereo/left/image_rect``).
            msgtype: ROS type name, ``pkg/msg/Type``.
            stamp_ns: bag (log) time in nanoseconds, normally the reception time; readers pair by header stamp.
            data: CDR bytes with their 4-byte encapsulation header (``serialize_message`` output).
        """
        stamp_ns = int(stamp_ns)
        if stamp_ns < 0:
            raise ValueError(f"stamp_ns must be >= 0 nanoseconds, instead got {stamp_ns}")
        payload = bytes(data)
        if len(payload) < 4:
            raise ValueError(f"message on {topic!r} has {len(payload)} bytes; CDR needs a 4-byte header")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"bag {self.path} is closed")
            split_full = self._split_bytes > 0 and (
                (self.split_size_bytes is not None and self._split_bytes + len(payload) > self.split_size_bytes)
                or (
                    self.split_duration_ns is not None
                    and self._split_start_ns is not None
                    and stamp_ns - self._split_start_ns >= self.split_duration_ns
                )
            )
            if split_full:
                self._close_split()
                self._open_split()
            channel = self._channel(topic, msgtype)
            assert self._writer is not None
            self._writer.add_message(channel, log_time=stamp_ns, data=payload, publish_time=stamp_ns)
            self._split_bytes += len(payload)
            if self._split_start_ns is None:
                self._split_start_ns = stamp_ns
            self.message_count += 1
            self.topic_counts[topic] = self.topic_counts.get(topic, 0) + 1
            now = time.monotonic()
            if now - self._last_flush >= self.flush_interval_s:
                self._writer.flush()
                self._last_flush = now

    def write_msg(self, topic: str, msg, *, stamp_ns: int | None = None) -> None:
        """Serializes and appends a rosbags message object; the log time defaults to its header stamp."""
        msgtype = getattr(msg, "__msgtype__", None)
        if msgtype is None:
            raise TypeError(f"write_msg needs a rosbags message object, instead got {type(msg).__name__}")
        if stamp_ns is None:
            header = getattr(msg, "header", None)
            stamp_ns = (
                header.stamp.sec * 1_000_000_000 + header.stamp.nanosec if header is not None else time.time_ns()
            )
        self.write(topic, msgtype, stamp_ns, self.typestore.serialize_cdr(msg, msgtype))

    def flush(self) -> None:
        """Hands buffered messages to the OS now (call from a timer when messages stop arriving)."""
        with self._lock:
            if self._writer is not None:
                self._writer.flush()
                self._last_flush = time.monotonic()

    def close(self) -> Path:
        """Finishes the current file and writes ``metadata.yaml``; idempotent. Returns the bag folder."""
        with self._lock:
            if self._closed:
                return self.path
            self._closed = True
            self._close_split()
        self._stop_flusher.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()
        return self.path

    def __enter__(self) -> StereoBagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- reader


@dataclass
class StereoSample:
    """One synchronized stereo pair.

    ``left``/``right``: H x W x 3 uint8 RGB; ``camera``: rectified rig from the camera_info pair;
    ``sparse_depth``: H x W float32 metres (NaN = no measurement) or None; ``stamp_ns``: left header stamp.
    """

    stamp_ns: int
    left: np.ndarray
    right: np.ndarray
    camera: StereoCamera
    sparse_depth: np.ndarray | None = None
    frame_id: str = ""


@dataclass(frozen=True)
class _MessageRef:
    """Where a message lives in the bag: its connection and log time (plus rank among equal log times)."""

    topic: str
    log_time: int
    rank: int = 0


@dataclass
class _Entry:
    stamp_ns: int
    left: _MessageRef
    right: _MessageRef
    camera: StereoCamera
    frame_id: str
    size: tuple[int, int]
    rect_rotation: np.ndarray
    depth: _MessageRef | None = None
    extra: dict = field(default_factory=dict)


def _stamp_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def find_bags(root: Path | str) -> list[Path]:
    """rosbag2 directories (folders with ``metadata.yaml``) at or below ``root``, sorted by path."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"bag folder {root} does not exist")
    if (root / "metadata.yaml").exists():
        return [root]
    return sorted(p.parent for p in root.rglob("metadata.yaml"))


def _pick_topic(topics: Mapping[str, str], msgtype: str, side: str, role: str, near: str | None = None) -> str:
    """Auto-detects the ``side`` (left/right) topic of ``msgtype``; errors list what the bag has."""
    other = "right" if side == "left" else "left"
    candidates = [t for t, ty in topics.items() if ty == msgtype and side in t.lower() and other not in t.lower()]
    if role == "image":
        # Depth/disparity images may also be in a "left" namespace; they are not the camera image.
        candidates = [t for t in candidates if not re.search(r"depth|disparity|confidence", t.lower())]
        if len(candidates) > 1:
            rect = [t for t in candidates if "rect" in t.lower()]
            candidates = rect or candidates
    if len(candidates) > 1 and near is not None:
        namespace = near.rsplit("/", 1)[0]
        same_ns = [t for t in candidates if t.rsplit("/", 1)[0] == namespace or near.startswith(t.rsplit("/", 1)[0] + "/")]
        candidates = same_ns or candidates
    if len(candidates) == 1:
        return candidates[0]
    listing = ", ".join(f"{t} [{ty}]" for t, ty in sorted(topics.items()))
    if not candidates:
        raise BagError(f"no {side} {role} topic ({msgtype} with '{side}' in its name) in the bag; it has: {listing}")
    argument = f"{side}_topic" if role == "image" else f"{side}_info_topic"
    raise BagError(f"several {side} {role} topics {candidates}; pass {argument}= explicitly")


def _camera_from_infos(left_info, right_info, left_topic: str, right_topic: str) -> StereoCamera:
    pl = np.asarray(left_info.p, dtype=np.float64).reshape(3, 4)
    pr = np.asarray(right_info.p, dtype=np.float64).reshape(3, 4)
    for topic, p in ((left_topic, pl), (right_topic, pr)):
        if not (p[0, 0] > 0 and p[1, 1] > 0):
            raise BagError(
                f"camera_info on {topic} has zero focal length in P (fx={p[0, 0]}, fy={p[1, 1]}); "
                "the camera is not calibrated"
            )
    if (left_info.width, left_info.height) != (right_info.width, right_info.height):
        raise BagError(
            f"left camera_info {left_topic} is {left_info.width}x{left_info.height} but right {right_topic} is "
            f"{right_info.width}x{right_info.height}"
        )
    # In a rectified pair both projections share fx, fy and cy; anything else means raw calibrations.
    if not np.allclose([pl[0, 0], pl[1, 1], pl[1, 2]], [pr[0, 0], pr[1, 1], pr[1, 2]], rtol=1e-6, atol=1e-3):
        raise BagError(
            f"camera_info P of {left_topic} and {right_topic} are not a rectified pair (fx, fy, cy differ: "
            f"{pl[0, 0]:.3f}/{pr[0, 0]:.3f}, {pl[1, 1]:.3f}/{pr[1, 1]:.3f}, {pl[1, 2]:.3f}/{pr[1, 2]:.3f})"
        )
    if pl[0, 3] != 0 or not pr[0, 3] < 0:
        raise BagError(
            f"camera_info P[3] is {pl[0, 3]} on {left_topic} and {pr[0, 3]} on {right_topic}; a rectified pair "
            "has P[3] = 0 on the left and -fx*baseline < 0 on the right (swapped or unrectified?)"
        )
    return StereoCamera.from_projection(pl, pr, width=int(left_info.width), height=int(left_info.height))


class StereoBagReader(Sequence):
    """Synchronized stereo samples from one rosbag2 bag (directory or ``.mcap`` file).

    Topics left ``None`` are detected by type and name (``left``/``right`` in the topic). On open the bag is
    scanned once to pair left/right images and camera_infos by approximate time (header stamps, ``slop_s``)
    and to match sparse depth (nearest stamp within ``depth_slop_s``); samples are decoded on access.

    Args:
        depth_topic: ``sensor_msgs/Image`` (16UC1 mm or 32FC1 m) registered to the left rectified image.
        lidar_topic: ``sensor_msgs/PointCloud2`` projected into the left camera with ``/tf_static`` (frames
            from the cloud and the left camera_info headers) or with ``T_cam_lidar`` (4 x 4) when given.
        require_depth: keep only pairs that have a sparse depth match.
        typestore: default typestore for types the bag does not define (default ROS 2 Kilted).

    Safe with ``torch.utils.data.DataLoader`` workers: each process opens its own file handles.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        left_topic: str | None = None,
        right_topic: str | None = None,
        left_info_topic: str | None = None,
        right_info_topic: str | None = None,
        depth_topic: str | None = None,
        lidar_topic: str | None = None,
        slop_s: float = 0.01,
        depth_slop_s: float | None = None,
        T_cam_lidar: np.ndarray | None = None,
        require_depth: bool = False,
        queue_size: int = 100,
        typestore: Typestore | Stores | str | None = None,
    ) -> None:
        self.path = Path(path)
        if depth_topic and lidar_topic:
            raise ValueError(f"give depth_topic or lidar_topic, not both (got {depth_topic!r} and {lidar_topic!r})")
        if not self.path.exists():
            raise FileNotFoundError(f"bag {self.path} does not exist")
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            if any(self.path.glob("*.mcap")):
                raise BagError(
                    f"bag {self.path} has no metadata.yaml: its recorder probably died; run "
                    f"mono2stereo_core.bags.recover_bag('{self.path}') first"
                )
            raise BagError(
                f"{self.path} is neither a rosbag2 directory (no metadata.yaml) nor an .mcap file; for a folder "
                "of bags (e.g. recorded/) use find_bags() and one reader per bag"
            )
        self._typestore = resolve_typestore(typestore)
        self._reader: AnyReader | None = None
        self._reader_pid: int | None = None
        self.slop_s = float(slop_s)
        self.depth_slop_ns = round((self.slop_s if depth_slop_s is None else float(depth_slop_s)) * 1e9)
        self.T_cam_lidar = None if T_cam_lidar is None else np.asarray(T_cam_lidar, dtype=np.float64)
        if self.T_cam_lidar is not None and self.T_cam_lidar.shape != (4, 4):
            raise ValueError(f"T_cam_lidar must be 4 x 4, instead got shape {self.T_cam_lidar.shape}")

        reader = self._open()
        self.topics = {c.topic: c.msgtype for c in reader.connections}
        listing = ", ".join(f"{t} [{ty}]" for t, ty in sorted(self.topics.items()))
        for name, topic, msgtype in (
            ("left_topic", left_topic, IMAGE), ("right_topic", right_topic, IMAGE),
            ("left_info_topic", left_info_topic, CAMERA_INFO), ("right_info_topic", right_info_topic, CAMERA_INFO),
            ("depth_topic", depth_topic, IMAGE), ("lidar_topic", lidar_topic, POINTCLOUD2),
        ):
            if topic is not None and self.topics.get(topic) != msgtype:
                found = f"it is {self.topics[topic]}" if topic in self.topics else "it is not in the bag"
                raise BagError(f"{name} {topic!r} must be a {msgtype} topic but {found}; the bag has: {listing}")
        self.left_topic = left_topic or _pick_topic(self.topics, IMAGE, "left", "image")
        self.right_topic = right_topic or _pick_topic(self.topics, IMAGE, "right", "image")
        self.left_info_topic = left_info_topic or _pick_topic(
            self.topics, CAMERA_INFO, "left", "info", near=self.left_topic
        )
        self.right_info_topic = right_info_topic or _pick_topic(
            self.topics, CAMERA_INFO, "right", "info", near=self.right_topic
        )
        self.depth_topic, self.lidar_topic = depth_topic, lidar_topic
        self._entries = self._build_index(reader, require_depth=bool(require_depth), queue_size=int(queue_size))

    # -- file handles: one reader per process so that forked DataLoader workers never share offsets --------

    def _open(self) -> AnyReader:
        if self._reader is not None and self._reader_pid == os.getpid():
            return self._reader
        reader = AnyReader([self.path], default_typestore=self._typestore)
        try:
            reader.open()
        except (AnyReaderError, ReaderError, OSError, ValueError, KeyError) as err:
            raise BagError(f"cannot read bag {self.path} (corrupt or truncated? try recover_bag): {err}") from err
        self._reader, self._reader_pid = reader, os.getpid()
        return reader

    def close(self) -> None:
        if self._reader is not None and self._reader_pid == os.getpid():
            self._reader.close()
        self._reader = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_reader"], state["_reader_pid"] = None, None
        return state

    def __enter__(self) -> StereoBagReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connections(self, reader: AnyReader, topics: Sequence[str]) -> list:
        return [c for c in reader.connections if c.topic in topics]

    def _read(self, ref: _MessageRef):
        reader = self._open()
        conns = self._connections(reader, [ref.topic])
        try:
            hits = [
                (c, raw) for c, _, raw in reader.messages(conns, start=ref.log_time, stop=ref.log_time + 1)
            ]
        except (ReaderError, AnyReaderError, OSError, ValueError) as err:
            raise BagError(f"cannot read {ref.topic} at {ref.log_time} ns from {self.path}: {err}") from err
        if len(hits) <= ref.rank:
            raise BagError(f"message of {ref.topic} at {ref.log_time} ns vanished from {self.path}")
        conn, raw = hits[ref.rank]
        return reader.deserialize(raw, conn.msgtype)

    # -- index ---------------------------------------------------------------------------------------------

    def _static_tree(self, reader: AnyReader) -> StaticTransformTree | None:
        conns = [c for c in reader.connections if c.msgtype == TF_MESSAGE and c.topic.rstrip("/").endswith("tf_static")]
        if not conns:
            return None
        tree = StaticTransformTree()
        for conn, _, raw in reader.messages(conns):
            tree.add_transforms(reader.deserialize(raw, conn.msgtype).transforms)
        return tree

    def _build_index(self, reader: AnyReader, *, require_depth: bool, queue_size: int) -> list[_Entry]:
        pairs: list[tuple] = []
        sync = ApproximateTimeSynchronizer(
            4, queue_size=queue_size, slop_s=self.slop_s, callback=lambda *items: pairs.append(items)
        )
        order = [self.left_topic, self.right_topic, self.left_info_topic, self.right_info_topic]
        sparse_topic = self.depth_topic or self.lidar_topic
        sparse: list[tuple[int, _MessageRef, str]] = []
        ranks: dict[tuple[str, int], int] = {}
        wanted = order + ([sparse_topic] if sparse_topic else [])
        try:
            for conn, log_time, raw in reader.messages(self._connections(reader, wanted)):
                rank = ranks.get((conn.topic, log_time), 0)
                ranks[(conn.topic, log_time)] = rank + 1
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = _stamp_ns(msg)
                ref = _MessageRef(conn.topic, log_time, rank)
                if conn.topic == sparse_topic:
                    sparse.append((stamp, ref, msg.header.frame_id))
                    continue
                index = order.index(conn.topic)
                if index < 2:
                    sync.add(index, stamp, (ref, int(msg.width), int(msg.height), stamp))
                else:
                    sync.add(index, stamp, msg)
        except (ReaderError, AnyReaderError, OSError, ValueError, KeyError) as err:
            raise BagError(f"cannot read bag {self.path} (corrupt or truncated? try recover_bag): {err}") from err
        sync.flush()
        self.dropped_messages = sync.dropped

        T_cam_sparse: dict[str, np.ndarray] = {}
        tree = self._static_tree(reader) if self.lidar_topic and self.T_cam_lidar is None else None
        sparse.sort(key=lambda s: s[0])
        sparse_stamps = [s[0] for s in sparse]
        cameras: dict[tuple, StereoCamera] = {}
        entries: list[_Entry] = []
        for (left_ref, lw, lh, left_stamp), (right_ref, rw, rh, _), left_info, right_info in pairs:
            key = (tuple(left_info.p), tuple(right_info.p), left_info.width, left_info.height)
            camera = cameras.get(key)
            if camera is None:
                camera = _camera_from_infos(left_info, right_info, self.left_info_topic, self.right_info_topic)
                cameras[key] = camera
            size = (int(left_info.width), int(left_info.height))
            for topic, w, h in ((self.left_topic, lw, lh), (self.right_topic, rw, rh)):
                if (w, h) != size:
                    raise BagError(
                        f"image on {topic} is {w}x{h} but camera_info says {size[0]}x{size[1]}; images must be "
                        "the rectified images the camera_info describes"
                    )
            R = np.asarray(left_info.r, dtype=np.float64).reshape(3, 3)
            rect_rotation = R if abs(np.linalg.det(R) - 1.0) < 1e-3 else np.eye(3)
            entry = _Entry(
                stamp_ns=left_stamp,
                left=left_ref, right=right_ref, camera=camera, frame_id=left_info.header.frame_id,
                size=size, rect_rotation=rect_rotation,
            )
            if sparse:
                j = bisect.bisect_left(sparse_stamps, entry.stamp_ns)
                best = min(
                    (k for k in (j - 1, j) if 0 <= k < len(sparse)),
                    key=lambda k: abs(sparse_stamps[k] - entry.stamp_ns),
                )
                if abs(sparse_stamps[best] - entry.stamp_ns) <= self.depth_slop_ns:
                    entry.depth = sparse[best][1]
                    if self.lidar_topic:
                        entry.extra["T"] = self._lidar_extrinsic(sparse[best][2], entry.frame_id, tree, T_cam_sparse)
            if require_depth and entry.depth is None:
                continue
            entries.append(entry)
        return entries

    def _lidar_extrinsic(self, lidar_frame, camera_frame, tree, cache) -> np.ndarray:
        if self.T_cam_lidar is not None:
            return self.T_cam_lidar
        if lidar_frame in cache:
            return cache[lidar_frame]
        if tree is None:
            raise BagError(
                f"bag {self.path} has no /tf_static to place LiDAR frame {lidar_frame!r} in camera frame "
                f"{camera_frame!r}; pass T_cam_lidar (4 x 4) instead"
            )
        try:
            T = tree.lookup(camera_frame, lidar_frame)
        except LookupError as err:
            raise BagError(f"/tf_static of {self.path} cannot place {lidar_frame!r} in {camera_frame!r}: {err}") from err
        cache[lidar_frame] = T
        return T

    # -- samples -------------------------------------------------------------------------------------------

    @property
    def stamps(self) -> list[int]:
        """Left header stamps (ns) of the indexed pairs."""
        return [e.stamp_ns for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def _decode_rgb(self, msg, topic: str) -> np.ndarray:
        try:
            array = decode_image(
                encoding=msg.encoding, height=msg.height, width=msg.width, step=msg.step, data=msg.data,
                is_bigendian=msg.is_bigendian,
            )
            return to_rgb8(array, msg.encoding)
        except ValueError as err:
            raise BagError(f"image on {topic} in {self.path}: {err}") from err

    def _sparse_depth(self, entry: _Entry) -> np.ndarray | None:
        if entry.depth is None:
            return None
        msg = self._read(entry.depth)
        w, h = entry.size
        if self.depth_topic:
            if msg.encoding not in DEPTH_ENCODINGS:
                raise BagError(f"depth topic {self.depth_topic} has encoding {msg.encoding!r}, not 16UC1/32FC1")
            array = decode_image(
                encoding=msg.encoding, height=msg.height, width=msg.width, step=msg.step, data=msg.data,
                is_bigendian=msg.is_bigendian,
            )
            if array.shape != (h, w):
                raise BagError(
                    f"depth image on {self.depth_topic} is {array.shape[1]}x{array.shape[0]} but the stereo "
                    f"images are {w}x{h}; the depth must be registered to the left rectified image"
                )
            return depth_image_to_metres(array, msg.encoding)
        points = read_points(
            fields=msg.fields, point_step=msg.point_step, data=msg.data, names=("x", "y", "z"),
            height=msg.height, width=msg.width, row_step=msg.row_step, is_bigendian=msg.is_bigendian,
            skip_nans=True,
        )
        # tf places the lidar in the camera (optical) frame; P projects from the rectified frame, R apart.
        T_rect_cam = np.eye(4)
        T_rect_cam[:3, :3] = entry.rect_rotation
        return project_points(points, T_rect_cam @ entry.extra["T"], entry.camera, w, h)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self._entries)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"sample index {index} out of range for {n} samples in {self.path}")
        entry = self._entries[i]
        left = self._decode_rgb(self._read(entry.left), self.left_topic)
        right = self._decode_rgb(self._read(entry.right), self.right_topic)
        return StereoSample(
            stamp_ns=entry.stamp_ns, left=left, right=right, camera=entry.camera,
            sparse_depth=self._sparse_depth(entry), frame_id=entry.frame_id,
        )

    def __iter__(self) -> Iterator[StereoSample]:
        for i in range(len(self)):
            yield self[i]


__all__ = [
    "BagError",
    "BagRecovery",
    "StereoBagReader",
    "StereoBagWriter",
    "StereoSample",
    "find_bags",
    "recover_bag",
    "resolve_typestore",
    "write_metadata",
]
