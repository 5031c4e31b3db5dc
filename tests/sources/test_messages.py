"""JsonDecoder: the typed fast path and the general path give the same rows and reasons."""

from __future__ import annotations

import datetime
import json
from typing import Optional

import msgspec  # noqa: F401 - installed with the test extra; the code under test needs it
import pytest

from volga.api.entity import entity, entity_schema, field
from volga.sources.messages import DeadLetterFile, DeadLetterRecord, JsonDecoder, Secret


@entity
class Reading:
    sensor: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    value: float
    count: int
    ok: bool
    note: Optional[str]
    tags: list[str]


SCHEMA = entity_schema(Reading)
GOOD = {"sensor": "s1", "at": "2024-01-01T00:00:00Z", "value": 1, "count": 2, "ok": True, "note": None, "tags": ["a"]}

CASES = [
    (b"not json", "invalid JSON"),
    (b"[1]", "expected a JSON object, got list"),
    (json.dumps({**GOOD, "sensor": 7}).encode(), "field 'sensor': expected str, got 7"),
    (json.dumps({**GOOD, "count": 1.0}).encode(), "field 'count': expected int, got 1.0"),
    (json.dumps({**GOOD, "ok": 1}).encode(), "field 'ok': expected bool, got 1"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "value"}).encode(), "field 'value': missing"),
    (json.dumps({**GOOD, "at": "yesterday"}).encode(), "field 'at': expected datetime, got 'yesterday'"),
    (json.dumps({**GOOD, "tags": [1]}).encode(), "field 'tags'"),
    (None, "empty message"),
]


def test_all_good_messages_take_the_fast_path_with_exact_types() -> None:
    rows = [json.dumps({**GOOD, "value": i, "note": f"n{i}" if i % 2 else None}).encode() for i in range(5)]
    rows.append(json.dumps({k: v for k, v in GOOD.items() if k != "note"}).encode())  # Optional may be absent

    df, bad = JsonDecoder(SCHEMA).decode(rows)

    assert bad == []
    assert df.schema == SCHEMA.polars_schema()
    assert df["value"].to_list() == [0.0, 1.0, 2.0, 3.0, 4.0, 1.0]
    assert df["note"].to_list() == [None, "n1", None, "n3", None, None]
    assert df["at"][0] == datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize(("raw", "reason"), CASES, ids=[r for _, r in CASES])
def test_a_misfit_among_good_messages_is_set_aside_with_its_reason_and_order_is_kept(raw: bytes | None, reason: str) -> None:
    good = [json.dumps({**GOOD, "count": i}).encode() for i in range(4)]

    df, bad = JsonDecoder(SCHEMA).decode(good[:2] + [raw] + good[2:])

    assert [i for i, _ in bad] == [2] and reason in bad[0][1]
    assert df["count"].to_list() == [0, 1, 2, 3]


def test_a_custom_deserializer_failing_rejects_only_that_message() -> None:
    def parse(raw: bytes) -> dict[str, object]:
        if raw == b"boom":
            raise ValueError("bad frame")
        return {**GOOD, "sensor": raw.decode()}

    df, bad = JsonDecoder(SCHEMA, parse).decode([b"x", b"boom", b"y"])

    assert df["sensor"].to_list() == ["x", "y"]
    assert bad == [(1, "deserializer failed: ValueError: bad frame")]


def test_dead_letter_file_lines_and_secret(tmp_path) -> None:
    sink = DeadLetterFile(tmp_path / "d" / "dead.jsonl")
    sink.write([DeadLetterRecord("src", "why", b"\xff\x00", {"offset": 3}), DeadLetterRecord("src", "why", "text", {})])
    assert sink.flush()
    sink.close()
    first, second = [json.loads(line) for line in (tmp_path / "d" / "dead.jsonl").read_text().splitlines()]
    assert first["raw_encoding"] == "base64" and first["offset"] == 3 and second["raw"] == "text"
    assert "pw" not in repr(Secret("pw")) and Secret("pw").get() == "pw"
