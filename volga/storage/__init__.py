"""Online (latest + recent history per key) and offline (every row) feature stores."""

from volga.storage.offline.base import OfflineStore
from volga.storage.offline.parquet import ParquetOfflineStore
from volga.storage.online.base import KEY_INDEX, OnlineStore
from volga.storage.online.memory import MemoryOnlineStore
from volga.storage.online.redis import RedisOnlineStore

__all__ = ["KEY_INDEX", "MemoryOnlineStore", "OfflineStore", "OnlineStore", "ParquetOfflineStore", "RedisOnlineStore"]
