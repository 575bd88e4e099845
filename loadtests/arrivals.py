"""Open-loop arrivals: a Poisson process of scheduled send times, shared by a process's users.

The MLPerf "Server" scenario. Users take the next scheduled time from one shared stream and
measure latency from it, not from when they got round to sending: if every user is busy, the
next request is late and its lateness is counted (no coordinated omission).
"""

from __future__ import annotations

import numpy as np


class PoissonSchedule:
    """Arrival times of a Poisson process at ``rate`` per second, starting at ``start`` seconds.

    ``next()`` returns the next scheduled time on the clock ``start`` was read from (for
    example ``time.perf_counter()``). The gaps are exponential with mean ``1 / rate``.
    """

    def __init__(self, rate: float, *, start: float, seed: int | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"arrival rate must be positive, got {rate}")
        self.rate = rate
        self._rng = np.random.default_rng(seed)
        self._next = start + self._gap()

    def _gap(self) -> float:
        return float(self._rng.exponential(1.0 / self.rate))

    def next(self) -> float:
        scheduled = self._next
        self._next += self._gap()
        return scheduled


def latency_from_schedule_ms(scheduled: float, sent: float, service_ms: float) -> float:
    """Latency as the open-loop client sees it: the service time plus how late the send was.

    ``scheduled`` and ``sent`` are on the same clock in seconds; a send before its schedule
    (never the case with a working sleep) counts as on time.
    """
    return service_ms + max(0.0, sent - scheduled) * 1000.0
