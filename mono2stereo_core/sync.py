"""Time synchronizers with ``message_filters`` semantics, in pure Python (no rclpy).

``message_filters`` is not on PyPI and the bag reader needs the same pairing offline, so the policies are
re-implemented here from their documented behaviour:

- :class:`ExactTimeSynchronizer`: emits a set when every input has a message with the same stamp.
- :class:`ApproximateTimeSynchronizer`: the ``message_filters`` C++ ApproximateTime policy (ROS wiki
  "message_filters/ApproximateTime"): it waits for a message on every input, fixes a *pivot* (the input
  whose oldest queued message is newest), then searches the queued messages for the set with the smallest
  time span that contains the pivot's message, emitting it as soon as no future message can produce a
  smaller one. Sets never share a message, are emitted in time order, and messages older than an emitted
  set are dropped. ``slop_s`` is the C++ ``max_interval_duration``: no set spans more than it.
  Its output depends only on the stamps, not on the arrival order across inputs.

Both count every message that will never be part of a set in ``dropped`` (per input in
``dropped_per_input``), are thread-safe, and call ``callback(*items)`` with items in input order; callbacks
run outside the state lock but in emission order, so a callback may call ``add`` again. ``flush()`` marks
the end of the streams (offline pairing of a bag): sets still waiting for proof of optimality are emitted.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

_NO_PIVOT = -1


class _Synchronizer:
    """Shared bookkeeping: argument checks, drop counters, ordered callback delivery."""

    def __init__(self, num_inputs: int, *, queue_size: int, callback: Callable[..., object] | None) -> None:
        if int(num_inputs) < 2:
            raise ValueError(f"a synchronizer needs at least 2 inputs, instead got {num_inputs}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, instead got {queue_size}")
        self.num_inputs = int(num_inputs)
        self.queue_size = int(queue_size)
        self._callbacks: list[Callable[..., object]] = [callback] if callback is not None else []
        self.dropped_per_input = [0] * self.num_inputs
        self.emitted = 0
        self._lock = threading.Lock()
        self._deliver_lock = threading.RLock()
        self._outbox: deque[tuple] = deque()

    @property
    def dropped(self) -> int:
        return sum(self.dropped_per_input)

    def register_callback(self, callback: Callable[..., object]) -> None:
        self._callbacks.append(callback)

    def _check_input(self, index: int, stamp_ns: int) -> tuple[int, int]:
        index = int(index)
        if not 0 <= index < self.num_inputs:
            raise IndexError(f"input index must be in [0, {self.num_inputs}), instead got {index}")
        return index, int(stamp_ns)

    def add(self, index: int, stamp_ns: int, item: object) -> None:
        """Feeds ``item`` stamped ``stamp_ns`` (header stamp in integer nanoseconds) on input ``index``."""
        index, stamp_ns = self._check_input(index, stamp_ns)
        self._run_and_deliver(self._add_locked, index, stamp_ns, item)

    def flush(self) -> None:
        """Declares the end of the streams: emits every set still waiting for proof of optimality.

        For offline use (bags): once no message can come any more, the best set found so far is final.
        """
        self._run_and_deliver(self._flush_locked)

    def _flush_locked(self) -> list[tuple]:
        return []

    def _run_and_deliver(self, step, *args) -> None:
        with self._lock:
            ready = step(*args)
            self.emitted += len(ready)
            self._outbox.extend(ready)
        if not ready:
            return
        # Sets enter the outbox in emission order under the state lock; one thread at a time empties it, so
        # callbacks see that order. The state lock is never held while waiting here or calling back, so a
        # callback may add() again (the delivery lock is re-entrant) while other threads keep producing.
        with self._deliver_lock:
            while True:
                with self._lock:
                    if not self._outbox:
                        return
                    items = self._outbox.popleft()
                for cb in self._callbacks:
                    cb(*items)

    def _add_locked(self, index: int, stamp_ns: int, item: object) -> list[tuple]:
        raise NotImplementedError


class ExactTimeSynchronizer(_Synchronizer):
    """Emits sets of messages whose stamps are identical on every input (``message_filters`` ExactTime).

    At most ``queue_size`` distinct stamps wait for completion; when a set is emitted, incomplete sets with
    older stamps are dropped, as are later arrivals at or before the last emitted stamp.
    """

    def __init__(self, num_inputs: int, *, queue_size: int, callback: Callable[..., object] | None = None) -> None:
        super().__init__(num_inputs, queue_size=queue_size, callback=callback)
        self._pending: dict[int, list] = {}
        self._last_emitted: int | None = None

    def _drop_stamp(self, stamp: int) -> None:
        for i, slot in enumerate(self._pending.pop(stamp)):
            if slot is not None:
                self.dropped_per_input[i] += 1

    def _add_locked(self, index, stamp_ns, item):
        if self._last_emitted is not None and stamp_ns <= self._last_emitted:
            self.dropped_per_input[index] += 1
            return []
        slots = self._pending.setdefault(stamp_ns, [None] * self.num_inputs)
        if slots[index] is not None:
            # A second message with the same stamp on one input replaces the first, as in message_filters.
            self.dropped_per_input[index] += 1
        slots[index] = (item,)
        if all(s is not None for s in slots):
            del self._pending[stamp_ns]
            for older in [s for s in self._pending if s < stamp_ns]:
                self._drop_stamp(older)
            self._last_emitted = stamp_ns
            return [tuple(s[0] for s in slots)]
        while len(self._pending) > self.queue_size:
            self._drop_stamp(min(self._pending))
        return []


class ApproximateTimeSynchronizer(_Synchronizer):
    """The ``message_filters`` ApproximateTime policy (see the module docstring).

    Args:
        num_inputs: number of inputs (>= 2).
        queue_size: per-input bound on messages held (queued plus those examined by the ongoing search); on
            overflow the oldest message of that input is dropped and the search restarts.
        slop_s: maximum span (seconds) of an emitted set (C++ ``max_interval_duration``).
        callback: called with one item per input.
        allow_headerless: accepted for API parity with ``message_filters``; stamps are always explicit here.
        inter_message_lower_bounds_s: optional per-input lower bound of the period between messages. With it
            the policy can prove a set optimal before the next message arrives (lower latency); 0 (default)
            makes it wait for a message beyond the pivot on each input.
    """

    def __init__(
        self,
        num_inputs: int,
        *,
        queue_size: int,
        slop_s: float,
        callback: Callable[..., object] | None = None,
        allow_headerless: bool = False,
        inter_message_lower_bounds_s: list[float] | None = None,
    ) -> None:
        super().__init__(num_inputs, queue_size=queue_size, callback=callback)
        if not slop_s >= 0:
            raise ValueError(f"slop_s must be >= 0 seconds, instead got {slop_s}")
        self.slop_ns = round(float(slop_s) * 1e9)
        self.allow_headerless = bool(allow_headerless)
        bounds = inter_message_lower_bounds_s or [0.0] * self.num_inputs
        if len(bounds) != self.num_inputs or any(not b >= 0 for b in bounds):
            raise ValueError(
                f"inter_message_lower_bounds_s must be {self.num_inputs} values >= 0, instead got {bounds}"
            )
        self._lower_bound_ns = [round(b * 1e9) for b in bounds]
        n = self.num_inputs
        self._deques: list[deque[tuple[int, object]]] = [deque() for _ in range(n)]
        self._past: list[list[tuple[int, object]]] = [[] for _ in range(n)]
        self._has_dropped = [False] * n
        self._last_stamp: list[int | None] = [None] * n
        self._num_non_empty = 0
        self._candidate: list[tuple[int, object]] | None = None
        self._candidate_start = 0
        self._candidate_end = 0
        self._pivot = _NO_PIVOT
        self._pivot_time = 0

    # -- queue primitives (names follow the C++ implementation) ------------------------------------------

    def _deque_delete_front(self, i: int) -> None:
        self._deques[i].popleft()
        self.dropped_per_input[i] += 1
        if not self._deques[i]:
            self._num_non_empty -= 1

    def _deque_move_front_to_past(self, i: int) -> None:
        self._past[i].append(self._deques[i].popleft())
        if not self._deques[i]:
            self._num_non_empty -= 1

    def _make_candidate(self) -> None:
        self._candidate = [q[0] for q in self._deques]
        # Messages examined before a better candidate can never be part of a set any more.
        for i, past in enumerate(self._past):
            self.dropped_per_input[i] += len(past)
            past.clear()

    def _recover(self, counts: list[int] | None = None) -> None:
        """Moves examined messages back to the queues (all of them, or ``counts[i]`` per input)."""
        for i in range(self.num_inputs):
            past, q = self._past[i], self._deques[i]
            k = len(past) if counts is None else min(counts[i], len(past))
            for _ in range(k):
                q.appendleft(past.pop())
        self._num_non_empty = sum(1 for q in self._deques if q)

    def _publish_candidate(self) -> tuple:
        assert self._candidate is not None
        items = tuple(item for _, item in self._candidate)
        self._candidate = None
        self._pivot = _NO_PIVOT
        # Recover the examined messages and remove the ones emitted (the front of every queue).
        for i in range(self.num_inputs):
            past, q = self._past[i], self._deques[i]
            while past:
                q.appendleft(past.pop())
            q.popleft()
        self._num_non_empty = sum(1 for q in self._deques if q)
        return items

    def _candidate_bounds(self) -> tuple[int, int, int, int]:
        """(start_index, start_time, end_index, end_time) over the queue fronts (lowest index on ties)."""
        stamps = [q[0][0] for q in self._deques]
        start_time, end_time = min(stamps), max(stamps)
        return stamps.index(start_time), start_time, stamps.index(end_time), end_time

    def _virtual_time(self, i: int) -> int:
        q = self._deques[i]
        if q:
            return q[0][0]
        # The queue can only be empty because its front moved to the past during this search.
        return max(self._past[i][-1][0] + self._lower_bound_ns[i], self._pivot_time)

    def _virtual_bounds(self) -> tuple[int, int, int, int]:
        stamps = [self._virtual_time(i) for i in range(self.num_inputs)]
        start_time, end_time = min(stamps), max(stamps)
        return stamps.index(start_time), start_time, stamps.index(end_time), end_time

    # -- the policy ---------------------------------------------------------------------------------------

    def _add_locked(self, index, stamp_ns, item):
        last = self._last_stamp[index]
        if last is not None and stamp_ns <= last:
            # The search assumes per-input stamps increase; a late message could only produce a set older than
            # one already emitted or examined, so it is dropped (and counted) instead of corrupting the queues.
            self.dropped_per_input[index] += 1
            return []
        self._last_stamp[index] = stamp_ns
        out: list[tuple] = []
        q = self._deques[index]
        q.append((stamp_ns, item))
        if len(q) == 1:
            self._num_non_empty += 1
            if self._num_non_empty == self.num_inputs:
                self._process(out)
        if len(self._deques[index]) + len(self._past[index]) > self.queue_size:
            # Cancel the ongoing search, drop the oldest message of the offending input, start over.
            self._recover()
            self._deque_delete_front(index)
            self._has_dropped[index] = True
            if self._pivot != _NO_PIVOT:
                self._candidate = None
                self._pivot = _NO_PIVOT
                self._process(out)
        return out

    def _flush_locked(self) -> list[tuple]:
        out: list[tuple] = []
        while self._pivot != _NO_PIVOT:
            out.append(self._publish_candidate())
            self._process(out)
        return out

    def _is_not_better(self, end_time: int, reference_start: int) -> bool:
        return end_time - self._candidate_end >= reference_start - self._candidate_start

    def _process(self, out: list[tuple]) -> None:
        n = self.num_inputs
        while self._num_non_empty == n:
            start_index, start_time, end_index, end_time = self._candidate_bounds()
            for i in range(n):
                if i != end_index:
                    self._has_dropped[i] = False
            if self._pivot == _NO_PIVOT:
                if end_time - start_time > self.slop_ns:
                    self._deque_delete_front(start_index)
                    continue
                if self._has_dropped[end_index]:
                    # The input that ends the interval lost messages to overflow: the set might not be the
                    # best one, so move on as message_filters does.
                    self._deque_delete_front(start_index)
                    continue
                self._make_candidate()
                self._candidate_start, self._candidate_end = start_time, end_time
                self._pivot, self._pivot_time = end_index, end_time
                self._deque_move_front_to_past(start_index)
            else:
                if self._is_not_better(end_time, start_time):
                    self._deque_move_front_to_past(start_index)
                else:
                    self._make_candidate()
                    self._candidate_start, self._candidate_end = start_time, end_time
                    self._deque_move_front_to_past(start_index)
            if start_index == self._pivot:
                # Every set containing the pivot message has been examined.
                out.append(self._publish_candidate())
            elif self._is_not_better(end_time, self._pivot_time):
                # Any later set contains [pivot_time, end_time], already longer than the candidate.
                out.append(self._publish_candidate())
            elif self._num_non_empty < n:
                self._virtual_search(out)

    def _virtual_search(self, out: list[tuple]) -> None:
        """Tries to prove the candidate optimal with optimistic times for the inputs that ran dry."""
        moves = [0] * self.num_inputs
        while True:
            start_index, start_time, _, end_time = self._virtual_bounds()
            if self._is_not_better(end_time, self._pivot_time):
                out.append(self._publish_candidate())
                return
            if not self._is_not_better(end_time, start_time):
                # An optimistic future set could beat the candidate: wait for more messages.
                self._recover(moves)
                return
            self._deque_move_front_to_past(start_index)
            moves[start_index] += 1

    @property
    def pending(self) -> int:
        """Messages held (queued or under examination), not yet emitted or dropped."""
        with self._lock:
            return sum(len(q) for q in self._deques) + sum(len(p) for p in self._past)
