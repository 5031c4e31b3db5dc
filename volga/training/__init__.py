"""Point-in-time correct training data: ``client.get_historical_features``.

- :mod:`volga.training.spine` checks the spine (keys, timestamp; naive times are UTC);
- :mod:`volga.training.request` parses ``features``, ``key_map`` and ``ttl``;
- :mod:`volga.training.lookup` finds each spine row's as-of row in a pipeline's offline
  rows (one vectorised backward ``join_asof`` per pipeline);
- :mod:`volga.training.on_demand` evaluates on-demand features as of each spine row,
  reusing the serving layer's compiled plan and argument checks;
- :mod:`volga.training.historical` puts it together.

>>> import datetime, tempfile
>>> import polars as pl
>>> import volga
>>> from volga import Count, Entity, entity, field, pipeline, source
>>> from volga.sources import MemorySource
>>> @entity
... class Click:
...     user: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
>>> @entity
... class ClickCount:
...     user: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
...     n: int
>>> t0 = datetime.datetime(2025, 1, 1)  # naive: read as UTC
>>> @source(Click)
... def clicks() -> volga.Source:
...     return MemorySource([{"user": "a", "at": t0 + datetime.timedelta(minutes=m)} for m in (0, 5, 9)])
>>> @pipeline(dependencies=[clicks], output=ClickCount)
... def click_count(clicks: Entity) -> Entity:
...     return clicks.group_by(keys=["user"]).aggregate([Count(window="forever", into="n")])
>>> client = volga.Client(data_dir=tempfile.mkdtemp())
>>> client.register(click_count)
>>> spine = pl.DataFrame({"user": ["a", "a", "a"], "timestamp": [t0 + datetime.timedelta(minutes=m) for m in (-1, 5, 20)]})
>>> client.get_historical_features(spine, ["click_count.n"], compute=True)["n"].to_list()
[None, 2, 3]
"""

from volga.training.historical import backfill, get_historical_features
from volga.training.lookup import OfflineDataMissing
from volga.training.spine import SpineError, SpineKeyError

__all__ = ["OfflineDataMissing", "SpineError", "SpineKeyError", "backfill", "get_historical_features"]
