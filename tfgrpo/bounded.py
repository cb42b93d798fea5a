"""Module-level caches with a bound. A long-lived process (the LangGraph server, a notebook) keeps
whatever a module-level cache holds, and some gain an entry per run, per model or per server thread: each
is a :class:`BoundedDict`, which forgets its least recently used entry past ``maxsize``. (Registries of
what the user handed over by name, such as model objects and agents, are not caches and are not bounded.)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class BoundedDict(OrderedDict[K, V]):
    """A dict that keeps at most ``maxsize`` entries, evicting the least recently used (thread-safe)."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        super().__init__()
        self.maxsize = maxsize
        self._lock = threading.RLock()

    def __getitem__(self, key: K) -> V:
        with self._lock:
            value = super().__getitem__(key)
            self.move_to_end(key)
            return value

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            super().__setitem__(key, value)
            self.move_to_end(key)
            while len(self) > self.maxsize:
                self.popitem(last=False)

    @overload
    def get(self, key: K, default: None = None) -> V | None: ...
    @overload
    def get(self, key: K, default: V | D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        with self._lock:
            if key not in self:
                return default
            return self[key]  # a hit counts as a use

    def setdefault(self, key: K, default: V) -> V:
        with self._lock:
            if key not in self:
                self[key] = default
            return self[key]
