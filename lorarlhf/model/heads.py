"""Scalar heads on the Hydra's hidden states: per-token values (critic) and sequence rewards.

Both are a Linear H -> 1 kept in fp32 whatever the base's compute dtype: they are
tiny, and a reward or value in bf16 has ~3 significant digits, too few for
whitening advantages or a Bradley-Terry margin.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_ROLES = ("critic", "reward")


class ScalarHead(nn.Module):
    """Linear H -> 1 in fp32, weights drawn with std 1/(H+1) (as OpenRLHF does).

    With normalised hidden states (|h| ~ sqrt(H)) the first outputs are O(1/sqrt(H)), near zero: a
    critic that starts at V ~ 0 gives advantages ~ the reward itself instead of noise from a random head.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, dtype=torch.float32)
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # (..., H) -> (...)
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token of each row, for left or right padding.  # (B, T) -> (B,)"""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.bool()).argmax(dim=1)


def gather_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H): the hidden state of each row's last real token."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]
