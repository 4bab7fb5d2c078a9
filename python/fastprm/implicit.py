"""Implicit PRMs (PRIME, ImplicitPRM / EurusPRM): step rewards from a policy and a reference causal LM.

Token t of a solution gets the reward ``beta * (log pi(y_t | y_<t) - log pi_ref(y_t | y_<t))`` and a step's
reward is the sum over its tokens. Rows are the same (problem, steps) rows as every other convention
(:class:`~fastprm.tokenization.StepTokenizer`: prompt and steps tokenized apart, the separator appended after
each step), a step's tokens being its text and its separator. Log-probabilities come from
:func:`fastprm.ops.token_logprobs` on the final hidden states and the LM head weight, so no [T, V] logits are
formed, and token rewards become step rewards through :func:`fastprm.ops.step_sums`.

A step's score, the P(step good) of :class:`~fastprm.scoring.SolutionScores`, is ``sigmoid(step reward)``, as
PRIME and EurusPRM report their process rewards; the raw rewards stay in ``step_rewards``. The aggregates
(min, prod, mean, last, first_error) are :func:`fastprm.ops.score_steps`'s over those scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from .batching import token_budget_batches
from .models.conventions import QWEN_CHAT, QWEN_MATH_SYSTEM_PROMPT, Convention
from .ops import score_steps, step_sums, token_logprobs
from .packing import cu_seqlens, pad_rows
from .scoring import SolutionScores, solution_scores, unscored
from .tokenization import StepTokenizer, TokenizedSolution

if TYPE_CHECKING:
    from .implicit_sessions import ImplicitSession

# Qwen2.5-Math's chat template with steps separated by a blank line, as EurusPRM's policy writes them.
IMPLICIT_CONVENTION = Convention(
    name="implicit",
    head="lm",  # the policy's and the reference's own LM heads
    separator="\n\n",
    template=QWEN_CHAT,
    system_prompt=QWEN_MATH_SYSTEM_PROMPT,
)


@dataclass
class ImplicitSolutionScores(SolutionScores):
    """:class:`~fastprm.scoring.SolutionScores` of an implicit PRM, whose ``step_scores`` are
    ``sigmoid(step_rewards)``.

    Attributes:
        step_rewards: beta * sum over each step's tokens of log pi - log pi_ref (NaN where a model gave NaN).
    """

    step_rewards: list[float] = field(default_factory=list)


def _last_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, H] final hidden states (after the final norm) of a transformers ``*ForCausalLM``."""
    return model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _lm_head_weight(model) -> torch.Tensor:
    """The [V, H] LM head weight; refuses heads whose logits are more than ``hidden @ W.T``."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}'s LM head has a bias, which token_logprobs does not apply")
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        raise ValueError(f"{type(model).__name__} rescales its logits, which token_logprobs does not do")
    return head.weight


class ImplicitPRM:
    """Scores (problem, steps) rows with an implicit PRM: a policy and a reference causal LM.

    Args:
        policy: the implicit PRM's causal LM (a transformers ``*ForCausalLM``).
        reference: its reference causal LM (same tokenizer, device and vocabulary).
        beta: the KL coefficient of the implicit reward (PRIME and EurusPRM train with 0.05 in their configs;
            use the checkpoint's own).
        tokenizer: the models' Hugging Face tokenizer.
        convention: prompt template and step separator (default :data:`IMPLICIT_CONVENTION`).
        threshold: ``first_error`` threshold on the step scores.
        max_length / truncation: as :class:`~fastprm.tokenization.StepTokenizer`.
        batch_tokens: token budget of one right-padded forward (rows x longest row).
        chunk_size: vocabulary chunk of :func:`~fastprm.ops.token_logprobs`.
    """

    def __init__(
        self,
        policy,
        reference,
        beta: float,
        *,
        tokenizer,
        convention: Convention = IMPLICIT_CONVENTION,
        threshold: float = 0.5,
        max_length: int | None = None,
        truncation: str = "error",
        batch_tokens: int = 8192,
        chunk_size: int | None = None,
    ):
        if (
            isinstance(beta, bool)
            or not isinstance(beta, (int, float))
            or not math.isfinite(beta)
            or beta <= 0
        ):
            raise ValueError(f"beta must be a finite positive number, got {beta!r}")
        self.policy_weight, self.reference_weight = _lm_head_weight(policy), _lm_head_weight(reference)
        if self.policy_weight.shape != self.reference_weight.shape:
            raise ValueError(
                f"policy and reference LM heads differ: {tuple(self.policy_weight.shape)} vs "
                f"{tuple(self.reference_weight.shape)} (they must share a vocabulary)"
            )
        self.policy, self.reference, self.beta = policy, reference, float(beta)
        self.tokenizer = StepTokenizer(tokenizer, convention, max_length=max_length, truncation=truncation)
        self.threshold = threshold
        self.batch_tokens = batch_tokens
        self.chunk_kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def device(self) -> torch.device:
        return self.policy_weight.device

    def score(
        self, problems: Sequence[str], solutions: Sequence[Sequence[str]]
    ) -> list[ImplicitSolutionScores]:
        """Per-solution step scores and rewards, in input order. A bad row raises
        :class:`~fastprm.tokenization.RowError` naming it."""
        return self.score_tokenized(self.tokenizer(problems, solutions))

    @torch.inference_mode()
    def score_tokenized(self, rows: Sequence[TokenizedSolution]) -> list[ImplicitSolutionScores]:
        """Per-row scores of tokenized rows (their first step starts at ``prompt_length``), in input order."""
        results: list[ImplicitSolutionScores | None] = [None] * len(rows)
        scored = [i for i, r in enumerate(rows) if r.step_ends]
        for i in set(range(len(rows))) - set(scored):
            results[i] = ImplicitSolutionScores(**asdict(unscored(rows[i])))
        lengths = [rows[i].step_ends[-1] + 1 for i in scored]  # nothing after the last step is read
        for batch in token_budget_batches(lengths, self.batch_tokens):
            members = [rows[scored[j]] for j in batch]
            for j, result in zip(batch, self._score_batch(members)):
                results[scored[j]] = result
        return results  # type: ignore[return-value]

    def step_rewards(self, rows: Sequence[TokenizedSolution]) -> tuple[torch.Tensor, torch.Tensor]:
        """[K] float32 step rewards of rows that all have steps, and cu_steps [B + 1] int64."""
        ids = [r.input_ids[: r.step_ends[-1] + 1] for r in rows]
        padded = pad_rows(ids, [r.step_ends for r in rows], self.pad_id).to(self.device)
        T = padded.input_ids.shape[1]
        # Token p (a step's first token at prompt_length through the last step end) is predicted at row p - 1.
        targets_at = [range(b * T + r.prompt_length, b * T + r.step_ends[-1] + 1) for b, r in enumerate(rows)]
        positions = torch.tensor([p for span in targets_at for p in span], device=self.device)
        targets = padded.input_ids.flatten()[positions]
        token_rewards = self._token_logprobs(self.policy, self.policy_weight, padded, positions - 1, targets)
        token_rewards -= self._token_logprobs(
            self.reference, self.reference_weight, padded, positions - 1, targets
        )
        token_rewards *= self.beta
        # In the packed token axis, row b's tokens start at cu_tokens[b]; its step ends shift by prompt_length.
        cu_tokens = cu_seqlens([len(span) for span in targets_at]).to(self.device)
        step_index = torch.tensor(
            [int(cu_tokens[b]) + e - r.prompt_length for b, r in enumerate(rows) for e in r.step_ends],
            device=self.device,
        )
        cu_steps = padded.cu_steps
        return step_sums(token_rewards, cu_tokens, step_index, cu_steps), cu_steps

    def _token_logprobs(
        self, model, weight, padded, rows: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        hidden = _last_hidden(model, padded.input_ids, padded.attention_mask)
        return token_logprobs(hidden.flatten(0, 1)[rows], weight, targets, **self.chunk_kwargs)

    def session(self, problem: str) -> ImplicitSession:
        """A partial solution of ``problem`` scored step by step over both models' cached keys and values
        (:mod:`fastprm.implicit_sessions`): ``session.add_step(text)``, ``add_implicit_steps`` for many."""
        from .implicit_sessions import start_implicit_session

        return start_implicit_session(self, problem)

    def _score_batch(self, rows: list[TokenizedSolution]) -> list[ImplicitSolutionScores]:
        rewards, cu_steps = self.step_rewards(rows)
        return self.solution_scores(rewards, cu_steps, rows)

    def solution_scores(
        self, rewards: torch.Tensor, cu_steps: torch.Tensor, rows: Sequence[TokenizedSolution]
    ) -> list[ImplicitSolutionScores]:
        """Per-row results of step rewards [K] float32 (row b's steps at ``cu_steps[b]:cu_steps[b + 1]``):
        scores sigmoid(reward), the aggregates and first_error, truncation marks from ``rows``."""
        # score_steps in rows mode with a 1 x 1 unit head: logit = reward, P(good) = sigmoid(reward).
        unit = torch.ones(1, 1, dtype=rewards.dtype, device=rewards.device)
        scores = score_steps(rewards[:, None], unit, cu_steps=cu_steps, threshold=self.threshold)
        per_row = torch.split(rewards, scores.num_steps.tolist())
        return [
            ImplicitSolutionScores(**asdict(s), step_rewards=r.tolist())
            for s, r in zip(solution_scores(scores, list(rows)), per_row)
        ]
