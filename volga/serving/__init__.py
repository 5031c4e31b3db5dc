"""Request-time features: the on-demand executor, the HTTP server, and its client.

- :class:`OnDemandExecutor` answers feature requests from the online store (what
  ``client.get_on_demand`` and the server both call);
- :mod:`volga.serving.http` is the HTTP/1.1 server (``client.serve()``, ``volga serve``), with
  its :class:`ServerLimits`;
- :class:`OnDemandClient` calls that server, sync or async;
- :class:`Row` is a result row of either path: a dict of the output entity's fields that
  also reads fields as attributes.
"""

from volga.serving.client import OnDemandClient
from volga.serving.codec import Row
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
from volga.serving.http import ServerLimits

__all__ = [
    "BadRequest", "FeatureFunctionError", "FeatureNotFound", "InternalError", "InvalidKeys", "OnDemandClient",
    "OnDemandExecutor", "PayloadTooLarge", "Row", "ServerLimits", "ServingError", "Unauthorized",
]
