"""Checkpoint conventions: how each PRM family marks steps, builds its prompt and reads P(step good).

A convention is data, not code: the head kind says which weights turn a step row into logits, the template
says how the prompt is framed, and the separator is the text whose tokens end every step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

# Head kinds.
MLP = "mlp"  # Linear(H, H) -> ReLU -> Linear(H, C): Qwen2.5-Math-PRM's `score.0` / `score.2`
LINEAR = "linear"  # Linear(H, C): token classification (C = 2) or value head (C = 1)
LM_PAIR = "lm_pair"  # two rows of the LM head (good, bad): Math-Shepherd / RLHFlow-style PRMs

# Prompt templates.
QWEN_CHAT = "qwen-chat"  # system / user = problem / assistant = steps, ChatML
QUESTION_SPACE = "question-space"  # f"{problem} {steps}" (Math-Shepherd)
PLAIN = "plain"  # [bos] problem, then the steps (TRL stepwise supervision)
PROBLEM_NEWLINE = "problem-newline"  # [bos] problem "\n", then the steps (Skywork PRM)

FASTPRM_CONFIG = "fastprm_config.json"


@dataclass(frozen=True)
class Convention:
    """How one family of PRM checkpoints scores steps.

    Attributes:
        name: convention name (``qwen2.5-math-prm``, ``math-shepherd``, ``token-classification``,
            ``value-head`` or ``fastprm``).
        head: ``mlp``, ``linear`` or ``lm_pair``.
        separator: text appended after every step; its last token is the row that scores the step.
        template: prompt framing (``qwen-chat``, ``question-space``, ``plain``, ``problem-newline``).
        positive_class: index of the "good" class among the head's logits.
        step_joiner: text placed before every step but the first (tokenized with that step).
        system_prompt: system message of chat templates.
        good_token / bad_token: for ``lm_pair`` heads, the vocabulary items whose logits are compared.
        head_prefix: state-dict prefix of the head weights in the checkpoint.
    """

    name: str
    head: str
    separator: str
    template: str
    positive_class: int = 1
    step_joiner: str = ""
    system_prompt: str | None = None
    good_token: str | None = None
    bad_token: str | None = None
    head_prefix: str = "score"

    def with_overrides(self, **overrides) -> Convention:
        """A copy with the given non-None fields replaced (user overrides of separator, template, ...)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> dict:
        return asdict(self)


CONVENTIONS: dict[str, Convention] = {
    "qwen2.5-math-prm": Convention(
        name="qwen2.5-math-prm",
        head=MLP,
        separator="<extra_0>",
        template=QWEN_CHAT,
        positive_class=1,
        system_prompt=QWEN_MATH_SYSTEM_PROMPT,
        head_prefix="score",
    ),
    "math-shepherd": Convention(
        name="math-shepherd",
        head=LM_PAIR,
        separator=" ки",
        template=QUESTION_SPACE,
        positive_class=0,
        step_joiner="\n",
        good_token="+",
        bad_token="-",
        head_prefix="lm_head",
    ),
    "token-classification": Convention(
        name="token-classification", head=LINEAR, separator="\n", template=PLAIN, positive_class=1
    ),
    "value-head": Convention(
        name="value-head",
        head=LINEAR,
        separator="\n",
        template=PROBLEM_NEWLINE,
        positive_class=1,
        head_prefix="v_head.summary",
    ),
}


def detect_convention(path: str | Path) -> Convention:
    """Reads a checkpoint directory's config and names its convention.

    Order: fastprm's own config file; then ``architectures`` in config.json.
    """
    path = Path(path)
    own = path / FASTPRM_CONFIG
    if own.exists():
        return Convention(**json.loads(own.read_text())["convention"])
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    for arch in architectures:
        if arch.endswith("ForProcessRewardModel"):
            return CONVENTIONS["qwen2.5-math-prm"]
        if arch.endswith("ForTokenClassification"):
            return CONVENTIONS["token-classification"]
        if arch.endswith(("ForPrmModel", "ForValueHead")):
            return CONVENTIONS["value-head"]
        if arch.endswith("ForCausalLM"):
            return CONVENTIONS["math-shepherd"]
    raise ValueError(
        f"cannot tell the PRM convention of {path} from architectures={architectures}; pass convention= one of "
        f"{sorted(CONVENTIONS)}"
    )


def get_convention(name_or_path: str, path: str | Path) -> Convention:
    """``auto`` detects from the checkpoint; a name picks a built-in convention."""
    if name_or_path == "auto":
        return detect_convention(path)
    if name_or_path == "fastprm":
        return detect_convention(path)
    if name_or_path not in CONVENTIONS:
        raise ValueError(
            f"unknown convention {name_or_path!r}; expected 'auto', 'fastprm' or one of {sorted(CONVENTIONS)}"
        )
    return CONVENTIONS[name_or_path]
