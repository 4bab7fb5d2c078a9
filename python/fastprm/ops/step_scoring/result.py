"""The result of :func:`fastprm.ops.score_steps`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepScores:
    """Per-step and per-sequence outputs of :func:`fastprm.ops.score_steps`.

    K is the total number of steps in the batch and B the number of sequences. Per-sequence reductions of a
    sequence with no step are NaN (``first_error`` is -1 and ``num_steps`` is 0). Floats are float32 (float64
    for float64 inputs).

    A step whose probability is NaN (from a NaN or inf in its hidden row or in the head) is never correct: it
    is that sequence's ``first_error`` unless an earlier step already is, it is the ``min``, and ``log_prod``,
    ``prod`` and ``mean`` of its sequence are NaN. Other sequences are unaffected.

    Attributes:
        step_logits: [K, C] head logits of every step row.
        step_probs: [K] probability that each step is good.
        step_index: [K] int64 flat row of each step in the packed batch; None in rows mode (step k is row k
            of the [K, H] hidden states that were scored).
        cu_steps: [B + 1] int64 offsets of each sequence's steps in the K axis.
        num_steps: [B] int64 steps per sequence.
        min: [B] smallest step probability (the first NaN step, if any, wins; the first of tied minima
            otherwise, and only that step gets the gradient).
        prod: [B] product of step probabilities, ``exp(log_prod)``.
        log_prod: [B] sum of log step probabilities, computed from the logits (never underflows).
        mean: [B] mean step probability.
        last: [B] probability of the last step.
        first_error: [B] int64 index within the sequence of the first step whose probability is below the
            threshold or NaN, or -1 when there is none.
    """

    step_logits: torch.Tensor
    step_probs: torch.Tensor
    step_index: torch.Tensor | None
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
        cls, outputs: tuple[torch.Tensor, ...], step_index: torch.Tensor | None, cu_steps: torch.Tensor
    ) -> StepScores:
        """Builds the result from the outputs of ``fastprm::score_steps_forward`` (its trailing argmin is
        internal: the backward's record of which step is the min)."""
        step_logits, step_probs, min_, log_prod, prod, mean, last, first_error, num_steps, _argmin = outputs
        return cls(
            step_logits=step_logits,
            step_probs=step_probs,
            step_index=step_index,
            cu_steps=cu_steps,
            num_steps=num_steps,
            min=min_,
            prod=prod,
            log_prod=log_prod,
            mean=mean,
            last=last,
            first_error=first_error,
        )

    def per_sequence(self) -> list[torch.Tensor]:
        """The step probabilities split by sequence: B tensors of shape [num_steps[b]]."""
        return list(torch.split(self.step_probs, self.num_steps.tolist()))
