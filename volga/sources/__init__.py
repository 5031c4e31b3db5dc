"""Connectors: where an entity's events come from (see ``base`` for the contract)."""

from volga.sources.base import Rejected, Source, SourceReader
from volga.sources.chain import ChainSource
from volga.sources.files import CsvSource, JsonLinesSource, ParquetSource
from volga.sources.memory import MemorySource

__all__ = [
    "ChainSource",
    "CsvSource",
    "JsonLinesSource",
    "MemorySource",
    "ParquetSource",
    "Rejected",
    "Source",
    "SourceReader",
]
