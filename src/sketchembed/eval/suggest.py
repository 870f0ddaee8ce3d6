"""Suggestions: the drawings of an index nearest to a (possibly unfinished) sketch, and the check that
the index was built by the same model (`sketchembed suggest` is :mod:`sketchembed.commands.suggest`;
the studio suggests with the same functions).

The sketch is embedded at its last stroke end — the same place every model reads its prediction —
so a half-drawn sketch gets suggestions for what it looks like so far; ``fraction`` cuts a
finished one to try that out.
"""

from __future__ import annotations

from sketchembed.data.inputs import InputSettings
from sketchembed.eval.embed import embed_points


def check_index_matches(index, ckpt_path, ckpt_sha256: str, allow_mismatch: bool = False) -> str | None:
    """Error (or, with ``allow_mismatch``, a warning returned) when the index was built by another model."""
    if not index.ckpt_sha256 or index.ckpt_sha256 == ckpt_sha256:
        return None
    msg = (f"index was built with checkpoint {index.ckpt_path or '?'} (sha256 {index.ckpt_sha256[:12]}…), "
           f"not {ckpt_path} (sha256 {ckpt_sha256[:12]}…): distances across two embedding spaces mean nothing; "
           f"rebuild it with `sketchembed index build`")
    if not allow_mismatch:
        raise ValueError(msg)
    return "warning: " + msg


def suggest(model, index, points, inputs: InputSettings, *, k: int = 8, fraction: float = 1.0, device=None):
    """``(idx, dist, shown_points)``: the ``k`` nearest indexed drawings of ``points`` cut at ``fraction``
    (``inputs``: the model's input settings, :func:`~sketchembed.data.inputs.read_inputs`)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    emb, _, pts, lengths = embed_points(model, [points], inputs, fraction=fraction, device=device)
    idx, dist = index.query(emb, k)
    return idx[0], dist[0], pts[0, :lengths[0]]
