"""Moving host batches onto the accelerators ahead of time, without losing the data position.

Prefetching reads batches before the training loop asks for them, so the
pipeline's own ``get_state()`` runs ahead of what training has consumed.
``DevicePrefetcher`` therefore records the pipeline state right after each
batch it pulls and hands back, from ``get_state()``, the state stored with the
last batch the caller actually received. Saving that state and restoring it
(into a fresh pipeline or via ``set_state``, which drops the queued batches)
continues with the first batch training has not seen.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Iterator
from typing import Any


class DevicePrefetcher(Iterator):
    """Yields global ``jax.Array`` batches, keeping ``size`` of them in flight."""

    def __init__(self, iterator, sharding, size: int = 2):
        if size < 1:
            raise ValueError(f"prefetch size must be at least 1, got {size}")
        self._iterator = iterator
        self._sharding = sharding
        self._size = size
        self._queue: collections.deque = collections.deque()
        self._exhausted = False
        self._state = self._pipeline_state()

    def _pipeline_state(self) -> Any:
        get_state = getattr(self._iterator, "get_state", None)
        return copy.deepcopy(get_state()) if get_state else None

    def _to_device(self, batch):
        import jax

        def put(sharding, local):
            return jax.make_array_from_process_local_data(sharding, local)

        if isinstance(self._sharding, jax.sharding.Sharding):
            return jax.tree.map(lambda local: put(self._sharding, local), batch)
        return jax.tree.map(put, self._sharding, batch)  # one sharding per leaf

    def _fill(self) -> None:
        while len(self._queue) < self._size and not self._exhausted:
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._exhausted = True
                return
            # Transfers are asynchronous: queued batches copy while the step runs.
            self._queue.append((self._to_device(batch), self._pipeline_state()))

    def __next__(self):
        self._fill()
        if not self._queue:
            raise StopIteration
        batch, self._state = self._queue.popleft()
        self._fill()
        return batch

    def get_state(self) -> Any:
        """The pipeline state just after the last batch returned by ``next``."""
        return copy.deepcopy(self._state)

    def set_state(self, state: Any) -> None:
        """Drops queued batches and moves the pipeline to ``state``."""
        self._queue.clear()
        self._exhausted = False
        self._iterator.set_state(state)
        self._state = copy.deepcopy(state)

    def close(self) -> None:
        """Drops queued batches and closes the pipeline (if it can be closed)."""
        self._queue.clear()
        close = getattr(self._iterator, "close", None)
        if close:
            close()


def prefetch_to_device(iterator, sharding, size: int = 2) -> DevicePrefetcher:
    """Wraps a host-local numpy batch iterator into one of global arrays laid out by ``sharding``.

    ``sharding`` is one ``jax.sharding.Sharding`` for every leaf (typically
    ``NamedSharding(mesh, P('data'))``) or a pytree of them matching the batch.
    Each host passes its own share; the global batch is their concatenation.
    """
    return DevicePrefetcher(iterator, sharding, size)
