"""sketchembed: representation spaces for Quick, Draw! sketches (temporal + image views)."""

__version__ = "0.1.0"

from sketchembed.study import STUDY_CLASSES  # noqa: E402,F401  (defined once, there)
