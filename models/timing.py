"""Time a callable the same way everywhere: warm up, then one perf_counter reading per call."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_calls(
    call: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 10,
    synchronize: Callable[[], object] | None = None,
) -> np.ndarray:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones, shape (repeats,).

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) waits for queued device work inside each
    timing, so an asynchronous launch is not mistaken for the work itself.
    """
    for _ in range(warmup):
        call()
    if synchronize:
        synchronize()
    seconds = np.empty(repeats)
    for index in range(repeats):
        started = time.perf_counter()
        call()
        if synchronize:
            synchronize()
        seconds[index] = time.perf_counter() - started
    return seconds
