"""PRM heads: the weights that turn a step's final hidden row into class logits, feeding the fused op.

One class per head kind. Each owns its parameters, how it reads them from a checkpoint (fastprm's own
names or its family's original ones) and how it writes its family's original layout. Every head gets the
step rows only ([K, H], from :meth:`fastprm.models.prm.PRM.step_hidden_states`) and hands
:func:`fastprm.ops.score_steps` the rows and the final [C, H'] linear layer: a linear head passes the rows
untouched, the MLP head runs its hidden layer on them first.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .checkpoint import read_tensors
from .conventions import LINEAR, LM_PAIR, MLP, Convention


class Head(nn.Module):
    """Base of the head kinds. ``out`` is the final Linear(H', C) whose rows the fused op projects onto."""

    kind: ClassVar[str]
    # fastprm parameter name -> the name in the family's original checkpoints (under the convention's prefix).
    ORIGINAL_NAMES: ClassVar[dict[str, str]]
    out: nn.Linear

    @property
    def num_classes(self) -> int:
        return self.out.weight.shape[0]

    def project(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Step rows [K, H] -> (rows [K, H'], weight [C, H'], bias [C] or None) for the fused op."""
        return rows, self.out.weight, self.out.bias

    @classmethod
    def from_checkpoint(cls, path: Path, prefix: str, convention: Convention, config, tokenizer) -> Head:
        """The head stored under ``prefix + "."`` in the checkpoint at ``path``, named as fastprm saves it
        or as the family's checkpoints do. ``config`` is the backbone's transformers config."""
        return cls._from_tensors(read_tensors(path, prefix), prefix, convention, config)

    @classmethod
    def _from_tensors(
        cls, tensors: dict[str, torch.Tensor], prefix: str, convention: Convention, config
    ) -> Head:
        """The head from its checkpoint tensors (names without ``prefix``), in either naming."""
        if not tensors:
            raise ValueError(f"no head tensors under '{prefix}.*' for the {convention.name} convention")
        out = tensors.get("out.weight", tensors.get(cls.ORIGINAL_NAMES["out.weight"]))
        if out is None:
            raise ValueError(
                f"no '{prefix}.{cls.ORIGINAL_NAMES['out.weight']}' tensor (the head's output layer)"
            )
        head = cls._new(config.hidden_size, out.shape[0], tensors)
        head.load_tensors(tensors)
        return head

    @classmethod
    def _new(cls, hidden_size: int, num_classes: int, tensors: dict[str, torch.Tensor]) -> Head:
        """An empty head shaped for ``tensors``."""
        return cls(hidden_size, num_classes)

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Loads head tensors named as fastprm saves them or as the family's checkpoints do; a missing or
        unexpected tensor is a ValueError naming it (a half head would score garbage)."""
        own = self.state_dict()
        renamed = (
            {k: k for k in own} if set(tensors) & set(own) else {v: k for k, v in self.ORIGINAL_NAMES.items()}
        )
        missing = sorted(k for k, v in renamed.items() if v in own and k not in tensors)
        unexpected = sorted(set(tensors) - set(renamed))
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__} tensors do not match: missing {missing or 'none'}, unexpected "
                f"{unexpected or 'none'}"
            )
        for name, tensor in tensors.items():
            if tensor.shape != own[renamed[name]].shape:
                raise ValueError(
                    f"head tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(own[renamed[name]].shape)}"
                )
        self.load_state_dict({renamed[k]: v for k, v in tensors.items()})

    def original_tensors(self) -> dict[str, torch.Tensor]:
        """The head's parameters under the names of the family's original checkpoints."""
        return {self.ORIGINAL_NAMES[k]: v for k, v in self.state_dict().items()}


