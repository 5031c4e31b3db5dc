"""checkpoint_dir as an S3-compatible URL (a moto server started by the fixture)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from volga.runtime.checkpoint import CheckpointStore

from .helpers import run, stores

pytestmark = pytest.mark.integration


def test_a_job_checkpoints_to_s3_and_a_rerun_resumes_from_there(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"ckpt-{uuid.uuid4().hex[:8]}"
    s3 = pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1", allow_bucket_creation=True)
    s3.create_dir(bucket)
    url = f"s3://{bucket}/jobs/quickstart?endpoint_override={s3_endpoint.removeprefix('http://')}&scheme=http&region=us-east-1"

    client, job = run(tmp_path / "first", checkpoint_dir=url, checkpoint_interval="200ms")
    store = CheckpointStore(url)
    ids = store.ids()
    assert 1 <= len(ids) <= 3
    names = {i.base_name for i in s3.get_file_info(pafs.FileSelector(f"{bucket}/jobs/quickstart"))}
    assert f"chk-{ids[-1]:06d}.json" in names and not any(n.endswith(".tmp") for n in names)
    latest = store.latest()
    assert latest is not None and latest.state["sink"]["written"]["user_spent"] == job.metrics.rows_out["user_spent"]

    # A new process (empty memory store, new offline dir) resumes from S3: the store comes back.
    again, _ = run(tmp_path / "second", checkpoint_dir=url)
    assert stores(again)[1].equals(stores(client)[1])


def test_an_unusable_checkpoint_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_dir 'nope://x' cannot be used"):
        run(tmp_path, checkpoint_dir="nope://x")
