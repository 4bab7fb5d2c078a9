from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepScores:
    """Per-step and per-sequence outputs of :func:`fastprm.ops.score_steps`.

    K is the total number of steps in the batch and B the number of sequences. Per-sequence reductions of a
    sequence with no step are NaN (``first_error`` is -1 and ``num_steps`` is 0).

    Attributes:
        step_logits: [K, C] float32 head logits of every step row (float64 for float64 inputs).
        step_probs: [K] float32 probability that each step is good.
        step_index: [K] int64 flat row of each step in the packed batch.
        cu_steps: [B + 1] int64 offsets of each sequence's steps in the K axis.
        num_steps: [B] int64 steps per sequence.
        min: [B] smallest step probability (the first NaN step, if any, wins).
        prod: [B] product of step probabilities, ``exp(log_prod)``.
        log_prod: [B] sum of log step probabilities, computed from the logits (never underflows).
        mean: [B] mean step probability.
        last: [B] probability of the last step.
        first_error: [B] int64 index within the sequence of the first step with probability < threshold, or -1.
    """

    step_logits: torch.Tensor
    step_probs: torch.Tensor
    step_index: torch.Tensor
    cu_steps: torch.Tensor
    num_steps: torch.Tensor
    min: torch.Tensor
    prod: torch.Tensor
    log_prod: torch.Tensor
    mean: torch.Tensor
    last: torch.Tensor
    first_error: torch.Tensor

    @classmethod
    def from_op_outputs(
        cls, outputs: tuple[torch.Tensor, ...], step_index: torch.Tensor, cu_steps: torch.Tensor
    ) -> StepScores:
        """Builds the result from the forward op's outputs (the trailing argmin is internal)."""
        step_logits, step_probs, min_, log_prod, mean, last, first_error = outputs[:7]
        return cls(
            step_logits=step_logits,
            step_probs=step_probs,
            step_index=step_index,
            cu_steps=cu_steps,
            num_steps=cu_steps[1:] - cu_steps[:-1],
            min=min_,
            prod=torch.exp(log_prod),
            log_prod=log_prod,
            mean=mean,
            last=last,
            first_error=first_error,
        )

    def per_sequence(self) -> list[torch.Tensor]:
        """The step probabilities split by sequence: B tensors of shape [num_steps[b]]."""
        return list(torch.split(self.step_probs, self.num_steps.tolist()))
