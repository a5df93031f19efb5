"""CPU threading defaults that behave on small, shared machines.

Two things make torch slow on a busy 2-core machine, and both are settled here:

- **Spinning OpenMP workers.** By default libgomp's idle workers busy-wait for new work. When another
  process holds a core, a spinning worker steals the time slice the worker doing real work needs: a
  TF-ICON composition on a busy 2-core machine took 232 s with the default threading against 51.6 s
  with one thread. ``OMP_WAIT_POLICY=PASSIVE`` makes idle workers sleep. OpenMP reads the variable
  once, when torch's libraries are loaded, so it must be set before the first ``import torch``;
  ``prepare_environment`` does that (and only when the user has not chosen a policy).
- **More threads than free cores.** torch starts one thread per core whether or not the cores are
  busy. ``free_cores`` counts the cores this process may use (its CPU affinity) less the recent load
  of the machine, and ``apply_threads`` caps torch's intra-op threads to that number.

Explicit choices always win: ``--threads N`` / ``apply_threads(N)``, then ``TFICON_THREADS``, then
``OMP_NUM_THREADS`` (torch already honours it: tficon leaves it alone), then the free-core cap.

``python benchmarks/bench_threads.py`` measures the default against one thread side by side.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["ThreadSettings", "apply_threads", "free_cores", "prepare_environment", "usable_cores"]

#: Environment variable for the thread count, for entry points without a ``--threads`` option.
THREADS_ENV = "TFICON_THREADS"


@dataclass(frozen=True)
class ThreadSettings:
    """What ``apply_threads`` decided, for logs and benchmark reports."""

    threads: int  # torch's intra-op threads after the call
    source: str  # "argument", "TFICON_THREADS", "OMP_NUM_THREADS", "free cores" or "torch default"
    wait_policy: str | None  # OMP_WAIT_POLICY as OpenMP saw it (None: unset, OpenMP's default)

    def describe(self) -> str:
        policy = self.wait_policy or "OpenMP default"
        return f"{self.threads} torch thread(s) ({self.source}), OMP_WAIT_POLICY={policy}"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def free_cores(load: float | None = None) -> int:
    """Usable cores not already busy: ``usable_cores()`` less the 1-minute load average, at least 1.

    Args:
        load: the machine's load to subtract; default ``os.getloadavg()[0]`` (0 where the OS has none).
            Call this before starting heavy work: the process's own threads count as load too.
    """
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # Windows
            load = 0.0
    if not math.isfinite(load) or load < 0:
        load = 0.0
    usable = usable_cores()
    # round, not floor: a load of 1.3 on 2 cores leaves one core mostly free
    return max(1, min(usable, round(usable - load)))


def prepare_environment() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; call before ``import torch``.

    Returns:
        True if the policy was set now and will take effect. False if the user set one (theirs stays),
        or torch is already imported (OpenMP has read its settings; changing them now would only
        mislead a later reader of the environment).
    """
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def apply_threads(threads: int | None = None) -> ThreadSettings:
    """Set torch's intra-op thread count: ``threads`` if given, else the default described above.

    Args:
        threads: a positive int, or None for the default.

    Raises:
        ValueError: ``threads`` (or ``TFICON_THREADS``) is not a positive integer.
    """
    chosen, source = _explicit_threads(threads)
    import torch

    if chosen is None and "OMP_NUM_THREADS" in os.environ:
        source = "OMP_NUM_THREADS"  # torch has read it at start-up
    elif chosen is None:
        current = torch.get_num_threads()
        chosen = min(current, free_cores())
        source = "free cores" if chosen < current else "torch default"
    if chosen is not None and chosen != torch.get_num_threads():
        torch.set_num_threads(chosen)
    return ThreadSettings(torch.get_num_threads(), source, os.environ.get("OMP_WAIT_POLICY"))


def _explicit_threads(threads) -> tuple[int | None, str]:
    if threads is not None:
        return _positive_int(threads, "threads"), "argument"
    text = os.environ.get(THREADS_ENV, "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = text
        return _positive_int(value, THREADS_ENV), THREADS_ENV
    return None, ""


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (number of CPU threads), got {value!r}")
    return value


@contextmanager
def torch_threads(threads: int | None):
    """torch's CPU thread count set to ``threads`` for the block and restored after it (None: left as it is)."""
    import torch

    if threads is None or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
