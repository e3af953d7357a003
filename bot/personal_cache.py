"""Users' personal models kept in memory between photos: a bounded LRU, thread-safe.

An entry is filed under the user's Telegram id and a key naming the exact weights (model row id,
version number, weights checksum). The checksum matters: SQLite reuses the highest row id after a
delete, so after one user's /forget the next model row (another user's) can get the same id, and a
cache keyed by id alone would then answer that user with the forgotten user's model.

``drop_user`` (called by /forget) removes the user's entries, and a model that was being loaded
while the user was forgotten is not put back afterwards (``put`` takes the ``generation`` read
before loading), so after /forget nothing of that user's stays in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

Model = TypeVar("Model")
# What the cached model was built from. bot.services uses ((model version row id, version number,
# weights sha256) of the active head, or None; the revision of the user's labels, which make up
# their memory: storage.repository.label_revision).
WeightsKey = Hashable
DEFAULT_SIZE = 64
_DROPS_REMEMBERED = 4096  # recent /forget calls remembered for loads still in flight


class PersonalModelCache(Generic[Model]):
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self._entries: OrderedDict[tuple[int, WeightsKey], Model] = OrderedDict()
        self._generation = 0
        self._dropped: OrderedDict[int, int] = OrderedDict()  # telegram id -> generation of its drop
        self._lock = threading.Lock()

    def generation(self) -> int:
        """Read before loading a model; hand it to ``put``."""
        with self._lock:
            return self._generation

    def get(self, telegram_id: int, key: WeightsKey) -> Model | None:
        with self._lock:
            model = self._entries.get((telegram_id, key))
            if model is not None:
                self._entries.move_to_end((telegram_id, key))
            return model

    def latest(self, telegram_id: int) -> Model | None:
        """The user's entry whatever its key (what a rebuilt model can reuse), without touching its
        recency."""
        with self._lock:
            return next((model for (user, _), model in self._entries.items() if user == telegram_id), None)

    def put(self, telegram_id: int, key: WeightsKey, model: Model, *, generation: int) -> bool:
        """Keep ``model`` unless the user was dropped after ``generation``; False if not kept. The
        user's other entries (older versions) go: only the active model is worth keeping."""
        with self._lock:
            if self._dropped.get(telegram_id, -1) > generation:
                return False
            self._remove_user(telegram_id)
            self._entries[(telegram_id, key)] = model
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return True

    def drop_user(self, telegram_id: int) -> int:
        """Forget the user's models, including one being loaded right now; returns entries removed."""
        with self._lock:
            self._generation += 1
            self._dropped[telegram_id] = self._generation
            self._dropped.move_to_end(telegram_id)
            while len(self._dropped) > _DROPS_REMEMBERED:
                self._dropped.popitem(last=False)
            return self._remove_user(telegram_id)

    def discard_user(self, telegram_id: int) -> int:
        """Remove the user's entries (no active model any more); loads in flight are not affected."""
        with self._lock:
            return self._remove_user(telegram_id)

    def users(self) -> set[int]:
        with self._lock:
            return {telegram_id for telegram_id, _ in self._entries}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _remove_user(self, telegram_id: int) -> int:
        stale = [entry for entry in self._entries if entry[0] == telegram_id]
        for entry in stale:
            del self._entries[entry]
        return len(stale)
