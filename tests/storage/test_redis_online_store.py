"""What only the Redis store has: sharing between processes/instances, TTL, namespaces, encoding.

The OnlineStore contract itself runs on Redis in test_online_store_contract.py.
"""

from __future__ import annotations

import datetime
import time
import uuid

import polars as pl
import pytest
import redis

from volga.api.entity import entity, entity_schema, field
from volga.storage.online.redis import RedisOnlineStore

pytestmark = pytest.mark.integration

@entity
class Spend:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    total: float


SPEND = entity_schema(Spend)
AT = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)


def rows(*pairs: tuple[str, float]) -> pl.DataFrame:
    return pl.DataFrame({"user_id": [u for u, _ in pairs], "at": [AT] * len(pairs), "total": [t for _, t in pairs]})


def users(*ids: str) -> pl.DataFrame:
    return pl.DataFrame({"user_id": list(ids)}, schema={"user_id": pl.String})


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def test_a_second_instance_sees_what_the_first_wrote(redis_server, namespace: str) -> None:
    writer, reader = RedisOnlineStore(redis_server.url, namespace=namespace), RedisOnlineStore(redis_server.url, namespace=namespace)
    writer.write("spend", SPEND, rows(("a", 1.0), ("a", 2.0)))

    assert reader.schema("spend") == SPEND
    assert reader.get_latest("spend", users("a", "b"))["total"].to_list() == [2.0, None]
    writer.clear("spend")
    assert reader.schema("spend") is None


def test_namespaces_and_feature_names_do_not_collide(redis_server, namespace: str) -> None:
    one, other = RedisOnlineStore(redis_server.url, namespace=namespace), RedisOnlineStore(redis_server.url, namespace=namespace + "x")
    one.write("spend", SPEND, rows(("a", 1.0)))
    one.write("spend:*", SPEND, rows(("a", 5.0)))
    other.write("spend", SPEND, rows(("a", 9.0)))

    one.clear("spend")

    assert one.get_latest("spend:*", users("a"))["total"].to_list() == [5.0]
    assert other.get_latest("spend", users("a"))["total"].to_list() == [9.0]


def test_rows_expire_ttl_after_their_last_write(redis_server, namespace: str) -> None:
    store = RedisOnlineStore(redis_server.url, namespace=namespace, ttl="300ms")
    store.write("spend", SPEND, rows(("a", 1.0)))
    assert store.get_latest("spend", users("a"))["total"].to_list() == [1.0]

    time.sleep(0.5)

    assert store.get_latest("spend", users("a"))["total"].to_list() == [None]
    assert store.get_last_n("spend", users("a"), 5).height == 0


def test_writing_another_shape_from_another_instance_is_refused(redis_server, namespace: str) -> None:
    RedisOnlineStore(redis_server.url, namespace=namespace).write("spend", SPEND, rows(("a", 1.0)))

    @entity
    class Other:
        user_id: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        count: int

    frame = pl.DataFrame({"user_id": ["a"], "at": [AT], "count": [1]})
    with pytest.raises(ValueError, match="call clear"):
        RedisOnlineStore(redis_server.url, namespace=namespace).write("spend", entity_schema(Other), frame)


def test_rows_are_msgpack_not_pickle(redis_server, namespace: str) -> None:
    import msgspec

    RedisOnlineStore(redis_server.url, namespace=namespace).write("spend", SPEND, rows(("a", 1.5)))
    client = redis.Redis.from_url(redis_server.url)
    key = f"{namespace}:spend:l:".encode() + msgspec.msgpack.encode("a")

    assert msgspec.msgpack.decode(client.get(key)) == ["a", int(AT.timestamp() * 1_000_000), 1.5]


def test_unreachable_server_and_password_in_repr() -> None:
    from tests.support.servers import free_port

    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=r"cannot use Redis at redis://127\.0\.0\.1:\d+/0") as info:
        RedisOnlineStore(url, connect_timeout="1s")
    assert "s3cret" not in str(info.value)
    assert time.monotonic() - started < 5
