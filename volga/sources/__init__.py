"""Connectors: where an entity's events come from (see ``base`` for the contract)."""

from volga.sources.base import Rejected, Source, SourceMode, SourceReader
from volga.sources.chain import ChainSource
from volga.sources.datagen import DatagenSource
from volga.sources.files import CsvSource, JsonLinesSource, ParquetSource
from volga.sources.kafka import KafkaSource
from volga.sources.memory import MemorySource
from volga.sources.messages import DeadLetterFile, Secret
from volga.sources.postgres import PostgresSource
from volga.sources.redis_streams import RedisStreamSource

__all__ = [
    "ChainSource",
    "CsvSource",
    "DatagenSource",
    "DeadLetterFile",
    "JsonLinesSource",
    "KafkaSource",
    "MemorySource",
    "ParquetSource",
    "PostgresSource",
    "RedisStreamSource",
    "Rejected",
    "Secret",
    "Source",
    "SourceMode",
    "SourceReader",
]
