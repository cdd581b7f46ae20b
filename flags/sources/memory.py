"""An in-memory source for tests and embedding: push documents by hand."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flags.store import FlagStore


class MemoryFlagSource:
    def __init__(self, store: FlagStore, documents: Mapping[str, Mapping[str, Any]] = {}) -> None:
        self._store = store
        self._documents = {key: json.dumps(doc) for key, doc in documents.items()}

    @property
    def description(self) -> str:
        return "memory"

    async def start(self) -> None:
        self._store.sync(self._documents, complete=True)

    async def close(self) -> None:
        return None

    def put(self, key: str, document: Mapping[str, Any] | str) -> None:
        raw = document if isinstance(document, str) else json.dumps(document)
        self._documents[key] = raw
        self._store.sync({key: raw}, complete=False)

    def delete(self, key: str) -> None:
        self._documents.pop(key, None)
        self._store.sync({key: None}, complete=False)
