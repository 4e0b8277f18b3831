"""QoS profiles built from the ``qos_reliability`` / ``qos_depth`` parameters shared by every node."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY_CHOICES = ("reliable", "best_effort")


def subscription_qos(*, reliability: str, depth: int) -> QoSProfile:
    """Keep-last profile for camera inputs.

    ``best_effort`` matches every publisher (stereo_image_proc uses SensorDataQoS) but loses frames between
    processes under load; ``reliable`` is loss-free on one host but does not match best-effort publishers.
    """
    if reliability not in RELIABILITY_CHOICES:
        raise ValueError(f"qos_reliability must be one of {RELIABILITY_CHOICES}, instead got {reliability!r}")
    if depth < 1:
        raise ValueError(f"qos_depth must be >= 1, instead got {depth}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


def publisher_qos(*, depth: int) -> QoSProfile:
    """Outputs are always published reliable: a reliable publisher serves reliable *and* best-effort readers."""
    if depth < 1:
        raise ValueError(f"qos_depth must be >= 1, instead got {depth}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def latched_qos() -> QoSProfile:
    """``/tf_static`` style: reliable + transient local, so late joiners still receive the message."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
