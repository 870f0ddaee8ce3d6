"""Network parts shared by the models: the timm image encoder and the stroke LSTM."""

from sketchembed.nets.backbone import ImageEncoder, check_backbone, min_image_size
from sketchembed.nets.sequence import SequenceEncoder, gather_states, last_states, stroke_end_positions, valid_positions

__all__ = ["ImageEncoder", "SequenceEncoder", "check_backbone", "gather_states", "last_states",
           "min_image_size", "stroke_end_positions", "valid_positions"]
