"""From what an RL trainer holds (a prompt, often chat-formatted for the policy, and the policy's response) to
what a PRM reads (the problem, and the response's steps with where each ends in the response text)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..io import step_spans

# The user turn of the chat templates RL prompts usually carry (ChatML, as Qwen's; Llama 3's): its last match
# in a prompt is the problem the PRM reads. A prompt with neither is the problem as it stands.
CHAT_USER_TURN = (
    r"<\|im_start\|>user\n(.*?)<\|im_end\|>"
    r"|<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>"
)
# End-of-turn markers a decoded response may end with (ChatML, GPT-style, Llama 3, SentencePiece EOS).
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")
DEFAULT_SPLIT = r"\n\n"


def problem_of(prompt: str, problem_regex: str | None = None) -> str:
    """The problem in a policy prompt: the first non-empty group of the last match of ``problem_regex``
    (default :data:`CHAT_USER_TURN`), else the whole prompt; stripped."""
    matches = list(re.finditer(problem_regex or CHAT_USER_TURN, prompt, re.S))
    if not matches:
        return prompt.strip()
    groups = [g for g in matches[-1].groups() if g] or [matches[-1].group(0)]
    return groups[0].strip()


def strip_end_of_turn(response: str) -> str:
    """``response`` without the end-of-turn markers (and spaces) it ends with."""
    text = response.rstrip()
    while marker := next((m for m in END_OF_TURN if text.endswith(m)), None):
        text = text[: -len(marker)].rstrip()
    return text


@dataclass
class ResponseSteps:
    """A response split into steps.

    Attributes:
        steps: the steps' texts (stripped), in order.
        ends: where each step ends in the response text (exclusive character offset).
        unfinished: whether the last step was cut off (a truncated response whose text ends inside a step).
    """

    steps: list[str]
    ends: list[int]
    unfinished: bool = False


def response_steps(response: str, split: str = DEFAULT_SPLIT, truncated: bool = False) -> ResponseSteps:
    """The steps of ``response`` (end-of-turn markers cut, split at the regex ``split``). When ``truncated``
    (the policy hit its length limit) and no separator follows the last step, that step is unfinished."""
    text = strip_end_of_turn(response)
    spans = step_spans(text, split)
    unfinished = bool(spans) and truncated and re.search(split, response[spans[-1][1] :]) is None
    return ResponseSteps([text[a:b] for a, b in spans], [b for _, b in spans], unfinished)


class QueryMismatch(ValueError):
    """A query that does not start with its prompt; ``index`` numbers it."""

    def __init__(self, index: int):
        super().__init__(f"query[{index}] does not start with prompts[{index}]")
        self.index = index


def query_rows(
    queries: Sequence[str],
    prompts: Sequence[str],
    split: str = DEFAULT_SPLIT,
    problem_regex: str | None = None,
) -> tuple[list[str], list[list[str]]]:
    """(problem, steps) of each query = prompt + response (OpenRLHF's ``query``); a response with no step
    gives an empty list. Raises :class:`QueryMismatch` for a query that does not start with its prompt."""
    if len(queries) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts for {len(queries)} queries")
    problems, solutions = [], []
    for i, (query, prompt) in enumerate(zip(queries, prompts)):
        if not query.startswith(prompt):
            raise QueryMismatch(i)
        problems.append(problem_of(prompt, problem_regex))
        solutions.append(response_steps(query[len(prompt) :], split).steps)
    return problems, solutions