class LinearHead(Head):
    """Linear(H, C): token-classification PRMs (C = 2, ``score``) and value heads (C = 1, ``v_head.summary``)."""

    kind = LINEAR
    ORIGINAL_NAMES: ClassVar[dict[str, str]] = {"out.weight": "weight", "out.bias": "bias"}

    def __init__(self, hidden_size: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.out = nn.Linear(hidden_size, num_classes, bias=bias)

    @classmethod
    def _new(cls, hidden_size: int, num_classes: int, tensors: dict[str, torch.Tensor]) -> Head:
        return cls(hidden_size, num_classes, bias=bool({"bias", "out.bias"} & set(tensors)))


class MLPHead(Head):
    """Linear(H, H) -> ReLU -> Linear(H, C) (Qwen2.5-Math-PRM's ``score.0`` / ``score.2``), run on the step
    rows only, never on every token."""

    kind = MLP
    ORIGINAL_NAMES: ClassVar[dict[str, str]] = {
        "hidden.weight": "0.weight",
        "hidden.bias": "0.bias",
        "out.weight": "2.weight",
        "out.bias": "2.bias",
    }

    def __init__(self, hidden_size: int, num_classes: int = 2):
        super().__init__()
        self.hidden = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, num_classes)

    def project(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return torch.relu(self.hidden(rows)), self.out.weight, self.out.bias


class LMPairHead(Head):
    """Two rows of a causal LM head, [good, bad]: P(good) is a softmax over just those two logits.

    Equal to the model card recipe (full-vocabulary logits, then the two columns) without ever computing
    the other vocabulary logits. Its family's checkpoints hold the whole LM head (``lm_head.weight`` [V, H],
    or the tied input embeddings), so there is no original layout to write back.
    """

    kind = LM_PAIR
    ORIGINAL_NAMES: ClassVar[dict[str, str]] = {"out.weight": "weight"}

    def __init__(self, hidden_size: int, num_classes: int = 2):
        super().__init__()
        if num_classes != 2:
            raise ValueError(f"an LM-pair head has 2 classes (good, bad), got {num_classes}")
        self.out = nn.Linear(hidden_size, 2, bias=False)

    @classmethod
    def from_checkpoint(cls, path: Path, prefix: str, convention: Convention, config, tokenizer) -> Head:
        """fastprm's own two rows (``head.out.weight``), or rows [good, bad] of the family's whole LM head:
        ``lm_head.weight`` [V, H], or the input embeddings when the config ties them to the LM head."""
        tensors = read_tensors(path, prefix)
        if "out.weight" in tensors:
            return cls._from_tensors(tensors, prefix, convention, config)
        lm_head = tensors.get("weight")
        if lm_head is None:
            if not getattr(config, "tie_word_embeddings", False):
                raise ValueError(
                    f"no '{prefix}.weight' tensor, and the config does not tie the LM head to the input "
                    f"embeddings: the {convention.name} convention needs the LM head"
                )
            lm_head = read_tensors(path, "model.embed_tokens").get("weight")
            if lm_head is None:
                raise ValueError(
                    "the LM head is tied to the input embeddings, but 'model.embed_tokens.weight' is missing"
                )
        good_id, bad_id = lm_pair_token_ids(tokenizer, convention)
        if lm_head.dim() != 2 or lm_head.shape[1] != config.hidden_size:
            raise ValueError(
                f"the LM head has shape {tuple(lm_head.shape)}, expected [V, {config.hidden_size}]"
            )
        if max(good_id, bad_id) >= lm_head.shape[0]:
            raise ValueError(
                f"token ids {good_id}, {bad_id} are outside the LM head's {lm_head.shape[0]} rows"
            )
        head = cls(config.hidden_size)
        head.out.weight.data.copy_(lm_head[[good_id, bad_id]])
        return head

    def original_tensors(self) -> dict[str, torch.Tensor]:
        raise ValueError(
            "an LM-pair head is two rows of the LM head; its family's checkpoints hold the whole LM head, so "
            "there is no original layout fastprm can write: save in the fastprm format instead"
        )


HEADS: dict[str, type[Head]] = {cls.kind: cls for cls in (LinearHead, MLPHead, LMPairHead)}


def head_class(convention: Convention) -> type[Head]:
    if convention.head not in HEADS:
        raise ValueError(f"unknown head kind {convention.head!r}; expected one of {sorted(HEADS)}")
    return HEADS[convention.head]


def build_head(convention: Convention, hidden_size: int, num_classes: int) -> Head:
    """A new head of the convention's kind with random weights."""
    return head_class(convention)(hidden_size, num_classes)


def lm_pair_token_ids(tokenizer, convention: Convention) -> tuple[int, int]:
    """Vocabulary ids of the good and bad tokens, as the Math-Shepherd card derives them: the ids of
    ``"{good} {bad}"`` without special tokens (so '+' and '-' carry their word-boundary piece)."""
    ids = tokenizer(f"{convention.good_token} {convention.bad_token}", add_special_tokens=False)["input_ids"]
    if len(ids) != 2:
        raise ValueError(
            f"good_token={convention.good_token!r} and bad_token={convention.bad_token!r} should be one token "
            f"each, got ids {ids}"
        )
    return ids[0], ids[1]
