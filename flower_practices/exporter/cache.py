"""One ``/metrics`` rendering per format per interval, shared by every concurrent scraper.

Rendering a large exposition is CPU work measured in tens of milliseconds (a 2 MB page:
~100 ms). Done on the event loop it stalls ``/healthz`` and every other connection; done once
per request it multiplies by the number of scrapers. :class:`RenderCache` runs the render in
its own worker thread, keeps the bytes for ``max_age`` seconds, and hands requests that arrive
while a render is in flight the same future (single flight): 1000 scrapers cost one render.
A failed render is not cached; every waiter of that flight gets the exception.

The cache may be read from several event loops (the exporter's main loop and its
``/healthz`` lane, :mod:`.lanes`): a flight is a :class:`concurrent.futures.Future`, which
each waiter awaits on its own loop, and starting one is guarded by a lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor


class RenderCache:
    """Cache of ``render(key) -> bytes`` results, rendered off the event loop."""

    def __init__(self, render: Callable[[Hashable], bytes], max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._render = render
        self.max_age = max_age
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, bytes]] = {}
        self._inflight: dict[Hashable, Future[bytes]] = {}
        self._lock = threading.RLock()  # a render done before add_done_callback runs it here
        # one thread: renders of different formats queue rather than compete for the GIL
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="flower-practices-render")
        #: renders actually run (the rest of the requests were served from cache/flight)
        self.renders = 0

    async def get(self, key: Hashable) -> bytes:
        """The rendering for ``key``: cached if younger than ``max_age``, else one shared."""
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] < self.max_age:
            return entry[1]
        with self._lock:
            entry = self._entries.get(key)  # finished meanwhile (another loop's flight)
            if entry is not None and self._clock() - entry[0] < self.max_age:
                return entry[1]
            flight = self._inflight.get(key)
            if flight is None:
                flight = self._start(key)
        # shield: one scraper hanging up must not cancel the render the others wait on
        return await asyncio.shield(asyncio.wrap_future(flight))

    def _start(self, key: Hashable) -> Future[bytes]:
        """Submit the render of ``key`` (called under ``_lock``)."""
        started = self._clock()
        self.renders += 1
        loop = asyncio.get_running_loop()
        flight = self._executor.submit(self._render, key)
        self._inflight[key] = flight

        def forget() -> None:
            with self._lock:
                if self._inflight.get(key) is flight:
                    del self._inflight[key]

        def done(fut: Future[bytes]) -> None:  # in the render thread, before any waiter
            if not fut.cancelled() and fut.exception() is None:
                with self._lock:
                    self._entries[key] = (started, fut.result())
                    self._inflight.pop(key, None)
                return
            with self._lock:
                self._entries.pop(key, None)
            # a failure is shared by the requests that arrived meanwhile: forgotten once
            # the loop that started it has run what was ready (not cached either way)
            try:
                loop.call_soon_threadsafe(forget)
            except RuntimeError:  # that loop is closed
                forget()

        flight.add_done_callback(done)
        return flight

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
