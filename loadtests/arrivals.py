"""Open-loop arrivals: a Poisson process of scheduled send times, shared by a process's users.

The MLPerf "Server" scenario. Users take the next scheduled time from one shared stream and
measure latency from it, not from when they got round to sending: if every user is busy, the
next request is late and its lateness is counted (no coordinated omission). Arrivals that get
no answer before the run stops are handed back by `unanswered`, so they can be counted too.
"""

from __future__ import annotations

import numpy as np


class PoissonSchedule:
    """Arrival times of a Poisson process at ``rate`` per second, starting at ``start`` seconds.

    ``next()`` returns the next scheduled time on the clock ``start`` was read from (for
    example ``time.perf_counter()``). The gaps are exponential with mean ``1 / rate``. An arrival
    stays pending from ``next()`` until ``done()`` says its answer (or failure) was recorded.
    """

    def __init__(self, rate: float, *, start: float, seed: int | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"arrival rate must be positive, got {rate}")
        self.rate = rate
        self._rng = np.random.default_rng(seed)
        self._next = start + self._gap()
        self._pending: set[float] = set()  # taken by a user, nothing recorded yet

    def _gap(self) -> float:
        return float(self._rng.exponential(1.0 / self.rate))

    def next(self) -> float:
        scheduled = self._next
        self._next += self._gap()
        self._pending.add(scheduled)
        return scheduled

    def done(self, scheduled: float) -> None:
        self._pending.discard(scheduled)

    def unanswered(self, *, until: float) -> list[float]:
        """The arrivals due before ``until`` that have nothing recorded: those a user took and
        never finished (still in flight when the run stopped) and those no user was free to
        take. They leave the schedule: a second call does not return them again."""
        due = sorted(t for t in self._pending if t < until)
        self._pending.difference_update(due)
        while self._next < until:
            due.append(self._next)
            self._next += self._gap()
        return due


def latency_from_schedule_ms(scheduled: float, sent: float, service_ms: float) -> float:
    """Latency as the open-loop client sees it: the service time plus how late the send was.

    ``scheduled`` and ``sent`` are on the same clock in seconds; a send before its schedule
    (never the case with a working sleep) counts as on time.
    """
    return service_ms + max(0.0, sent - scheduled) * 1000.0
