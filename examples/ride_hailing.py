"""Ride-hailing: each driver's latest position, demand and supply per zone, a zone surge
multiplier, and a pickup distance/ETA computed at request time (haversine) from the
rider's coordinates sent with the request.

Run it with ``.venv/bin/python examples/ride_hailing.py`` (a few seconds, nothing left on
disk). The rider stands next to driver ``d3``: it ranks first; zone ``centre`` has five
times the requests of ``airport`` for the same drivers, so it surges and ``airport``
does not.
"""

import datetime
import math
import random
import tempfile
from typing import Optional

import volga
from volga import Count, CountDistinct, Entity, Last, entity, field, on_demand, pipeline, source
from volga.sources import MemorySource

# The last hour of driver pings and ride requests. A ride is requested at ASKED_AT (now):
# features are evaluated at that request time (`at=`; without it, at the current time).
ASKED_AT = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
START = ASKED_AT - datetime.timedelta(minutes=60)
RIDER = (52.5200, 13.4050)  # the rider's position, sent with the request
ZONES = {"centre": (52.5200, 13.4050), "airport": (52.3667, 13.5033)}


@entity
class DriverPing:
    driver_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    zone: str
    lat: float
    lon: float


@entity
class RideRequest:
    request_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    zone: str


@entity
class DriverLocation:
    driver_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    lat: float
    lon: float
    pings_1h: int


@entity
class ZoneDemand:
    zone: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    requests_15m: int


@entity
class ZoneSupply:
    zone: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    drivers_15m: int


def make_data(seed: int = 3) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    pings = []
    for d in range(8):
        zone = "centre" if d % 2 else "airport"
        lat0, lon0 = ZONES[zone]
        if d == 3:  # d3 waits a street away from the rider
            lat0, lon0 = RIDER[0] + 0.002, RIDER[1] - 0.001
        for minute in range(0, 60, 2):  # a ping every two minutes, drifting a little
            pings.append({"driver_id": f"d{d}", "at": START + datetime.timedelta(minutes=minute, seconds=d),
                          "zone": zone, "lat": lat0 + rng.uniform(-0.01, 0.01) * (d != 3),
                          "lon": lon0 + rng.uniform(-0.01, 0.01) * (d != 3)})
    requests = []
    for i in range(60):  # in the last 15 minutes: 50 requests in the centre, 10 at the airport
        zone = "centre" if i % 6 else "airport"
        requests.append({"request_id": f"r{i}", "at": START + datetime.timedelta(minutes=45, seconds=15 * i), "zone": zone})
    return sorted(pings, key=lambda r: r["at"]), requests


PINGS, REQUESTS = make_data()


@source(DriverPing)
def driver_pings() -> volga.Source:
    return MemorySource(PINGS)


@source(RideRequest)
def ride_requests() -> volga.Source:
    return MemorySource(REQUESTS)


@pipeline(dependencies=[driver_pings], output=DriverLocation)
def driver_location(p: Entity) -> Entity:
    return p.group_by("driver_id").aggregate([
        Last(on="lat", into="lat"), Last(on="lon", into="lon"), Count(window="1h", into="pings_1h"),
    ])


@pipeline(dependencies=[ride_requests], output=ZoneDemand)
def zone_demand(r: Entity) -> Entity:
    return r.group_by("zone").aggregate([Count(window="15m", into="requests_15m")])


@pipeline(dependencies=[driver_pings], output=ZoneSupply)
def zone_supply(p: Entity) -> Entity:
    return p.group_by("zone").aggregate([CountDistinct(on="driver_id", window="15m", into="drivers_15m")])


@entity
class ZoneSurge:
    zone: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    requests_15m: int
    drivers_15m: int
    multiplier: float


@on_demand(dependencies=[zone_demand, zone_supply])
def zone_surge(demand: Optional[ZoneDemand], supply: Optional[ZoneSupply], zone: str) -> Optional[ZoneSurge]:
    """Surge = requests per available driver over the last 15 minutes, between 1x and 3x."""
    if demand is None and supply is None:
        return None
    requests = demand.requests_15m if demand else 0
    drivers = supply.drivers_15m if supply else 0
    ratio = requests / max(drivers, 1)
    at = max(x.at for x in (demand, supply) if x is not None)
    return ZoneSurge(zone=zone, at=at, requests_15m=requests, drivers_15m=drivers,
                     multiplier=round(min(3.0, max(1.0, ratio / 4)), 2))


@entity
class PickupEta:
    driver_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    distance_km: float
    eta_min: float


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


@on_demand(dependencies=[driver_location])
def pickup_eta(loc: DriverLocation, rider_lat: float = 0.0, rider_lon: float = 0.0, speed_kmh: float = 25.0) -> PickupEta:
    """Distance from the driver's latest position to the rider's (request arguments)."""
    km = haversine_km(loc.lat, loc.lon, rider_lat, rider_lon)
    return PickupEta(driver_id=loc.driver_id, at=loc.at, distance_km=round(km, 3), eta_min=round(km / speed_kmh * 60, 1))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="volga_rides_") as data_dir:
        client = volga.Client(data_dir=data_dir)
        # online: the pings and requests stream through the engine into the online store
        client.materialize([driver_location, zone_demand, zone_supply], mode="online")
        drivers = [{"driver_id": f"d{d}"} for d in range(8)]
        rider = {"rider_lat": RIDER[0], "rider_lon": RIDER[1]}
        etas = [e for e in client.get_on_demand("pickup_eta", drivers, args={"pickup_eta": rider}, at=ASKED_AT) if e is not None]
        for e in sorted(etas, key=lambda e: e.distance_km)[:3]:
            print(f"driver {e.driver_id}: {e.distance_km:6.3f} km, ETA {e.eta_min:4.1f} min")
        print("nearest driver:", min(etas, key=lambda e: e.distance_km).driver_id)
        for s in client.get_on_demand("zone_surge", [{"zone": "centre"}, {"zone": "airport"}, {"zone": "harbour"}], at=ASKED_AT):
            if s is None:
                print("zone harbour: no data")
            else:
                print(f"zone {s.zone}: {s.requests_15m} requests / {s.drivers_15m} drivers in 15 min -> surge x{s.multiplier}")


if __name__ == "__main__":
    main()
