"""The study's models; each is a SketchModule with ``embed(batch)`` and (classifiers) ``logits(batch)``."""

from sketchembed.models.base import SketchModule, check_compatible
from sketchembed.models.combined import CombinedModel
from sketchembed.models.direct import DirectImageModel
from sketchembed.models.lstm import LSTMModel
from sketchembed.models.triplet import TripletImageModel

# Config names (model=...) → classes.
MODELS = {
    "triplet": TripletImageModel,
    "direct": DirectImageModel,
    "lstm": LSTMModel,
    "combined": CombinedModel,
}

__all__ = ["MODELS", "CombinedModel", "DirectImageModel", "LSTMModel", "SketchModule",
           "TripletImageModel", "check_compatible"]
