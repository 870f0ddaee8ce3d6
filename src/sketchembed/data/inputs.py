"""The input settings of a model: one frozen object that travels with it (timm's ``pretrained_cfg``).

A trained model only makes sense with the inputs it was trained on: how a drawing becomes an image
(size, line width, padding, canvas, background, standardisation, channels), how it becomes a sequence
(``seq_norm``, ``seq_origin`` and the train split's ``seq_std``), how it is truncated
(``fraction_rule``, ``eval_fractions``), how many snapshots are served, and the class names.

* The defaults live here, once: ``conf/data/quickdraw.yaml`` states the same values
  (tests/test_datamodule.py holds them equal) and the DataModule, the collate and the rasterizer
  take theirs from :data:`DEFAULTS`.
* Validation lives here, once (:func:`check`): one ``ValueError`` naming the config key.
* :class:`~sketchembed.data.datamodule.SketchDataModule` builds one from its config and saves it,
  with ``seq_std`` and the classes, as its ``state_dict``, so every checkpoint carries it.
* :func:`read_inputs` is the one reader (also of checkpoints written before this object existed);
  eval, ``index build``, ``suggest``, the studio and bench build their collate
  (``SketchCollate.from_inputs``), rasterizer (``Rasterizer.from_inputs``) or DataModule
  (``SketchDataModule.from_inputs``) from what it returns.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sketchembed.metric_keys import fraction_tag  # noqa: F401  (re-exported: defined with the metric keys)

BACKGROUNDS = ("black", "white")
FRACTION_RULES = ("ceil", "study")
SEQ_NORMS = ("std", "none")
# What each image channel shows (raster.py, "Channels"): ink coverage; the stroke order (later strokes
# brighter); the time (later points brighter). Both fades are relative to what is drawn so far.
CHANNELS = ("ink", "order", "time")

#: The largest ``image_size``: 4x the 256-unit canvas the drawings live on (a larger image shows no
#: more of them) and the largest input of any timm pretrained model (1024, timm 1.0). Far larger
#: sizes asked for terabytes in the rasterizer before anything said why.
MAX_IMAGE_SIZE = 1024
# Lightning keeps a DataModule's state_dict in the checkpoint under its class name.
CHECKPOINT_KEY = "SketchDataModule"
# Marks the state of a checkpoint that holds the whole settings (older ones hold seq_std + classes).
FORMAT_KEY = "input_settings_format"
FORMAT = 1


def int_at_least(low: int, *, none_below: bool = False, high: int | None = None):
    def check(key, v):
        if v is None and none_below:
            return None
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) and not (isinstance(v, float) and v.is_integer()):
            raise ValueError(f"data.{key} must be an integer{' or null' if none_below else ''}, got {v!r}")
        if int(v) < low:
            if none_below:  # 0 or less: no cap (every snapshot), as null
                return None
            raise ValueError(f"data.{key} must be >= {low}, got {v!r}")
        if high is not None and int(v) > high:
            raise ValueError(f"data.{key} must be <= {high}, got {v!r}")
        return int(v)
    return check


def number(rule: str, ok):
    """A number (not a bool, not a string that reads as one: a quoted config value is a mistake)."""
    def check(key, v):
        f = float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else float("nan")
        if not ok(f):
            raise ValueError(f"data.{key} must be a number {rule}, got {v!r}")
        return f
    return check


def one_of(choices: tuple):
    def check(key, v):
        if v not in choices:
            raise ValueError(f"data.{key} must be one of {choices}, got {v!r}")
        return v
    return check


def boolean(key, v):
    if not isinstance(v, bool):
        raise ValueError(f"data.{key} must be true or false, got {v!r}")
    return v


def optional(check):
    """``check`` that also takes null (None): a setting whose absence means something (no cap, the default)."""
    def checked(key, v):
        return None if v is None else check(key, v)
    return checked


def _origin(key, v):
    try:
        x, y = (float(c) for c in v)
    except (TypeError, ValueError):
        raise ValueError(f"data.{key} must be two numbers [x, y], got {v!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"data.{key} must be finite, got {v!r}")
    return x, y


def _fractions(key, v):
    try:
        fr = tuple(float(f) for f in v)
    except (TypeError, ValueError):
        fr = ()
    if not fr or fr[0] != 1.0 or not all(0 < f <= 1 for f in fr):
        raise ValueError(f"data.{key} must start with 1.0 (dataloader 0 = whole drawings), each in (0, 1]; got {v!r}")
    return fr


def _channels(key, v):
    names = [v] if isinstance(v, str) else v
    try:
        names = tuple(names)
    except TypeError:
        names = ()
    bad = [c for c in names if c not in CHANNELS]
    if not names or bad or len(set(names)) != len(names):
        why = f"unknown channel {bad[0]!r}" if bad else "each named once, at least one"
        raise ValueError(f"data.{key} must be a list of channels from {list(CHANNELS)} ({why}), got {v!r}")
    return names


def _classes(key, v):
    if v is None:
        return None
    if isinstance(v, str) or not all(isinstance(c, str) and c for c in v):
        raise ValueError(f"{key} must be a list of class names, got {str(v)[:80]!r}")
    return tuple(v)


_CHECKS = {
    "image_size": int_at_least(1, high=MAX_IMAGE_SIZE),
    "line_width": number("> 0", lambda f: f > 0),
    "padding": number(">= 0", lambda f: f >= 0),
    "canvas": number("> 0", lambda f: f > 0),
    "background": one_of(BACKGROUNDS),
    "standardize": boolean,
    "channels": _channels,
    "max_snapshots": int_at_least(1, none_below=True),
    "fraction_rule": one_of(FRACTION_RULES),
    "seq_norm": one_of(SEQ_NORMS),
    "seq_origin": _origin,
    "eval_fractions": _fractions,
    "seq_std": optional(number("> 0", lambda f: f > 0)),
    "classes": _classes,
}


def check(key: str, value: Any):
    """``value`` of input setting ``key``, normalised (ints, floats, tuples), or one ``ValueError``
    naming ``data.<key>``. The one validation of these values (the rasterizer and collate use it)."""
    return _CHECKS[key](key, value)


@dataclass(frozen=True)
class InputSettings:
    """What turns a drawing's points into a model's inputs (module docstring). Frozen and validated.

    ``seq_std`` and ``classes`` come from the train split (None until a DataModule computed them);
    the other fields are the ``data`` config's (:attr:`RECIPE`)."""

    image_size: int = 64
    line_width: float = 8.0         # canvas units: a drawing looks alike at every image_size
    padding: float = 4.5            # canvas units (8 and 4.5: the classic 265-unit canvas)
    canvas: float = 256.0
    background: str = "black"       # black: white ink on black (coverage); white: the study's
    standardize: bool = False       # per-image (x - mean) / std (the study)
    channels: tuple[str, ...] = ("ink",)  # image channels (CHANNELS); the CNN's in_chans is their count
    max_snapshots: int | None = 8   # None: a snapshot at every stroke end
    fraction_rule: str = "ceil"
    seq_norm: str = "std"
    seq_origin: tuple[float, float] = (0.0, 0.0)
    eval_fractions: tuple[float, ...] = (1.0, 0.5)
    seq_std: float | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check(f.name, getattr(self, f.name)))

    def recipe(self) -> dict:
        """The settings the ``data`` config sets (keyword arguments of ``SketchDataModule``)."""
        return {k: getattr(self, k) for k in RECIPE}

    def replace(self, **changes) -> InputSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain values (lists, no tuples) for a checkpoint or JSON, marked with :data:`FORMAT`."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        return {FORMAT_KEY: FORMAT, **out}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "input settings") -> InputSettings:
        """The inverse of :meth:`to_dict`; an unknown key or a bad value is one line naming ``where``."""
        d = {k: v for k, v in d.items() if k != FORMAT_KEY}
        unknown = sorted(set(d) - set(FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown input settings {unknown} (this code knows {list(FIELDS)})")
        try:
            return cls(**d)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


FIELDS = tuple(f.name for f in dataclasses.fields(InputSettings))
RECIPE = tuple(k for k in FIELDS if k not in ("seq_std", "classes"))
DEFAULTS = InputSettings()


def read_inputs(ckpt: Mapping, where="checkpoint") -> InputSettings:
    """The input settings a checkpoint's model was trained with: the one reader.

    Reads the DataModule state of the checkpoint (:data:`CHECKPOINT_KEY`). Checkpoints written before
    the state held the whole settings (it held ``seq_std`` and ``classes``; the rest was in the
    DataModule's hyperparameters) are read the same way, a setting they do not record being the
    default of the time (the defaults have not changed; ``channels`` came later: ``[ink]``, the only
    image of the time)."""
    state = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(state, Mapping) or not state.get("seq_std"):
        raise ValueError(f"{where}: checkpoint carries no data state (the input settings with seq_std): not a "
                         "sketchembed training checkpoint (trained with SketchDataModule)")
    if FORMAT_KEY in state:
        if state[FORMAT_KEY] != FORMAT:
            raise ValueError(f"{where}: input settings of format {state[FORMAT_KEY]!r}; this code reads {FORMAT}")
        return InputSettings.from_dict(state, where)
    hp = ckpt.get("datamodule_hyper_parameters") or {}
    hp = hp if isinstance(hp, Mapping) else {}
    old = {k: hp[k] for k in RECIPE if k in hp}
    return InputSettings.from_dict({**old, "seq_std": state["seq_std"], "classes": state.get("classes")}, where)


# ------------------------------------------------------------------------------------- truncation
def keep_count(n: int, fraction: float, rule: str = DEFAULTS.fraction_rule) -> int:
    """Points of the sequence kept at ``fraction`` (``fraction_rule``; datamodule docstring,
    "Truncation"): ``ceil``: ceil(f * n), at least 2; ``study``: floor(f * (n - 1)) + 1. Never more than n.

    The 1e-9 guards against float noise (0.3 * 10 = 3.0000000000000004 must keep 3)."""
    if rule == "study":
        return min(n, math.floor(fraction * (n - 1) + 1e-9) + 1)
    return min(n, max(2, math.ceil(fraction * n - 1e-9)))


def image_count(n: int, fraction: float, rule: str = DEFAULTS.fraction_rule) -> int:
    """Points the image shows at ``fraction``: as :func:`keep_count`, except ``study``: floor(f * n),
    at least 1 (the study's ``length // 2`` would leave a one-point drawing blank)."""
    if rule == "study":
        return min(n, max(1, math.floor(fraction * n + 1e-9)))
    return keep_count(n, fraction, rule)
