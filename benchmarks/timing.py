"""How every benchmark script times: ``torch.utils.benchmark``, so that there is one clock and one repeat loop.

* Repeated calls of one function (a forward, a training step, a render): :func:`seconds_per_call`, through
  :class:`torch.utils.benchmark.Timer`, which warms up, synchronises the accelerator around the timed block and
  runs the calls in a compiled ``timeit`` loop.
* One call whose single wall time is the figure (a first call including its warm-up costs, one run of a whole
  workflow, one call inside it): :func:`timed_call`, on :func:`torch.utils.benchmark.timer`, the clock ``Timer``
  itself uses (``time.perf_counter`` after an accelerator synchronisation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.benchmark import Timer, timer


def seconds_per_call(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds per call of ``fn()``: ``Timer.timeit(repeats)``, i.e. two untimed warm-up calls, then ``repeats``
    back-to-back calls timed as one block (garbage collection off, as in ``timeit``); the mean per call.

    Runs at the thread count torch uses now: ``Timer`` would otherwise time single-threaded (its default), which is
    not the configuration the records' ``machine`` field reports.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    measurement = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).timeit(repeats)
    return measurement.mean


def timed_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), wall seconds of that one call)``, the accelerator's queued work included."""
    start = timer()
    out = fn(*args, **kwargs)
    return out, timer() - start
