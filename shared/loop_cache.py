"""Clients per event loop: async clients are bound to the loop that made them.

The Functions worker runs one loop per process, so this is one client per process there; tests and tools
that start loops of their own get clients of their own. Every cache registers here, so that `close_all`
closes whatever the running loop made, without anyone reaching into another module's globals.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_caches: list[LoopCache[Any]] = []


class LoopCache(Generic[T]):
    """One object per event loop and key (the arguments it was made from: a different connection string
    or settings get a client of their own, never a cached one made for others)."""

    def __init__(self) -> None:
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, T]] = (
            weakref.WeakKeyDictionary()
        )
        _caches.append(self)

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        """The running loop's object for `key`, made by `factory` on first use."""
        items = self._items.setdefault(asyncio.get_running_loop(), {})
        item = items.get(key)
        if item is None:
            item = items[key] = factory()
        return item

    def pop_all(self) -> list[T]:
        """Forget the running loop's objects and hand them over (to be closed)."""
        return list(self._items.pop(asyncio.get_running_loop(), {}).values())


async def close_all() -> None:
    """Close every cached client of the running loop (a host stopping cleanly, the end of a test); cached
    objects without a `close` are just forgotten."""
    for cache in _caches:
        for item in cache.pop_all():
            close = getattr(item, "close", None)
            if close is not None:
                await close()
