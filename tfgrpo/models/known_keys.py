"""Which keys of a store namespace can exist, known without asking the store.

Every map branch of a run first asks the store for its memoized result (and LangChain asks the result
cache before every call); on a fresh run the answer is always "not there", and each question is an
SQLite query behind the store's one lock, which every branch of a fan-out waits for. A namespace that is
empty the first time this process looks at it, and is written only through :meth:`KnownKeys.adding`,
can only hold the keys this process added since: the others are absent without a query. A namespace
that already has items (a resumed run) stays "unknown", and every question goes to the store, as before.
One writer per run (the run lock) is what makes "only this process writes it" true.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from langgraph.store.base import BaseStore

Namespace = tuple[str, ...]


class KnownKeys:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(store) -> (weak reference to the store, namespace -> keys added, or None when unknown)
        self._stores: dict[int, tuple[weakref.ref[Any], dict[Namespace, set[str] | None]]] = {}

    def _namespaces(self, store: BaseStore) -> dict[Namespace, set[str] | None]:
        entry = self._stores.get(id(store))
        if entry is None or entry[0]() is not store:  # (a new store at a reused address starts afresh)
            entry = self._stores[id(store)] = (weakref.ref(store), {})
        return entry[1]

    def may_exist(self, store: BaseStore, namespace: Namespace, key: str) -> bool:
        """False only when ``key`` is certainly absent from ``namespace``."""
        with self._lock:
            namespaces = self._namespaces(store)
            if namespace in namespaces:
                keys = namespaces[namespace]
                return keys is None or key in keys
        empty = not store.search(namespace, limit=1)  # the first look at this namespace
        with self._lock:
            keys = self._namespaces(store).setdefault(namespace, set() if empty else None)
            return keys is None or key in keys

    def adding(self, store: BaseStore, namespace: Namespace, key: str) -> None:
        """Call before putting ``key`` (a get that runs meanwhile then asks the store)."""
        with self._lock:
            namespaces = self._namespaces(store)
            keys = namespaces.get(namespace)
            if keys is not None:
                keys.add(key)
            else:  # not looked at yet: whatever a look finds later, this namespace stays unknown
                namespaces[namespace] = None


known_keys = KnownKeys()
