"""The study's models; each is a SketchModule with ``embed(batch)`` and (classifiers) ``logits(batch)``.

Importing this package registers them in :data:`sketchembed.registry.MODELS` (config name → class).
Checkpoints are opened by :mod:`sketchembed.models.checkpoint` (``open_checkpoint``), the one home
of reading them.
"""

from sketchembed.models.base import SketchModule, check_compatible
from sketchembed.models.checkpoint import Loaded, ModelRecord, PartRecord, open_checkpoint, read_checkpoint
from sketchembed.models.combined import CombinedModel
from sketchembed.models.direct import DirectImageModel
from sketchembed.models.lstm import LSTMModel
from sketchembed.models.optim import warmup_cosine
from sketchembed.models.triplet import TripletImageModel
from sketchembed.registry import MODELS

__all__ = ["MODELS", "CombinedModel", "DirectImageModel", "LSTMModel", "Loaded", "ModelRecord", "PartRecord",
           "SketchModule", "TripletImageModel", "check_compatible", "open_checkpoint", "read_checkpoint",
           "warmup_cosine"]
