"""PRM heads: the weights that turn a step's hidden row into class logits, feeding the fused op.

Each head exposes ``project(hidden, step_index) -> (rows, row_index, weight, bias)``: the rows and the final
[C, H] linear layer handed to :func:`fastprm.ops.score_steps`. A linear head passes the backbone rows
untouched (the op gathers the step rows itself); the MLP head first runs its hidden layer on the step rows
only, never on every token.
"""

from __future__ import annotations

import torch
from torch import nn

from .conventions import LINEAR, LM_PAIR, MLP, Convention


class LinearHead(nn.Module):
    """Linear(H, C): token-classification PRMs (C = 2) and value heads (C = 1)."""

    def __init__(self, hidden_size: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.out = nn.Linear(hidden_size, num_classes, bias=bias)

    def project(self, hidden: torch.Tensor, step_index: torch.Tensor):
        return hidden, step_index, self.out.weight, self.out.bias


class MLPHead(nn.Module):
    """Linear(H, H) -> ReLU -> Linear(H, C) (Qwen2.5-Math-PRM), applied to the step rows only."""

    def __init__(self, hidden_size: int, num_classes: int = 2):
        super().__init__()
        self.hidden = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, num_classes)

    def project(self, hidden: torch.Tensor, step_index: torch.Tensor):
        rows = torch.relu(self.hidden(hidden[step_index]))
        return rows, torch.arange(rows.shape[0], device=rows.device), self.out.weight, self.out.bias


class LMPairHead(nn.Module):
    """Two rows of a causal LM head, [good, bad]: P(good) is a softmax over just those two logits.

    Equal to the model card recipe (full-vocabulary logits, then the two columns) without ever computing
    the other vocabulary logits.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.out = nn.Linear(hidden_size, 2, bias=False)

    def project(self, hidden: torch.Tensor, step_index: torch.Tensor):
        return hidden, step_index, self.out.weight, None


def build_head(convention: Convention, hidden_size: int, num_classes: int) -> nn.Module:
    if convention.head == MLP:
        return MLPHead(hidden_size, num_classes)
    if convention.head == LINEAR:
        return LinearHead(hidden_size, num_classes)
    if convention.head == LM_PAIR:
        return LMPairHead(hidden_size)
    raise ValueError(f"unknown head kind {convention.head!r}")
