"""A ``volga serve --workers 2`` app: a store that is not the in-memory one.

Stands in for a shared store (Redis) until one exists: each worker fills it with the same
rows, so every process answers alike.
"""

import tempfile

from serving_defs import user_spent, user_stats  # noqa: F401  (served)

import volga
from volga.storage import MemoryOnlineStore, OnlineStore


class SharedLikeStore(OnlineStore):
    def __init__(self) -> None:
        self.inner = MemoryOnlineStore()

    def write(self, name, schema, batch):
        self.inner.write(name, schema, batch)

    def get_latest(self, name, keys):
        return self.inner.get_latest(name, keys)

    def get_last_n(self, name, keys, n):
        return self.inner.get_last_n(name, keys, n)

    def get_range(self, name, keys, start_us, end_us):
        return self.inner.get_range(name, keys, start_us, end_us)

    def schema(self, name):
        return self.inner.schema(name)

    def clear(self, name):
        self.inner.clear(name)


client = volga.Client(online_store=SharedLikeStore(), data_dir=tempfile.mkdtemp(prefix="volga-cli-shared-"))
client.materialize([user_spent], mode="offline", write_online=True)
