"""What the job scripts the kill tests start (``kill_job.py``, ``ds_job.py``) print, and the
hook that holds a checkpoint between its data files and its manifest."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from volga.runtime import checkpoint as checkpoint_module

_PRINT = threading.Lock()


def say(line: str) -> None:
    """One whole line on stdout: the job's progress and the checkpoint writer are two
    threads, and ``print`` writes a line and its newline separately (interleaved, they
    made lines like ``rows 1053checkpointing``)."""
    with _PRINT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def pause_before_manifests(pause_s: float) -> None:
    """Say ``checkpointing`` once a checkpoint's data files are written, then wait
    ``pause_s`` before its manifest, so that a test can kill the job mid-checkpoint."""
    original = checkpoint_module._encode

    def encode(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        say("checkpointing")
        time.sleep(pause_s)
        return out

    checkpoint_module._encode = encode  # type: ignore[assignment]
