"""PostgresSource against a real PostgreSQL server, in both modes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import volga
from tests.support.servers import PostgresServer, free_port
from volga.api.entity import entity_schema
from volga.sources import PostgresSource
from volga.storage import MemoryOnlineStore, ParquetOfflineStore
from volga.storage.online.redis import RedisOnlineStore
from volga.testing.quickstart import (
    N_USERS,
    Order,
    assert_same_rows,
    batch_result,
    latest_rows,
    offline_rows,
    online_latest,
    quickstart,
    wait_until,
)
from volga.testing.quickstart import order_records as make_orders

pytestmark = pytest.mark.integration

COLUMNS = ["buyer_id", "product_id", "product_type", "purchased_at", "product_price"]


def create_table(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id bigserial PRIMARY KEY, buyer_id text, product_id text, "
            "product_type text, purchased_at timestamptz, product_price numeric(10, 2))"
        )


def insert(dsn: str, table: str, orders: list[dict[str, Any]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES (%s, %s, %s, %s, %s)",
            [tuple(o[c] for c in COLUMNS) for o in orders],
        )


def new_client(tmp_path: Path, online_store: Any = None) -> volga.Client:
    return volga.Client(online_store or MemoryOnlineStore(), ParquetOfflineStore(tmp_path / "offline"))


@pytest.mark.parametrize("query", ["table", "select"])
def test_offline_reads_the_query_in_chunks_and_matches_the_parquet_batch(
    postgres_server: PostgresServer, tmp_path: Path, unique: str, query: str
) -> None:
    orders = make_orders(1500)
    create_table(postgres_server.dsn, unique)
    insert(postgres_server.dsn, unique, orders)
    client = new_client(tmp_path)
    text = unique if query == "table" else f"SELECT {', '.join(COLUMNS)} FROM {unique} WHERE product_price >= 0"

    job = client.materialize(
        [quickstart(lambda online: PostgresSource(text, postgres_server.dsn, chunk_rows=256))], mode="offline"
    )

    assert job.metrics.rows_in["order_source"] == len(orders)
    assert_same_rows(client.get_offline("user_spent"), batch_result(orders, tmp_path))


def test_online_polls_new_rows_by_cursor_column_and_they_reach_redis(
    postgres_server: PostgresServer, redis_server: Any, tmp_path: Path, unique: str
) -> None:
    before, during = make_orders(500), make_orders(500, first=500)
    create_table(postgres_server.dsn, unique)
    insert(postgres_server.dsn, unique, before)
    store = RedisOnlineStore(redis_server.url, namespace=unique)
    client = new_client(tmp_path, store)
    pipe = quickstart(lambda online: PostgresSource(unique, postgres_server.dsn, cursor_column="id", poll_interval="50ms"))
    want = batch_result(before + during, tmp_path)

    job = client.materialize([pipe], mode="online", params={"online": True}, block=False, write_offline=True, batch_size=128)
    try:
        wait_until(lambda: job.metrics.rows_in.get("order_source", 0) == len(before), what="the first rows")
        insert(postgres_server.dsn, unique, during[:250])
        insert(postgres_server.dsn, unique, during[250:])
        wait_until(lambda: offline_rows(client) == want.height, what="every output row")
        users = [str(i) for i in range(N_USERS)]
        wait_until(lambda: online_latest(client, users) == latest_rows(want), what="the latest rows in Redis")
    finally:
        job.stop()
    assert_same_rows(client.get_offline("user_spent"), want)
    store.close()


def test_pages_never_split_a_run_of_equal_cursor_values(postgres_server: PostgresServer, unique: str) -> None:
    orders = make_orders(30)
    create_table(postgres_server.dsn, unique)
    insert(postgres_server.dsn, unique, orders)
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {unique} ADD COLUMN batch int")
        conn.execute(f"UPDATE {unique} SET batch = (id - 1) / 7")  # runs of 7 equal values
    source = PostgresSource(unique, postgres_server.dsn, cursor_column="batch", follow=True, poll_interval="0s")
    reader = source.open(entity_schema(Order), name="orders")
    seen = 0
    for _ in range(20):
        batch = reader.poll(5)  # smaller than a run: the whole run comes at once
        seen += 0 if batch is None else batch.height
    reader.close()
    assert seen == 30


def test_malformed_rows_are_counted_and_dead_lettered(postgres_server: PostgresServer, tmp_path: Path, unique: str) -> None:
    good = make_orders(100)
    create_table(postgres_server.dsn, unique)
    insert(postgres_server.dsn, unique, good[:50])
    insert(postgres_server.dsn, unique, [{**make_orders(1, first=100)[0], "buyer_id": None}])
    insert(postgres_server.dsn, unique, good[50:])
    dead_file = tmp_path / "dead.jsonl"
    client = new_client(tmp_path)
    source = PostgresSource(unique, postgres_server.dsn, cursor_column="id", follow=False, dead_letter_path=dead_file)

    job = client.materialize([quickstart(lambda online: source)], mode="online", params={"online": True}, write_offline=True)

    assert_same_rows(client.get_offline("user_spent"), batch_result(good, tmp_path))
    reasons = [r.reason for r in job.rejected if r.source == "order_source"]
    assert reasons == ["row 51: field 'buyer_id': null in a non-Optional field"]
    (line,) = [json.loads(text) for text in dead_file.read_text().splitlines()]
    assert line["row"] == 51 and line["reason"] == "field 'buyer_id': null in a non-Optional field"
    assert json.loads(line["raw"])["id"] == 51


def test_a_restarted_server_is_reconnected_to_and_no_row_is_lost(tmp_path: Path, unique: str) -> None:
    before, after = make_orders(300), make_orders(300, first=300)
    with PostgresServer() as server:
        create_table(server.dsn, unique)
        insert(server.dsn, unique, before)
        client = new_client(tmp_path)
        pipe = quickstart(lambda online: PostgresSource(unique, server.dsn, cursor_column="id", poll_interval="50ms"))
        want = batch_result(before + after, tmp_path)
        job = client.materialize([pipe], mode="online", params={"online": True}, block=False, write_offline=True)
        try:
            wait_until(lambda: job.metrics.rows_in.get("order_source", 0) == len(before), what="the first rows")
            server.restart()
            insert(server.dsn, unique, after)
            wait_until(lambda: offline_rows(client) == want.height, timeout_s=60, what="the rows after the restart")
        finally:
            job.stop()
        assert job.error is None
        assert job.metrics.rows_in["order_source"] == len(before) + len(after)
        assert_same_rows(client.get_offline("user_spent"), want)


def test_wrong_password_and_unreachable_server_are_clear_errors(postgres_server: PostgresServer, unique: str) -> None:
    schema = entity_schema(Order)
    wrong = postgres_server.dsn.replace(postgres_server.password, "not-the-password")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="password authentication failed") as info:
        PostgresSource(unique, wrong).open(schema, name="orders")
    assert "not-the-password" not in str(info.value)
    unreachable = f"postgresql://postgres:pw@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(ConnectionError, match=r"PostgreSQL at 'postgresql://postgres@127\.0\.0\.1:\d+/postgres': cannot connect"):
        PostgresSource(unique, unreachable, connect_timeout="2s").open(schema, name="orders")
    assert time.monotonic() - started < 10


def test_online_mode_without_a_cursor_column_is_refused(postgres_server: PostgresServer, unique: str) -> None:
    with pytest.raises(ValueError, match="cursor_column"):
        PostgresSource(unique, postgres_server.dsn).open(entity_schema(Order), name="orders", mode="online")


def read_all(source: PostgresSource, max_rows: int = 100) -> list[dict[str, Any]]:
    reader = source.open(entity_schema(Order), name="orders", mode="offline")
    rows: list[dict[str, Any]] = []
    try:
        while not reader.finished:
            batch = reader.poll(max_rows)
            if batch is not None:
                rows += batch.to_dicts()
    finally:
        reader.close()
    return rows


def test_table_reads_the_same_rows_as_select_star(postgres_server: PostgresServer, unique: str) -> None:
    orders = make_orders(250)
    create_table(postgres_server.dsn, unique)
    insert(postgres_server.dsn, unique, orders)
    dsn = postgres_server.dsn

    by_query = read_all(PostgresSource(query=f"select * from {unique}", dsn=dsn, cursor_column="id"))
    by_table = read_all(PostgresSource(table=unique, dsn=dsn, cursor_column="id"))
    by_schema_table = read_all(PostgresSource(table=f"public.{unique}", dsn=dsn, cursor_column="id", chunk_rows=64))
    positional = read_all(PostgresSource(unique, dsn, cursor_column="id"))

    assert len(by_query) == len(orders)
    assert by_table == by_query == by_schema_table == positional


def test_table_is_quoted_as_an_identifier(postgres_server: PostgresServer, unique: str) -> None:
    odd = f'{unique} Odd"Name; DROP TABLE x'  # needs quoting; must never run as SQL text
    orders = make_orders(20)
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        ident = psycopg.sql.Identifier(odd)
        conn.execute(
            psycopg.sql.SQL(
                "CREATE TABLE {} (id bigserial PRIMARY KEY, buyer_id text, product_id text, "
                "product_type text, purchased_at timestamptz, product_price numeric(10, 2))"
            ).format(ident)
        )
        with conn.cursor() as cur:
            cur.executemany(
                psycopg.sql.SQL("INSERT INTO {} ({}) VALUES (%s, %s, %s, %s, %s)").format(
                    ident, psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, COLUMNS))
                ),
                [tuple(o[c] for c in COLUMNS) for o in orders],
            )

    assert len(read_all(PostgresSource(table=odd, dsn=postgres_server.dsn))) == 20
    assert len(read_all(PostgresSource(table=("public", odd), dsn=postgres_server.dsn))) == 20
    with pytest.raises(ValueError, match="query failed"):  # a table name is never SQL text
        PostgresSource(table=f"select * from {unique}", dsn=postgres_server.dsn).open(entity_schema(Order), name="orders")
