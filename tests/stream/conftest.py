import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # stream_runs: the runs every test is parametrized over
