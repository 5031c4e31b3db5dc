"""The app ``volga serve`` is tested with: serving definitions over the in-memory store."""

import tempfile

import serving_defs
from serving_defs import spend_trend, user_offer, user_spent, user_stats, window_spend  # noqa: F401  (served)

client = serving_defs.make_client(tempfile.mkdtemp(prefix="volga-cli-app-"))
