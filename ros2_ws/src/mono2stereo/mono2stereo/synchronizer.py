"""Left/right image pairing by header stamp: ``message_filters`` where installed, ``mono2stereo_core.sync`` otherwise.

Both implementations share the semantics of the ``approximate_sync`` / ``slop`` / ``queue_size`` parameters:
exact sync pairs equal stamps only, approximate sync pairs stamps at most ``slop`` seconds apart, and each
input keeps at most ``queue_size`` unmatched messages (older ones are dropped).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from mono2stereo.conversions import stamp_to_ns

try:  # message_filters is not on PyPI; it exists on every ROS install.
    import message_filters
except ImportError:  # pragma: no cover - depends on the environment
    message_filters = None


class OutOfOrderStamp(ValueError):
    """A message on one input is older than the one before it (a rewound bag or a misbehaving driver)."""


class ImagePairSynchronizer:
    """Calls ``callback(left, right)`` for each synchronized pair of ``sensor_msgs/Image``.

    ``on_out_of_order(exc)`` is called (and the message discarded) when an input's stamp goes backwards:
    pairing across a time jump would silently mix frames.
    """

    def __init__(
        self,
        node: Node,
        *,
        left_topic: str,
        right_topic: str,
        qos: QoSProfile,
        approximate: bool,
        slop_s: float,
        queue_size: int,
        callback: Callable[[Image, Image], None],
        on_out_of_order: Callable[[OutOfOrderStamp], None],
        callback_group=None,
        use_message_filters: bool | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, instead got {queue_size}")
        if approximate and not slop_s >= 0:
            raise ValueError(f"slop must be >= 0 s, instead got {slop_s}")
        self._callback = callback
        self._on_out_of_order = on_out_of_order
        self._topics = (left_topic, right_topic)
        self._last_ns = [-1, -1]
        self._lock = threading.Lock()
        use_mf = message_filters is not None if use_message_filters is None else use_message_filters
        if use_mf and message_filters is None:
            raise ValueError("use_message_filters=True but message_filters is not installed")
        self.implementation = "message_filters" if use_mf else "mono2stereo_core.sync"
        self._core = None
        if use_mf:
            self._subscribers = [
                message_filters.Subscriber(node, Image, topic, qos_profile=qos, callback_group=callback_group)
                for topic in self._topics
            ]
            for index, sub in enumerate(self._subscribers):
                # Registered before the synchronizer so out-of-order messages are seen; they still reach the
                # synchronizer, which drops anything older than its last emitted pair itself.
                sub.registerCallback(lambda msg, i=index: self._check_order(i, msg))
            if approximate:
                self._mf_sync = message_filters.ApproximateTimeSynchronizer(
                    self._subscribers, queue_size, slop_s
                )
            else:
                self._mf_sync = message_filters.TimeSynchronizer(self._subscribers, queue_size)
            self._mf_sync.registerCallback(self._emit)
        else:
            from mono2stereo_core.sync import ApproximateTimeSynchronizer, ExactTimeSynchronizer

            if approximate:
                self._core = ApproximateTimeSynchronizer(
                    2, queue_size=queue_size, slop_s=slop_s, callback=self._emit
                )
            else:
                self._core = ExactTimeSynchronizer(2, queue_size=queue_size, callback=self._emit)
            self._subscribers = [
                node.create_subscription(
                    Image, topic, lambda msg, i=index: self._add(i, msg), qos, callback_group=callback_group
                )
                for index, topic in enumerate(self._topics)
            ]

    @property
    def dropped(self) -> int:
        """Messages discarded without a partner (``-1`` when message_filters does not say)."""
        return int(self._core.dropped) if self._core is not None else -1

    def _check_order(self, index: int, msg: Image) -> bool:
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            last = self._last_ns[index]
            if stamp < last:
                error = OutOfOrderStamp(
                    f"out-of-order stamp on {self._topics[index]}: {stamp} ns arrived after {last} ns "
                    "(bag rewound or clock jumped?); message dropped"
                )
            else:
                self._last_ns[index] = stamp
                error = None
        if error is not None:
            self._on_out_of_order(error)
            return False
        return True

    def _add(self, index: int, msg: Image) -> None:
        if self._check_order(index, msg):
            self._core.add(index, stamp_to_ns(msg.header.stamp), msg)

    def _emit(self, left: Image, right: Image) -> None:
        # Both implementations call back with one message per input, in input order.
        self._callback(left, right)
