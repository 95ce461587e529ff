"""A small bounded memo for what is costly to build and reused within a process (traced models, compiled steps)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


def remember(cache: dict, key: Hashable, make: Callable[[], T], limit: int) -> T:
    """``cache[key]``, made by ``make()`` on a miss; beyond ``limit`` entries the oldest is dropped, so a process
    that cycles through many configs (a sweep, a long test session) does not keep every program alive."""
    if key not in cache:
        value = make()
        if len(cache) >= limit:
            cache.pop(next(iter(cache)))
        cache[key] = value
    return cache[key]
