"""The serving layer's errors: those of on-demand requests (:mod:`volga.ondemand.errors`),
as ``volga.serving.BadRequest`` etc."""

from volga.ondemand.errors import (
    BadRequest,
    FeatureFunctionError,
    FeatureNotFound,
    InternalError,
    InvalidKeys,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
    describe,
    error_from_payload,
)

__all__ = [
    "BadRequest", "FeatureFunctionError", "FeatureNotFound", "InternalError", "InvalidKeys", "PayloadTooLarge",
    "ServingError", "Unauthorized", "describe", "error_from_payload",
]
