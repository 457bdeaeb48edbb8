"""How many threads torch may use here: one rule for the torch engine, the attacks and the benches.

torch's default (one intra-op thread per core) collapses when anything else
runs on those cores: on the 2-core CI machine, the torch engine at 2 threads
beside a noise producer ran 10.7 images/s against 124 at 1 thread (issue 17),
because its OpenMP workers spin and wait on each other while one of them is
descheduled. The rule, from the CPUs this process may use (``cpus``):

- ``AUDIT_TORCH_THREADS`` set: that many (an explicit choice wins);
- ``cpus <= 2`` with noise work sharing them: 1 thread (the measured
  collapse); alone (an attack's autograd, nothing else running): every CPU;
- otherwise ``cpus - 1`` when noise work (or another busy thread) shares
  the cores, else ``cpus``; at most 16 (past that torch's CPU kernels gain
  little on these models);
- a run inside ``one_stream`` (a campaign worker's: one worker per core,
  each with batches of its own): 1 thread.

This module imports nothing of the project, so engines, attacks and benches
can all call ``pin_torch_threads`` without import cycles. The torch engine
uses ``torch_threads_during``: the count is process-wide in torch, and an
engine that pinned it for good would slow training that runs later in the
same process (a test session) on cores that are then idle.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

_HERE = threading.local()

#: Environment variable that fixes torch's intra-op thread count.
ENV = "AUDIT_TORCH_THREADS"
MAX_THREADS = 16


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def torch_threads(cpus: int | None = None, *, shared: bool = True) -> int:
    """The intra-op thread count the rule above gives for ``cpus`` (default: ``usable_cpus()``).

    ``shared``: another busy thread (the campaign's noise, a data
    loader) runs on the same cores.
    """
    explicit = os.environ.get(ENV, "").strip()
    if explicit:
        try:
            value = int(explicit)
        except ValueError:
            raise ValueError(f"{ENV}: expected a positive integer, got {explicit!r}") from None
        if value < 1:
            raise ValueError(f"{ENV}: expected a positive integer, got {explicit!r}")
        return value
    cpus = usable_cpus() if cpus is None else max(1, int(cpus))
    if cpus <= 2:
        return 1 if shared else cpus
    return max(1, min(MAX_THREADS, cpus - (1 if shared else 0)))


def pin_torch_threads(cpus: int | None = None, *, shared: bool = True) -> int:
    """Set ``torch.set_num_threads`` by ``torch_threads`` and return the count (process-wide; idempotent)."""
    n = torch_threads(cpus, shared=shared)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextmanager
def torch_threads_during(cpus: int | None = None, *, shared: bool = True) -> Iterator[int]:
    """``pin_torch_threads`` for the duration of a ``with`` block, then torch's previous count again."""
    before = torch.get_num_threads()
    try:
        yield pin_torch_threads(cpus, shared=shared)
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def one_stream() -> Iterator[None]:
    """Engine runs made in this thread meanwhile take their batch on this thread alone (an ONNX Runtime engine's
    ``streams`` do not split it): the thread is one of a campaign's workers, which already keep every core busy
    with batches of their own (``audit.campaign.run.thread_layout``)."""
    before = getattr(_HERE, "one_stream", False)
    _HERE.one_stream = True
    try:
        yield
    finally:
        _HERE.one_stream = before


def in_one_stream() -> bool:
    """Whether this thread is inside ``one_stream``."""
    return getattr(_HERE, "one_stream", False)
