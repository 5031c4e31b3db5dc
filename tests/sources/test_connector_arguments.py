"""Constructor arguments of the Kafka and PostgreSQL sources (no server needed)."""

from __future__ import annotations

import pytest

from volga.sources import KafkaSource, PostgresSource

DSN = "postgresql://app:secret@db:5432/shop"


def test_kafka_format_json_is_accepted_by_keyword_after_group_id() -> None:
    src = KafkaSource("orders", "127.0.0.1:9092", format="json")
    assert src.format == "json" and src.group_id is None
    assert KafkaSource("orders", "127.0.0.1:9092").format == "json"
    assert KafkaSource("orders", "127.0.0.1:9092", "features", "json").group_id == "features"
    assert KafkaSource("orders", "127.0.0.1:9092", group_id="g", format="json", follow=True).bounded is False


@pytest.mark.parametrize("fmt", ["avro", "protobuf", "JSON", ""])
def test_kafka_unsupported_formats_are_refused_naming_the_supported_ones(fmt: str) -> None:
    with pytest.raises(ValueError, match=rf"format={fmt!r} is not supported; supported formats: 'json'"):
        KafkaSource("orders", "127.0.0.1:9092", format=fmt)


def test_postgres_query_or_table() -> None:
    assert PostgresSource("orders", DSN, cursor_column="id").query == "orders"
    by_table = PostgresSource(table="orders", dsn=DSN, cursor_column="id")
    assert by_table.table == "orders" and by_table.query is None and by_table.cursor_column == "id"
    assert repr(by_table) == "PostgresSource(table='orders', dsn='postgresql://app@db:5432/shop', cursor_column='id')"
    assert PostgresSource(table=("public", "orders"), dsn=DSN).table == ("public", "orders")


def test_postgres_both_or_neither_of_query_and_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="exactly one of query .* and table=.*got both"):
        PostgresSource("select 1", DSN, table="orders")
    with pytest.raises(ValueError, match="exactly one of query .* and table=.*got neither"):
        PostgresSource(dsn=DSN)
    with pytest.raises(ValueError, match="dsn .* is required"):
        PostgresSource(table="orders")
    with pytest.raises(ValueError, match="table= must be a table name"):
        PostgresSource(table="a..b", dsn=DSN)


def test_postgres_table_is_an_identifier_never_sql() -> None:
    import psycopg
    src = PostgresSource(table='we"ird; DROP TABLE x', dsn=DSN)
    text = src.base_query(psycopg.sql).as_string(None)
    assert text == 'SELECT * FROM "we""ird; DROP TABLE x"'
    assert PostgresSource(table="public.orders", dsn=DSN).base_query(psycopg.sql).as_string(None) == 'SELECT * FROM "public"."orders"'
