"""Rolling rate / latency statistics and ``/diagnostics`` messages for the mono2stereo nodes.

diagnostic_updater is not on PyPI (and not needed for one status per node), so the nodes publish
``diagnostic_msgs/DiagnosticArray`` themselves at 1 Hz.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR


class RateWindow:
    """Event rate over the last ``window_s`` seconds (monotonic clock), safe to feed from several threads."""

    def __init__(self, *, window_s: float = 5.0) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, instead got {window_s}")
        self._window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate_hz(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and self._times[0] < now - self._window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0


class LatencyWindow:
    """The last ``size`` samples of a duration in seconds; reports median / p95 / max in milliseconds."""

    def __init__(self, *, size: int = 200) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, instead got {size}")
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)

    def summary_ms(self) -> dict[str, float]:
        with self._lock:
            samples = np.asarray(self._samples, dtype=np.float64)
        if samples.size == 0:
            return {"median": float("nan"), "p95": float("nan"), "max": float("nan")}
        median, p95 = np.percentile(samples, [50, 95]) * 1e3
        return {"median": float(median), "p95": float(p95), "max": float(samples.max() * 1e3)}


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def diagnostic_array(
    *, stamp, name: str, hardware_id: str, level: int, message: str, values: Mapping[str, object]
) -> DiagnosticArray:
    """One-status ``DiagnosticArray``; ``level`` is ``OK``/``WARN``/``ERROR``, values are stringified."""
    if level not in (OK, WARN, ERROR):
        raise ValueError(f"diagnostic level must be OK, WARN or ERROR, instead got {level!r}")
    status = DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=key, value=_format(value)) for key, value in values.items()],
    )
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array


def level_of(level) -> int:
    """``DiagnosticStatus.level`` is a byte (``bytes`` of length 1 in rclpy): normalise it to an int."""
    if isinstance(level, (bytes, bytearray)):
        return level[0]
    return int(level)
