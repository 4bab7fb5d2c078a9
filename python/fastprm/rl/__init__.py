"""PRM rewards for RL trainers: dense step rewards at the tokens that end the steps, their transforms and
normalisation, hybrid outcome + process rewards, and adapters for TRL, verl and OpenRLHF.

- :mod:`.text`: prompt -> problem, response -> steps (with where each ends).
- :mod:`.transforms`: step scores -> step rewards (``prob``, ``logit``, ``centered``, ``log_prob``,
  ``delta``, ``min_form``) and GRPO-style normalisation, with what each does to the length incentive.
- :mod:`.placement`: step rewards -> the [B, T] token reward tensor; step ends mapped to tokens.
- :mod:`.prm_rewards`: all of it from prompts and responses text with a PRM and the policy's tokenizer.
- :mod:`.hybrid`: ``w_o * outcome + w_p * agg(step scores)`` with a gate; outcomes from fastprm's answer checker.
- :mod:`.trl`, :mod:`.verl`, :mod:`.openrlhf_reward_func`: the trainers' own interfaces.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "TRANSFORMS": ".transforms",
        "step_rewards": ".transforms",
        "normalize": ".transforms",
        "token_rewards": ".placement",
        "char_to_token": ".placement",
        "prm_token_rewards": ".prm_rewards",
        "PRMTokenRewards": ".prm_rewards",
        "hybrid_rewards": ".hybrid",
        "outcome_rewards": ".hybrid",
        "trl_reward_function": ".trl",
        "verl_dense_rewards": ".verl",
        "response_steps": ".text",
        "problem_of": ".text",
    },
)
