"""``volga init DIR``: a small working project to start from.

It writes ``app.py`` (an order log -> per-user spend features, an on-demand feature and a
client), ``data/orders.jsonl`` (sample orders over the last two days, in time order),
``data/spine.csv`` (for ``volga historical``), ``test_app.py`` and a README. Every
command works on it at once: ``volga run app.py`` follows the order log (append a line
and the features move), ``volga materialize``, ``volga serve``, ``volga historical``,
``volga list``/``describe`` and ``volga ui``.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp()) / "demo"
>>> sorted(p.name for p in init_project(root))
['README.md', 'app.py', 'orders.jsonl', 'spine.csv', 'test_app.py']
"""

from __future__ import annotations

import datetime
import json
import random
from pathlib import Path

APP = '''"""A small Volga project: an order log -> per-user spend features.

    volga run app.py                  # the online job: follows data/orders.jsonl (append lines, features move)
    volga materialize app.py          # backfill the offline store from data/orders.jsonl
    volga serve app.py                # on-demand features over HTTP
    volga historical app.py --spine data/spine.csv --features user_spend spend_profile.big_spender --out train.parquet --compute
    volga list app.py                 # the catalog; volga describe app.py user_spend
    volga ui app.py                   # the web console
"""

import datetime
from pathlib import Path

import volga
from volga import Avg, Count, Entity, Max, Sum, entity, field, on_demand, pipeline, source
from volga.sources import JsonLinesSource

HERE = Path(__file__).resolve().parent


@entity
class Order:
    user_id: str = field(key=True)
    product: str
    price: float
    ordered_at: datetime.datetime = field(timestamp=True)


@entity
class UserSpend:
    user_id: str = field(key=True)
    ordered_at: datetime.datetime = field(timestamp=True)
    orders_1h: int
    spent_1d: float
    avg_price_7d: float
    max_price_7d: float


@entity
class SpendProfile:
    user_id: str = field(key=True)
    ordered_at: datetime.datetime = field(timestamp=True)
    big_spender: bool
    spent_1d: float


@source(Order, lateness="5s", tags=["orders", "raw"], owner="shop-data")
def orders(online: bool = False) -> volga.Source:
    """Orders from the shop's order log (JSON lines); `volga run` follows it live."""
    return JsonLinesSource(HERE / "data" / "orders.jsonl", follow=online)


@pipeline(dependencies=[orders], output=UserSpend, tags=["spend"], owner="shop-data")
def user_spend(orders: Entity) -> Entity:
    """How much and how often each user buys, over 1 hour, 1 day and 7 days."""
    return orders.group_by(keys=["user_id"]).aggregate([
        Count(window="1h", into="orders_1h"),
        Sum(on="price", window="1d", into="spent_1d"),
        Avg(on="price", window="7d", into="avg_price_7d"),
        Max(on="price", window="7d", into="max_price_7d"),
    ])


@on_demand(dependencies=[user_spend], tags=["spend"], owner="shop-data")
def spend_profile(spend: UserSpend, threshold: float = 100.0) -> SpendProfile:
    """Whether the user spent more than `threshold` over the last day (computed per request)."""
    return SpendProfile(user_id=spend.user_id, ordered_at=spend.ordered_at,
                        big_spender=spend.spent_1d > threshold, spent_1d=spend.spent_1d)


client = volga.Client(data_dir=HERE / "volga_data")
'''

TEST = '''"""Run with: python -m pytest test_app.py"""

import json
from pathlib import Path

import volga

import app


def test_backfill_sums_each_users_last_day(tmp_path):
    client = volga.Client(data_dir=tmp_path)
    client.materialize([app.user_spend], mode="offline")
    rows = client.get_offline("user_spend")
    lines = [json.loads(line) for line in (Path(app.__file__).parent / "data" / "orders.jsonl").read_text().splitlines()]
    assert rows.height == len(lines)  # one output row per order
    last = lines[-1]
    user_rows = rows.filter(rows["user_id"] == last["user_id"]).sort("ordered_at")
    assert user_rows["max_price_7d"][-1] >= last["price"]
    assert user_rows["orders_1h"][-1] >= 1


def test_spend_profile_reads_the_online_row(tmp_path):
    client = volga.Client(data_dir=tmp_path)
    client.materialize([app.user_spend], mode="offline", write_online=True)
    (profile,) = client.get_on_demand("spend_profile", keys=[{"user_id": "u1"}], args={"threshold": 0.0})
    assert profile is not None and profile["big_spender"] is True
'''

README = """# A Volga project

Made by `volga init`. `app.py` defines the features and the client; `data/` holds sample
orders. Try:

    volga list app.py
    volga materialize app.py
    volga run app.py --metrics-port 9108     # Ctrl-C stops it; metrics and the console on :9108
    volga serve app.py
    volga ui app.py
    python -m pytest test_app.py
"""

PRODUCTS = ["book", "lamp", "mug", "shoes", "phone case", "headphones"]


def init_project(root: Path, *, orders: int = 2000, users: int = 20, seed: int = 7) -> list[Path]:
    """Write the project into ``root`` (which must not exist or be empty); returns the files."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"volga init: {root} already exists and is not an empty directory")
    (root / "data").mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rng = random.Random(seed)
    start = now - datetime.timedelta(days=2)
    step = datetime.timedelta(days=2) / orders
    lines = []
    for i in range(orders):
        user = f"u{1 + (i % users) if i < users else rng.randint(1, users)}"
        lines.append(json.dumps({
            "user_id": user, "product": rng.choice(PRODUCTS), "price": round(rng.uniform(3, 120), 2),
            "ordered_at": (start + i * step).isoformat(),
        }))
    spine = ["user_id,timestamp"] + [f"u{1 + i % users},{(start + (i + 1) * datetime.timedelta(hours=4)).isoformat()}"
                                     for i in range(12)]
    files = {
        root / "app.py": APP,
        root / "test_app.py": TEST,
        root / "README.md": README,
        root / "data" / "orders.jsonl": "\n".join(lines) + "\n",
        root / "data" / "spine.csv": "\n".join(spine) + "\n",
    }
    for path, text in files.items():
        path.write_text(text)
    return list(files)
