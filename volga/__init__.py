"""Volga: one feature definition, run offline (batch), online (streaming) and on demand.

>>> import volga
>>> sorted(n for n in ("entity", "source", "pipeline", "Client") if hasattr(volga, n))
['Client', 'entity', 'pipeline', 'source']
"""

from volga.api.aggregates import Avg, Count, CountDistinct, First, Last, LastN, Max, Min, Stddev, Sum, Variance
from volga.api.decorators import PipelineDef, SourceDef, pipeline, source
from volga.api.entity import entity, field
from volga.api.frame import Entity, PipelineDefinitionError, col
from volga.api.on_demand import OnDemandDef, OnDemandDefinitionError, on_demand
from volga.client import Client
from volga.errors import JobFailed, KeyMismatch, Rejected, RequestTimeUnavailable, UnknownFeature
from volga.runtime.local.job import Job
from volga.serving.client import OnDemandClient
from volga.sources.base import Source
from volga.storage import MemoryOnlineStore, OfflineStore, OnlineStore, ParquetOfflineStore

__all__ = [
    "Avg", "Client", "Count", "CountDistinct", "Entity", "First", "Job", "JobFailed", "KeyMismatch",
    "Last", "LastN", "Max", "MemoryOnlineStore", "Min", "OfflineStore", "OnlineStore",
    "ParquetOfflineStore", "PipelineDef", "PipelineDefinitionError", "Rejected", "RequestTimeUnavailable", "Source", "SourceDef",
    "Stddev", "Sum", "UnknownFeature", "Variance", "col", "entity", "field", "pipeline", "source",
    "OnDemandClient", "OnDemandDef", "OnDemandDefinitionError", "on_demand", "RayRuntime",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # RayRuntime is exported lazily: importing volga never imports ray.
    if name == "RayRuntime":
        from volga.runtime.ray.runtime import RayRuntime

        return RayRuntime
    raise AttributeError(f"module 'volga' has no attribute {name!r}")
