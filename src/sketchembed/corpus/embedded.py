"""Prepared datasets shipped inside the package (real drawings, CC BY 4.0 Google).

They let every command, test and demo run on real Quick, Draw! drawings with nothing downloaded:
``study10`` (the ten study classes) and ``others335`` (the other 335 categories, for pre-training).
See ``resources/quickdraw/README.md`` for counts and the command that rebuilds them.
"""

from __future__ import annotations

from pathlib import Path

from sketchembed.corpus.store import PreparedDataset

EMBEDDED_ROOT = Path(__file__).resolve().parents[1] / "resources" / "quickdraw"
EMBEDDED_NAMES = ("study10", "others335")
REBUILD = "python scripts/build_embedded_data.py"


def embedded_dataset_path(name: str) -> Path:
    """Directory of an embedded prepared dataset; a clear error if the name is unknown or it is missing."""
    if name not in EMBEDDED_NAMES:
        raise ValueError(f"unknown embedded dataset {name!r} (choose from {', '.join(EMBEDDED_NAMES)})")
    path = EMBEDDED_ROOT / name
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"embedded dataset {name!r} is missing at {path} "
                                f"(rebuild it with `{REBUILD}` from ../shared/quickdraw)")
    return path


def resolve_root(root) -> Path:
    """An embedded set's name (``study10``, ``others335``) or a prepared dataset's directory: the one
    resolution of a ``data.root`` / ``--data`` value."""
    if str(root) in EMBEDDED_NAMES:
        return embedded_dataset_path(str(root))
    return Path(root)


def open_embedded(name: str) -> PreparedDataset:
    """The embedded dataset as a :class:`~sketchembed.corpus.store.PreparedDataset`."""
    return PreparedDataset(embedded_dataset_path(name))
