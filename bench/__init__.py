"""`make bench`: speed and memory figures, each beside its reference measured in the same run."""

from __future__ import annotations

import json
from pathlib import Path


def save_json(path: Path | None, results) -> None:
    """Write a section's figures to ``path`` (``--json``); nothing when it is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
