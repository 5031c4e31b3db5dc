"""Point-in-time correct training data: ``client.get_historical_features``.

- :mod:`volga.training.spine` checks the spine (keys, timestamp; naive times are UTC);
- :mod:`volga.training.request` parses ``features``, ``key_map`` and ``ttl``;
- :mod:`volga.training.lookup` finds each spine row's as-of row in a pipeline's offline
  rows (one vectorised backward ``join_asof`` per pipeline);
- :mod:`volga.training.on_demand` evaluates on-demand features as of each spine row,
  reusing the serving layer's compiled plan and argument checks;
- :mod:`volga.training.historical` puts it together.
"""

from volga.training.historical import backfill, get_historical_features
from volga.training.lookup import OfflineDataMissing
from volga.training.spine import SpineError, SpineKeyError

__all__ = ["OfflineDataMissing", "SpineError", "SpineKeyError", "backfill", "get_historical_features"]
