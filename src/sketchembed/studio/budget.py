"""The studio's work budget: how much one request may cost, and how large work is kept from starving
the sketches of everyone else.

A request has two allowances. Its **light** allowance is what real drawings need (a body under
:data:`LIGHT_BODY_BYTES`, a simplification within :data:`LIGHT_RDP_VISITS`, at most
:data:`LIGHT_MODEL_POINTS` points for the model): light requests run side by side, their forward
passes one at a time on the model's light lock. A request that exceeds any of them moves, once, to
the **heavy lane**: one request at a time, beside the light ones (so a heavy forward pass never holds
the light lock), at most :data:`HEAVY_QUEUE` more waiting; beyond that, or after
:data:`HEAVY_WAIT_S`, it is answered 503 ``busy``. The lane rests after each request as long as the
request worked (:data:`HEAVY_SHARE`), so clients sending large drawings back to back get at most half
of one core between them, whatever they send. The **hard limits** (413 ``too_large``) bound what
even a heavy request costs: :data:`MAX_BODY_BYTES`, :data:`MAX_STROKES`, :data:`MAX_POINTS` as sent,
the simplification's :data:`~sketchembed.corpus.user_drawing.MAX_RDP_VISITS`, and
:data:`MAX_MODEL_POINTS` read by the model.

Why: a 20,000-point zig-zag took 1.3 s to simplify and a 20,000-point simplified drawing 4 s of
forward pass under the one model lock; two clients sending them made eight others wait seconds.
Figures of the real data (9,513 raw drawings of ../shared/quickdraw): simplified drawings have at most
841 points, and 12 raw ones need more than 100,000 RDP visits (at most 460,000).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from sketchembed.studio.errors import RETRY_AFTER_S, BadInput

# hard limits (413)
MAX_STROKES = 256
MAX_POINTS = 20_000            # points as sent
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_MODEL_POINTS = 2_000       # points the model reads (after simplification): 2x the largest real drawing
# the light allowance (beyond it: the heavy lane)
LIGHT_BODY_BYTES = 64 * 1024
LIGHT_RDP_VISITS = 100_000
LIGHT_MODEL_POINTS = 500
# the heavy lane
HEAVY_QUEUE = 4                # heavy requests waiting behind the running one
HEAVY_WAIT_S = 10.0
HEAVY_SHARE = 0.5              # of the time the heavy lane may work (it rests for the rest)


class Lanes:
    """The light lock of the model and the heavy lane, shared by every request of one studio."""

    def __init__(self, queue: int = HEAVY_QUEUE, wait_s: float = HEAVY_WAIT_S, share: float = HEAVY_SHARE):
        self.light = threading.Lock()                              # light forward passes, one at a time
        self._heavy = threading.Lock()                             # the heavy lane: one request at a time
        self._admitted = threading.BoundedSemaphore(queue + 1)     # heavy requests running or waiting
        self.queue, self.wait_s, self.share = int(queue), float(wait_s), float(share)

    def request(self) -> Work:
        """A new request's work (a context manager: leaving it frees the heavy lane if it took it)."""
        return Work(self)

    @contextlib.contextmanager
    def model(self, n_points: int, work: Work | None = None) -> Iterator[None]:
        """Hold the model for a forward pass over ``n_points`` points: the light lock, or the heavy lane
        when they exceed :data:`LIGHT_MODEL_POINTS` or the request is heavy already."""
        if work is None:
            with self.request() as own, self.model(n_points, own):
                yield
            return
        if n_points > LIGHT_MODEL_POINTS:
            work.go_heavy(f"{n_points:,} points for the model")
        if work.heavy:  # the heavy lane is this request's alone
            yield
        else:
            with self.light:
                yield


class Work:
    """One request's work: light until a stage exceeds the light allowance, then heavy (once)."""

    def __init__(self, lanes: Lanes):
        self.lanes = lanes
        self.heavy = False
        self._since = 0.0  # when it took the heavy lane

    def __enter__(self) -> Work:
        return self

    def __exit__(self, *exc) -> None:
        if self.heavy:
            worked = time.perf_counter() - self._since
            time.sleep(worked * (1 / self.lanes.share - 1))  # the lane rests (still held), then is free
            self.heavy = False
            self.lanes._heavy.release()
            self.lanes._admitted.release()

    def go_heavy(self, why: str) -> None:
        """Move to the heavy lane (waiting for it), or refuse with 503 ``busy``."""
        if self.heavy:
            return
        lanes = self.lanes
        busy = (f"busy with other large drawings ({why}: the lane for those takes one at a time); "
                f"retry in {RETRY_AFTER_S} s")
        if not lanes._admitted.acquire(blocking=False):
            raise BadInput(busy, 503)
        if not lanes._heavy.acquire(timeout=lanes.wait_s):
            lanes._admitted.release()
            raise BadInput(busy, 503)
        self.heavy, self._since = True, time.perf_counter()
