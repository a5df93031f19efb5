"""One queue of small jobs, run one at a time: the Explorer's only way to touch its Session.

Widget events arrive on the kernel's main thread; a composition takes seconds to minutes. So the
Explorer never computes in an event handler: handlers *submit* jobs, and one worker thread runs them
in order, holding ``lock`` (an ``RLock``) while each runs. Two computations therefore never overlap,
and user code that wants to touch the Session while the Explorer is live takes the same lock.

Long work is split into short jobs (one denoising step each) that re-submit their continuation, so
the other jobs queued meanwhile (show a step, capture attention, apply a new setting) run between
two steps instead of after the whole run. A job that belongs to an outdated request checks
``is_current(generation)`` and stops: ``new_generation()`` is called whenever the user asks for
something that makes the running work pointless (moving a slider while a run is under way).

Warnings raised in a job go to ``on_warning`` (a list per job) when one is given, so that the page can show
them; errors go to ``on_error``.

``threaded=False`` runs every job inline, in the thread that submits it (tests, scripts, front ends
whose comms do not like threads); the order and the one-at-a-time guarantee are the same.

Under load (a slider dragged through 200 values while a step runs), ``submit(job, key=...)`` coalesces:
a job submitted with a key replaces the pending job with the same key (one that has not started), and goes
to the back of the queue. So only the latest request of each kind runs next, the queue never holds more
than one job per key, and memory stays flat however fast the requests come.
"""

from __future__ import annotations

import collections
import threading
import warnings
from typing import Callable

__all__ = ["Worker"]


class Worker:
    """Runs submitted jobs in order, one at a time, on a daemon thread (or inline)."""

    def __init__(
        self,
        *,
        threaded: bool = True,
        on_error: Callable[[BaseException], None] | None = None,
        on_warning: Callable[[list[warnings.WarningMessage]], None] | None = None,
        name: str = "tficon-worker",
    ):
        self.threaded = threaded
        self.lock = threading.RLock()
        self._on_error = on_error
        self._on_warning = on_warning
        self._name = name
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._keys: dict[Callable[[], None], object] = {}  # pending job -> its coalescing key
        self._cv = threading.Condition()
        self._running = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._generation = 0
        self.errors: collections.deque[BaseException] = collections.deque(maxlen=100)  # the latest errors
        self.coalesced = 0  # pending jobs replaced by a newer one with the same key

    # ------------------------------------------------------------------ generations
    def new_generation(self) -> int:
        """Start a new request generation; jobs of older generations see ``is_current`` False."""
        with self._cv:
            self._generation += 1
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation

    def is_current(self, generation: int) -> bool:
        return generation == self._generation

    # ------------------------------------------------------------------ jobs
    def submit(self, job: Callable[[], None], *, key: object = None) -> None:
        """Queue ``job``; it runs after every job queued before it, with ``lock`` held.

        With a ``key`` (any hashable), a pending job submitted with the same key is dropped: the new job
        replaces it, at the back of the queue. A job that has started is never affected.
        """
        with self._cv:
            if self._closed:
                raise RuntimeError("the worker is closed")
            if key is not None:
                for old in [j for j, k in self._keys.items() if k == key]:
                    self._jobs.remove(old)
                    del self._keys[old]
                    self.coalesced += 1
                self._keys[job] = key
            self._jobs.append(job)
            if self.threaded:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                    self._thread.start()
                self._cv.notify_all()
                return
            if self._running:  # submitted by a job that is running inline: the drain below picks it up
                return
            self._running = True
        try:
            while True:
                with self._cv:
                    if not self._jobs:
                        self._running = False
                        self._cv.notify_all()
                        return
                    job = self._jobs.popleft()
                    self._keys.pop(job, None)
                self._run(job)
        except BaseException:
            with self._cv:
                self._running = False
                self._cv.notify_all()
            raise

    @property
    def pending(self) -> int:
        """How many jobs wait (the running one not counted)."""
        with self._cv:
            return len(self._jobs)

    @property
    def busy(self) -> bool:
        """True while a job runs or waits."""
        with self._cv:
            return self._running or bool(self._jobs)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job runs or waits; False if ``timeout`` (seconds) passed first.

        Must not be called from inside a job (it would wait for itself).
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("wait() called from a worker job would wait for itself")
        with self._cv:
            return self._cv.wait_for(lambda: not self._running and not self._jobs, timeout=timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Drop queued jobs, let the running one finish and stop the thread."""
        with self._cv:
            self._closed = True
            self._jobs.clear()
            self._keys.clear()
            self._generation += 1
            self._cv.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ------------------------------------------------------------------ internals
    def _run(self, job: Callable[[], None]) -> None:
        try:
            with self.lock:
                if self._on_warning is None:
                    job()
                else:
                    self._run_catching_warnings(job)
        except Exception as error:  # reported, never kills the worker
            self.errors.append(error)
            if self._on_error is not None:
                self._on_error(error)
            else:
                raise

    def _run_catching_warnings(self, job: Callable[[], None]) -> None:
        """Run ``job`` and hand the warnings it raised to ``on_warning`` (also when it fails: the warnings
        said before the error still describe the state). A warning raised on a worker thread would otherwise go
        to the kernel's log, never to the page the user looks at. "always": a warning is shown for every job
        that raises it, not once per code location. (``catch_warnings`` swaps process-wide state: a warning the main
        thread raises while a job runs may land in that job's list, which is harmless here.)"""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                job()
            finally:
                if caught:
                    self._on_warning(list(caught))

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if self._closed and not self._jobs:
                    self._running = False
                    self._cv.notify_all()
                    return
                job = self._jobs.popleft()
                self._keys.pop(job, None)
                self._running = True
            try:
                self._run(job)
            except Exception:  # no on_error: keep the thread alive, the error is in self.errors
                pass
            finally:
                with self._cv:
                    self._running = False
                    self._cv.notify_all()
