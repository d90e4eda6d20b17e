"""Background batch prefetching that keeps checkpoints exact.

The shard loader decodes a batch inside ``next()``; called inline, that time adds to every step.
``Prefetcher`` pulls batches on a background thread (DALI and PyTorch release the GIL while they
work), so decoding batch k+1 overlaps the optimizer step on batch k. Because the loader's own
position then runs ahead of training, each batch travels with the loader's ``state_dict()`` taken
right after it was produced: a checkpoint stores the state of the last batch *consumed*, and a
resumed run continues with exactly the next one.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

_DONE = object()


class Prefetcher:
    """Endless (batch, loader_state) pairs; a new pass over the loader starts when one ends."""

    def __init__(self, loader: Any, depth: int = 1) -> None:
        self.loader = loader
        self.depth = depth
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._iterator = None
        # loader state after the last batch handed out (initially: where the loader stands now)
        self.consumed_state: Any = loader.state_dict()

    def _next_from_loader(self) -> tuple[dict[str, Any], Any]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
            batch = next(self._iterator)
        return batch, self.loader.state_dict()

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._next_from_loader()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # surfaced in the training thread by next()
            self._queue.put(exc)

    def next(self) -> dict[str, Any]:
        if self.depth == 0:  # synchronous: the simplest path, for debugging
            batch, self.consumed_state = self._next_from_loader()
            return batch
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="batch-prefetch", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self.consumed_state = item
        return batch

    def state_dict(self) -> Any:
        """The loader position right after the last consumed batch (what a checkpoint must store)."""
        return self.consumed_state

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:  # unblock a producer waiting on a full queue
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.1)
            self._thread = None
