"""sketchembed: representation spaces for Quick, Draw! sketches (temporal + image views)."""

__version__ = "0.1.0"

STUDY_CLASSES = (
    "apple", "pear", "blackberry", "grapes", "banana",
    "bus", "van", "truck", "airplane", "helicopter",
)
