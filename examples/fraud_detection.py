"""Fraud detection: card velocity features, a z-score of the amount, and a request-time
ratio of the amount being authorised to the card's recent average.

Run it with ``.venv/bin/python examples/fraud_detection.py`` (a few seconds, nothing left
on disk). Card ``c-burst`` makes a burst of large payments at the end: the scores printed
at the end flag it, and the ordinary cards stay below the threshold.
"""

import datetime
import random
import tempfile
from typing import Optional

import volga
from volga import Avg, Count, Entity, Last, Stddev, Sum, entity, field, on_demand, pipeline, source
from volga.sources import MemorySource

# Three weeks of card payments up to now, a burst among them just now: features are
# evaluated at the request time (now), as a model scoring live payments asks for them.
NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
START = NOW - datetime.timedelta(days=21, hours=1, minutes=5)
CARDS = [f"c{i}" for i in range(20)]


@entity
class Payment:
    card_id: str = field(key=True)
    # epoch milliseconds, as payment events usually carry them
    at: datetime.datetime = field(timestamp=True, unit="ms")
    amount: float
    merchant: str


@entity
class CardVelocity:
    card_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    payments_10m: int
    payments_24h: int
    spent_24h: float
    avg_amount_7d: float
    sd_amount_7d: Optional[float]  # Stddev is null below two payments: it must be Optional
    amount: float  # the event's own amount, for the z-score of the latest payment
    z_amount: Optional[float]


def epoch_ms(moment: datetime.datetime) -> int:
    return int(moment.timestamp() * 1000)


def make_payments(seed: int = 7) -> list[dict]:
    """Three weeks of ordinary payments, then a burst of large ones on card c-burst."""
    rng = random.Random(seed)
    rows = []
    for card in CARDS + ["c-burst"]:
        typical = rng.uniform(15, 80)
        t = START + datetime.timedelta(hours=rng.uniform(0, 20))
        while t < START + datetime.timedelta(days=21):
            rows.append({"card_id": card, "at": epoch_ms(t), "amount": round(rng.gauss(typical, typical / 4) + 1, 2),
                         "merchant": rng.choice(["grocer", "fuel", "books", "cafe"])})
            t += datetime.timedelta(hours=rng.uniform(2, 20))
    burst_at = START + datetime.timedelta(days=21, hours=1)
    for i in range(6):  # six large payments within five minutes
        rows.append({"card_id": "c-burst", "at": epoch_ms(burst_at + datetime.timedelta(minutes=i)),
                     "amount": 900.0 + 50 * i, "merchant": "electronics"})
    return sorted(rows, key=lambda r: r["at"])


PAYMENTS = make_payments()


@source(Payment)
def payments() -> volga.Source:
    return MemorySource(PAYMENTS)


@pipeline(dependencies=[payments], output=CardVelocity)
def card_velocity(p: Entity) -> Entity:
    stats = p.group_by("card_id").aggregate([
        Count(window="10m", into="payments_10m"),
        Count(window="24h", into="payments_24h"),
        Sum(on="amount", window="24h", into="spent_24h"),
        Avg(on="amount", window="7d", into="avg_amount_7d"),
        Stddev(on="amount", window="7d", into="sd_amount_7d"),
        Last(on="amount", into="amount"),  # the event's own amount
    ])
    # z-score of this payment against the card's week (null while the week has < 2 payments)
    z = (volga.col("amount") - volga.col("avg_amount_7d")) / volga.col("sd_amount_7d")
    return stats.assign("z_amount", Optional[float], z)


@entity
class FraudScore:
    card_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    amount_to_avg: float  # request amount / the card's 7-day average
    payments_10m: int
    z_last: Optional[float]
    flagged: bool


@on_demand(dependencies=[card_velocity])
def fraud_score(v: CardVelocity, amount: float = 0.0) -> FraudScore:
    """Scored at authorisation time: ``amount`` is the payment being authorised."""
    ratio = amount / v.avg_amount_7d
    z = v.z_amount
    flagged = v.payments_10m >= 3 or ratio > 8 or (z is not None and z > 4)
    return FraudScore(card_id=v.card_id, at=v.at, amount_to_avg=ratio, payments_10m=v.payments_10m,
                      z_last=z, flagged=flagged)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="volga_fraud_") as data_dir:
        client = volga.Client(data_dir=data_dir)
        client.materialize([card_velocity], mode="offline", write_online=True)
        offline = client.get_offline("card_velocity")
        print(f"payments: {len(PAYMENTS)}  feature rows: {offline.height}")
        burst = offline.filter(volga.col("card_id") == "c-burst").tail(3)
        print(burst.select("at", "payments_10m", "spent_24h", "avg_amount_7d", "z_amount"))

        keys = [{"card_id": c} for c in ["c-burst", *CARDS[:5]]]
        # the same request amount for every card: 60.0
        scores = client.get_on_demand("fraud_score", keys, args={"fraud_score": {"amount": 60.0}})
        for s in scores:
            z = "   n/a" if s.z_last is None else f"{s.z_last:6.2f}"
            print(f"{s.card_id:8} amount/avg7d={s.amount_to_avg:6.2f} payments_10m={s.payments_10m} "
                  f"z_last={z} flagged={s.flagged}")
        flagged = sorted(s.card_id for s in scores if s.flagged)
        print("flagged:", flagged)


if __name__ == "__main__":
    main()
