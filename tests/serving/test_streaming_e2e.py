"""Acceptance: a streaming job materializes into the online store while a client polls the
server; per key, values never go backwards in time, and the final values equal the batch
result for the same events."""

from __future__ import annotations

import threading

import serving_defs as defs
from serving_defs import N_USERS, START

import volga
from volga.testing.data import make_orders

USERS = [{"user_id": str(i)} for i in range(N_USERS)] + [{"user_id": "999"}]


def test_polling_the_server_while_streaming(tmp_path):
    orders = make_orders(3000, n_users=N_USERS, start=START, days=1, seed=11)
    live = volga.Client(data_dir=tmp_path / "live")
    live.register(*defs.ON_DEMAND)
    seen: dict[str, list] = {k["user_id"]: [] for k in USERS}
    polls = 0
    failures: list[BaseException] = []
    streaming_done = threading.Event()

    with live.serve(port=0) as server:
        poller_client = volga.OnDemandClient(server.url, timeout=10)

        def poll() -> None:
            nonlocal polls
            try:
                while not streaming_done.is_set():
                    rows = poller_client.request(["user_stats"], {"user_stats": USERS})["user_stats"]
                    polls += 1
                    for k, row in zip(USERS, rows):
                        if row is not None:
                            seen[k["user_id"]].append((row["timestamp"], row["total_spent"]))
            except BaseException as e:  # reported by the main thread
                failures.append(e)

        poller = threading.Thread(target=poll)
        poller.start()
        job = live.materialize(
            [defs.user_spent], mode="online", params={"orders": orders, "rate_per_s": 6000}, block=False, batch_size=100
        )
        job.wait()
        streaming_done.set()
        poller.join(10)
        assert not failures, failures
        final = volga.OnDemandClient(server.url).request(["user_stats"], keys=USERS)["user_stats"]

    assert polls >= 5
    changing = [u for u, values in seen.items() if len({t for t, _ in values}) >= 3]
    assert changing, "the poller should have seen values change while the job streamed"
    for user, values in seen.items():
        times = [t for t, _ in values]
        assert times == sorted(times), f"user {user}: a served value went back in time"

    batch = volga.Client(data_dir=tmp_path / "batch")
    batch.register(*defs.ON_DEMAND)
    batch.materialize([defs.user_spent], mode="offline", write_online=True, params={"orders": orders})
    expected = batch.get_on_demand("user_stats", USERS)
    assert final[-1] is None and expected[-1] is None
    for got, want in zip(final, expected):
        if want is None:
            assert got is None
        else:
            assert got == {"user_id": want.user_id, "timestamp": want.timestamp, "total_spent": want.total_spent,
                           "purchase_count": want.purchase_count}
            assert seen[want.user_id][-1][0] <= want.timestamp
