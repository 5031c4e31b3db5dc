"""The README's quickstart runs as pasted: its python block is extracted and run in a
fresh directory, in its own process, and must print the feature rows it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def quickstart_block() -> str:
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's Quickstart section"
    return match.group(1)


def test_readme_quickstart_runs_as_pasted(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart_block())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "avg_spent_7d" in out and "num_purchases_1h" in out  # the offline tail
    assert out.count("UserSpentInfo(user_id='7'") == 2  # the online store, after offline and after online
    assert "{'user_spent': 666}" in out  # the online job's output rows: the 666 ON_SALE orders
    assert (tmp_path / "orders.parquet").exists()


def test_readme_links_its_own_semantics_document() -> None:
    text = README.read_text()
    assert "../shared/" not in text
    assert "(docs/semantics.md)" in text and (ROOT / "docs" / "semantics.md").exists()
    semantics = (ROOT / "docs" / "semantics.md").read_text()
    for heading in ("## Windowed aggregation", "## As-of join", "## Request-time values", "## Worked examples",
                    "## Nullability and declared types"):
        assert heading in semantics


def test_readme_documents_the_file_sources_and_list_sink() -> None:
    text = README.read_text()
    for name in ("CsvSource(", "JsonLinesSource(", "ParquetSource(", "ListSink"):
        assert name in text, name
