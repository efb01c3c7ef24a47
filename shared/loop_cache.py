"""One object per event loop: async clients are bound to the loop that made them.

The Functions worker runs one loop per process, so this is one client per process there; tests and tools
that start loops of their own get clients of their own.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LoopCache(Generic[T]):
    def __init__(self) -> None:
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get(self, factory: Callable[[], T]) -> T:
        """The running loop's object, made by `factory` on first use."""
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            item = self._items[loop] = factory()
        return item

    def pop(self) -> T | None:
        """Forget the running loop's object and hand it over (to be closed)."""
        return self._items.pop(asyncio.get_running_loop(), None)
