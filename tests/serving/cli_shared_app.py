"""A ``volga serve --workers 2`` app over a store the worker processes share: Redis.

The test fills the Redis store before starting the server; every worker reads it.
"""

import os
import tempfile

from serving_defs import user_spent, user_stats  # noqa: F401  (served)

import volga
from volga.storage import RedisOnlineStore

client = volga.Client(
    online_store=RedisOnlineStore(os.environ["VOLGA_TEST_REDIS_URL"], namespace="cli-shared"),
    data_dir=tempfile.mkdtemp(prefix="volga-cli-shared-"),
)
