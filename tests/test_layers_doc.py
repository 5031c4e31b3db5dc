"""The README's layer list is the import-linter contract CI enforces (same names, same order)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def readme_layers() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## How it works") :]
    block = section[section.index("```\nvolga/\n") + len("```\nvolga/\n") :]
    block = block[: block.index("```")]
    # A layer line starts with two spaces; a wider indent continues the description above.
    return [re.split(r"\s{2,}", line.strip())[0] for line in block.splitlines() if re.match(r"^  \S", line)]


def test_readme_layers_are_the_import_linter_contract() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["id"] == "layers"]
    assert readme_layers() == contract["layers"], "README 'How it works' and pyproject's layers contract differ"
    assert contract["exhaustive"], "every volga subpackage must be placed in a layer"
