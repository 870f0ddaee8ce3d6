"""The image encoder: a timm backbone created by name (``in_chans``: one per image channel of
``data.channels``, one by default; no head) + a projection.

Architectures come from timm only, so the study's VGG-16 / Inception-v4 / ResNet-v2-50 and the small
CPU backbones are one string apart. Names and image sizes are checked on the *meta* device before any
weight is allocated, so a bad config fails in well under a second with the config key in the message.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

# The backbone of the default config (conf/train.yaml's backbone: test_resnet; held equal by a test).
DEFAULT_BACKBONE = "test_resnet"
# Largest size probed when searching a backbone's minimum input size.
_MAX_PROBE = 512


def backbone_spec(backbone: Any) -> dict[str, Any]:
    """``"resnet10t"`` or a ``backbone`` config mapping (``name``, ``pretrained``, ``drop_rate``) → dict."""
    if isinstance(backbone, str):
        return {"name": backbone}
    if isinstance(backbone, Mapping) or hasattr(backbone, "keys"):
        spec = {k: backbone[k] for k in backbone.keys()}
        if not spec.get("name"):
            raise ValueError(f"backbone.name is missing (got backbone={dict(spec)!r})")
        return spec
    raise ValueError(f"backbone.name must be a timm model name, got {backbone!r}")


def _close_matches(name: str, limit: int = 8) -> list[str]:
    found = timm.list_models(f"*{name}*")
    if not found:
        found = difflib.get_close_matches(name, timm.list_models(), n=limit, cutoff=0.6)
    return list(found)[:limit]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not timm.is_model(name):
        close = _close_matches(str(name))
        hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
        raise ValueError(f"backbone.name={name!r} is not a timm model ({hint})")


@lru_cache(maxsize=32)
def _meta_model(name: str, in_chans: int) -> nn.Module:
    """The architecture without weights (meta tensors): shape checks cost no memory or init time."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0)
    return model.eval()


def _meta_forward(model: nn.Module, in_chans: int, size: int) -> torch.Size | None:
    try:
        with torch.no_grad():
            return model(torch.zeros(1, in_chans, size, size, device="meta")).shape
    except Exception:  # too small a map, a ViT patch grid that does not fit, ...
        return None


@lru_cache(maxsize=64)
def min_image_size(name: str, in_chans: int = 1, above: int = 0) -> int | None:
    """Smallest square input the backbone accepts (doubling, then bisection on the meta device;
    assumes larger sizes keep working). ``above``: a size known to fail, to start the search from."""
    _check_name(name)
    model = _meta_model(name, in_chans)
    lo, hi = max(1, above + 1), max(2, 2 * above)
    while _meta_forward(model, in_chans, hi) is None:
        if hi >= _MAX_PROBE:
            return None
        lo, hi = hi + 1, min(_MAX_PROBE, 2 * hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if _meta_forward(model, in_chans, mid) is not None:
            hi = mid
        else:
            lo = mid + 1
    return lo


def check_backbone(backbone: Any, image_size: int, in_chans: int = 1) -> int:
    """Validate a backbone name and image size without building weights; returns the feature size.

    Raises ``ValueError`` naming ``backbone.name`` (with close matches) or ``data.image_size`` (with
    the smallest size that works), so a config error is caught before data or weights are loaded.
    """
    name = backbone_spec(backbone)["name"]
    _check_name(name)
    image_size = int(image_size)
    shape = _meta_forward(_meta_model(name, in_chans), in_chans, image_size)
    if shape is None:
        smallest = min_image_size(name, in_chans, above=image_size)
        if smallest is not None and smallest > image_size:
            need = f"needs at least {smallest} px"
        else:
            cfg = getattr(_meta_model(name, in_chans), "pretrained_cfg", {}) or {}
            need = f"does not accept this size (its default input is {cfg.get('input_size', '?')})"
        raise ValueError(f"data.image_size={image_size} is too small or unsupported for "
                         f"backbone.name={name!r}: it {need}")
    if len(shape) != 2:
        raise ValueError(f"backbone.name={name!r} returns features of shape {tuple(shape)}, "
                         "expected (batch, features) with num_classes=0")
    return int(shape[1])


class ImageEncoder(nn.Module):
    """timm backbone (``in_chans`` channels, pooled features) → Linear → optional L2 normalisation.

    ``pretrained=True`` asks timm for ImageNet weights (adapted to one channel by timm); it needs the
    network and is never the default.
    """

    def __init__(self, backbone: Any = DEFAULT_BACKBONE, embedding_dim: int = 256, pretrained: bool = False,
                 in_chans: int = 1, image_size: int = 64, normalize: bool = False,
                 drop_rate: float = 0.0):
        super().__init__()
        spec = backbone_spec(backbone)
        self.backbone_name = str(spec["name"])
        pretrained = bool(spec.get("pretrained", pretrained))
        drop_rate = float(spec.get("drop_rate", drop_rate))
        self.feature_dim = check_backbone(self.backbone_name, image_size, in_chans)
        self.embedding_dim = int(embedding_dim)
        self.image_size = int(image_size)
        self.normalize = bool(normalize)
        self.backbone = timm.create_model(self.backbone_name, pretrained=pretrained, in_chans=in_chans,
                                          num_classes=0, drop_rate=drop_rate)
        self.proj = nn.Linear(self.feature_dim, self.embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.proj(self.backbone(images))
        return F.normalize(z, dim=-1) if self.normalize else z
