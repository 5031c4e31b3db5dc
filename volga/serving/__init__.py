"""Request-time features: the on-demand executor, the HTTP server, and its client.

- :class:`OnDemandExecutor` answers feature requests from the online store (what
  ``client.get_on_demand`` and the server both call);
- :mod:`volga.serving.http` is the HTTP/1.1 server (``client.serve()``, ``volga serve``);
- :class:`OnDemandClient` calls that server, sync or async.
"""

from volga.serving.client import OnDemandClient
from volga.serving.errors import (
    BadRequest,
    FeatureFunctionError,
    FeatureNotFound,
    InternalError,
    InvalidKeys,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
)
from volga.serving.executor import OnDemandExecutor

__all__ = [
    "BadRequest", "FeatureFunctionError", "FeatureNotFound", "InternalError", "InvalidKeys", "OnDemandClient",
    "OnDemandExecutor", "PayloadTooLarge", "ServingError", "Unauthorized",
]
