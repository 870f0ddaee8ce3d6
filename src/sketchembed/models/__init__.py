"""The study's models; each is a SketchModule with ``embed(batch)`` and (classifiers) ``logits(batch)``.

Importing this package registers them in :data:`sketchembed.registry.MODELS` (config name → class).
"""

from sketchembed.models.base import SketchModule, check_compatible
from sketchembed.models.combined import CombinedModel
from sketchembed.models.direct import DirectImageModel
from sketchembed.models.lstm import LSTMModel
from sketchembed.models.triplet import TripletImageModel
from sketchembed.registry import MODELS

__all__ = ["MODELS", "CombinedModel", "DirectImageModel", "LSTMModel", "SketchModule",
           "TripletImageModel", "check_compatible"]
