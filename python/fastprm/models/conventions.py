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
        head_prefix: state-dict prefix of the head weights in the family's checkpoints.
        architectures: suffixes of the ``architectures`` names in the family's config.json (the first is
            written by ``save_pretrained(format="original")``).
        special_separator: the separator is one special token of the family's tokenizer (``<extra_0>``); a
            tokenizer without it is refused rather than spelling the separator as text.
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
    architectures: tuple[str, ...] = ()
    special_separator: bool = False

    def with_overrides(self, **overrides) -> Convention:
        """A copy with the given non-None fields replaced (user overrides of separator, template, ...)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, fields: dict) -> Convention:
        return cls(**{**fields, "architectures": tuple(fields.get("architectures", ()))})


CONVENTIONS: dict[str, Convention] = {
    "qwen2.5-math-prm": Convention(
        name="qwen2.5-math-prm",
        head=MLP,
        separator="<extra_0>",
        template=QWEN_CHAT,
        positive_class=1,
        system_prompt=QWEN_MATH_SYSTEM_PROMPT,
        head_prefix="score",
        architectures=("ForProcessRewardModel",),
        special_separator=True,
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
        architectures=("ForCausalLM",),
    ),
    "token-classification": Convention(
        name="token-classification",
        head=LINEAR,
        separator="\n",
        template=PLAIN,
        positive_class=1,
        architectures=("ForTokenClassification",),
    ),
    "value-head": Convention(
        name="value-head",
        head=LINEAR,
        separator="\n",
        template=PROBLEM_NEWLINE,
        positive_class=1,
        head_prefix="v_head.summary",
        architectures=("ForPrmModel", "ForValueHead"),
    ),
}


# What ``convention=`` accepts: detect it, fastprm's own format, or a family by name.
CONVENTION_NAMES = ("auto", "fastprm", *CONVENTIONS)


def saved_by_fastprm(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint in fastprm's own format (it has ``fastprm_config.json``)."""
    return (Path(path) / FASTPRM_CONFIG).exists()


def detect_convention(path: str | Path) -> Convention:
    """Reads a checkpoint directory's config and names its convention.

    Order: fastprm's own config file; then ``architectures`` in config.json.
    """
    path = Path(path)
    if saved_by_fastprm(path):
        return _fastprm_convention(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    try:
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{config_file} is not a JSON object: {err}") from None
    for arch in architectures:
        for convention in CONVENTIONS.values():
            if str(arch).endswith(convention.architectures):
                return convention
    raise ValueError(
        f"cannot tell the PRM convention of {path} from architectures={architectures}; pass convention= one of "
        f"{sorted(CONVENTIONS)}"
    )


def _fastprm_convention(path: Path) -> Convention:
    own = path / FASTPRM_CONFIG
    try:
        return Convention.from_json(json.loads(own.read_text())["convention"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{own} is not a fastprm config: {err}") from None


def get_convention(name: str, path: str | Path) -> Convention:
    """The convention of the checkpoint at ``path``: ``auto`` detects it, ``fastprm`` requires fastprm's own
    format, a built-in name picks that convention. A checkpoint saved by fastprm keeps its saved convention
    (separator and template included): naming a different one is an error."""
    if name not in CONVENTION_NAMES:
        raise ValueError(
            f"unknown convention {name!r}; expected 'auto', 'fastprm' or one of {sorted(CONVENTIONS)}"
        )
    if saved_by_fastprm(path):
        saved = _fastprm_convention(Path(path))
        if name not in ("auto", "fastprm", saved.name):
            raise ValueError(
                f"{path} was saved by fastprm with the {saved.name} convention, not {name}; pass convention "
                "'auto' or 'fastprm'"
            )
        return saved
    if name == "fastprm":
        raise ValueError(f"{path} is not in fastprm's format (no {FASTPRM_CONFIG}); pass convention 'auto'")
    return detect_convention(path) if name == "auto" else CONVENTIONS[name]
