"""The temporal encoder: stacked LSTMs over ``seq`` (dx, dy, pen_up), and reading states at positions.

Every state is returned (not just the last) because the study classifies at every stroke end and the
combined model pairs each stroke-end state with that stroke end's snapshot.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class SequenceEncoder(nn.Module):
    """``(B, T, input_dim)`` + lengths → all hidden states of the top layer ``(B, T, hidden)``.

    Packed sequences make padded steps cost nothing and leave the states of shorter drawings
    untouched by padding; states past a drawing's length are zero.
    """

    def __init__(self, input_dim: int = 3, hidden: int = 256, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.hidden = int(hidden)
        self.lstm = nn.LSTM(int(input_dim), self.hidden, num_layers=int(layers), batch_first=True,
                            dropout=float(dropout) if layers > 1 else 0.0)

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if seq.ndim != 3:
            raise ValueError(f"seq must be (B, T, {self.lstm.input_size}), got {tuple(seq.shape)}")
        if torch.compiler.is_exporting():
            # An exported graph (`sketchembed export`) runs unpacked, as packing needs the lengths on the
            # host: a one-way LSTM's states up to a drawing's last point never see the padding after it,
            # and only those are read (states past the length are not zero here).
            return self.lstm(seq)[0]
        lengths_cpu = lengths.detach().to("cpu", torch.int64)
        if len(lengths_cpu) and int(lengths_cpu.min()) < 1:
            raise ValueError("lengths: every drawing needs at least one point")
        packed = pack_padded_sequence(seq, lengths_cpu, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=seq.shape[1])
        return states


def gather_states(states: torch.Tensor, batch_idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """States at ``(batch_idx[m], pos[m])`` → ``(M, H)`` (e.g. ``snap_batch``, ``snap_pos``)."""
    return states[batch_idx, pos]


def last_states(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """State at each drawing's last point (= its last stroke end) → ``(B, H)``."""
    idx = torch.arange(states.shape[0], device=states.device)
    return states[idx, lengths.to(states.device) - 1]


def stroke_end_positions(stroke_ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``stroke_ends`` ``(B, S)`` padded with -1 → (batch index, point index) of every stroke end."""
    b, s = torch.nonzero(stroke_ends >= 0, as_tuple=True)
    return b, stroke_ends[b, s]


def valid_positions(lengths: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, point index) of every real (non-padding) point."""
    mask = torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
    return torch.nonzero(mask, as_tuple=True)
