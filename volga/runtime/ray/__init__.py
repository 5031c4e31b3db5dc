"""The distributed runtime: Volga jobs on Ray actors (needs the ``volga[ray]`` extra)."""
