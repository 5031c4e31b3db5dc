"""Recommendations: item embeddings (``list[float]``) kept per item, a user taste vector
(the mean of the embeddings of the user's recent clicks) and, at request time, a dot
product between the user and each candidate item sent with the request.

Run it with ``.venv/bin/python examples/recommendations.py`` (a few seconds, nothing left
on disk). User ``u1`` clicks sports items: sports candidates rank first for u1, and the
ranking for ``u2`` (a cooking fan) is the other way round.
"""

import datetime
import random
import tempfile
from typing import Optional

import volga
from volga import Count, Entity, Last, LastN, entity, field, on_demand, pipeline, source
from volga.sources import MemorySource

# Items and clicks of the last few hours: lookups are evaluated now (request time).
START = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(hours=3)
DIM = 8
TOPICS = {"sports": 0, "cooking": 1, "travel": 2}


@entity
class ItemEmbedding:
    item_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    topic: str
    embedding: list[float]


@entity
class Click:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    item_id: str


def make_data(seed: int = 11) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    items = []
    for i in range(30):
        topic = list(TOPICS)[i % 3]
        vector = [rng.gauss(0, 0.1) for _ in range(DIM)]
        vector[TOPICS[topic]] += 1.0  # each topic points along its own axis
        items.append({"item_id": f"i{i}", "at": START, "topic": topic, "embedding": vector})
    favourite = {"u1": "sports", "u2": "cooking"}
    clicks = []
    for n in range(40):
        for user, topic in favourite.items():
            liked = [it for it in items if it["topic"] == topic]
            item = rng.choice(liked if rng.random() < 0.9 else items)
            clicks.append({"user_id": user, "at": START + datetime.timedelta(hours=1, minutes=n), "item_id": item["item_id"]})
    return items, clicks


ITEMS, CLICKS = make_data()


@source(ItemEmbedding)
def item_embeddings() -> volga.Source:
    return MemorySource(ITEMS)


@source(Click)
def clicks() -> volga.Source:
    return MemorySource(CLICKS)


@entity
class ItemVector:
    item_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    topic: str
    embedding: list[float]


@pipeline(dependencies=[item_embeddings], output=ItemVector)
def item_vector(items: Entity) -> Entity:
    return items.group_by("item_id").aggregate([Last(on="topic", into="topic"), Last(on="embedding", into="embedding")])


@entity
class UserTaste:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    taste: list[float]  # the mean embedding of the last 20 clicked items
    clicks_24h: int


def mean_vector(row: dict) -> list[float]:
    """The mean of a row's recent embeddings (LastN never gives an empty list here: the
    current click is always in its window)."""
    recent = row["recent"]
    return [sum(v[d] for v in recent) / len(recent) for d in range(DIM)]


@pipeline(dependencies=[clicks, item_vector], output=UserTaste)
def user_taste(c: Entity, items: Entity) -> Entity:
    # each click gets the clicked item's embedding as of the click (an inner as-of join)
    with_vectors = c.join(items, left_on=["item_id"], right_on=["item_id"], how="inner")
    recent = with_vectors.group_by("user_id").aggregate([
        LastN(20, on="embedding", window="7d", into="recent"), Count(window="24h", into="clicks_24h"),
    ])
    return recent.assign("taste", list[float], mean_vector).drop(["recent"])



@entity
class Score:
    user_id: str = field(key=True)
    item_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    topic: str
    score: float


@on_demand(dependencies=[user_taste, item_vector])
def candidate_score(user: UserTaste, item: ItemVector) -> Score:
    """One (user, candidate) pair per request key: the request's candidate list is the keys."""
    score = sum(u * v for u, v in zip(user.taste, item.embedding))
    return Score(user_id=user.user_id, item_id=item.item_id, at=max(user.at, item.at), topic=item.topic, score=score)


def rank(client: volga.Client, user_id: str, candidates: list[str]) -> list[Optional[Score]]:
    keys = [{"user_id": user_id, "item_id": c} for c in candidates]
    scored = [s for s in client.get_on_demand("candidate_score", keys) if s is not None]
    return sorted(scored, key=lambda s: -s.score)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="volga_recs_") as data_dir:
        client = volga.Client(data_dir=data_dir)
        client.materialize([item_vector, user_taste], mode="offline", write_online=True)
        candidates = [f"i{i}" for i in range(0, 12)]  # four items of each topic
        for user in ("u1", "u2"):
            ranked = rank(client, user, candidates)
            top = ", ".join(f"{s.item_id}({s.topic}) {s.score:.2f}" for s in ranked[:4])
            print(f"{user} top 4: {top}")
            print(f"{user} top topic: {ranked[0].topic}")


if __name__ == "__main__":
    main()
