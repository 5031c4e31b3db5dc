"""The app ``volga historical`` loads in the CLI test: the training definitions and a
client whose offline store lives where the test put its rows."""

import os

from training_defs import boosted, combo, level, recent, scaled, stats, windowed  # noqa: F401 - registered by name

import volga

client = volga.Client(data_dir=os.environ["VOLGA_TRAINING_TEST_DIR"])
