"""Step generators for search: the :class:`Generator` protocol and a transformers implementation.

A search loop never sees token ids: it hands a generator text prefixes (a problem's prompt and the steps
chosen so far, each followed by the stop string) and gets text steps back. The PRM tokenizes those steps on
its own, with its own tokenizer and convention, so a generator and a PRM of different families work together.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

DEFAULT_STOP = "\n\n"


@runtime_checkable
class Generator(Protocol):
    """What the search loops (and Monte Carlo labelling) need from a policy model."""

    def prompt(self, problem: str) -> str:
        """The text a solution of ``problem`` continues (a chat template's user turn and assistant header)."""
        ...

    def generate_steps(
        self, prefixes: Sequence[str], n: int, *, stop: str = DEFAULT_STOP, max_new_tokens: int = 256
    ) -> list[list[str]]:
        """``n`` sampled next steps for each prefix: [len(prefixes)][n] step texts without the stop string.
        A continuation that ends the solution (end of sequence, or ``max_new_tokens`` reached) is returned as
        it stands."""
        ...

    def generate_solutions(self, problems: Sequence[str], n: int) -> list[list[list[str]]]:
        """``n`` whole sampled solutions per problem, each split into steps at the stop string:
        [len(problems)][n][steps]."""
        ...

    def generate_completions(
        self, prefixes: Sequence[str], n: int, *, max_new_tokens: int = 512
    ) -> list[list[str]]:
        """``n`` sampled continuations of each prefix to the end of the solution (Monte Carlo rollouts):
        [len(prefixes)][n] texts, steps and stop strings as generated."""
        ...


def split_steps(text: str, stop: str = DEFAULT_STOP) -> list[str]:
    """A solution's text as steps: split at ``stop``, blank pieces dropped, each stripped of outer spaces."""
    return [s.strip() for s in text.split(stop) if s.strip()]


def prefix_text(generator: Generator, problem: str, steps: Sequence[str], stop: str = DEFAULT_STOP) -> str:
    """The generation prefix of a partial solution: the problem's prompt, then every step and its stop."""
    return generator.prompt(problem) + "".join(step + stop for step in steps)


class SamplingGenerator(abc.ABC):
    """What every sampling generator shares: the prompt (the tokenizer's chat template or the bare problem)
    and turning sampled texts into steps. Subclasses implement :meth:`_sample`."""

    tokenizer: object
    chat: bool
    stop: str
    max_new_tokens: int

    def prompt(self, problem: str) -> str:
        if not self.chat:
            return problem + self.stop
        messages = [{"role": "user", "content": problem}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @abc.abstractmethod
    def _sample(self, texts: list[str], n: int, max_new_tokens: int, stop: str | None) -> list[list[str]]:
        """``n`` sampled continuations of each text: [len(texts)][n] strings (cut at ``stop`` or not)."""

    def generate_steps(
        self, prefixes: Sequence[str], n: int, *, stop: str = DEFAULT_STOP, max_new_tokens: int = 256
    ) -> list[list[str]]:
        texts = self._sample(list(prefixes), n, max_new_tokens, stop)
        return [[t.split(stop)[0].strip() for t in samples] for samples in texts]

    def generate_solutions(self, problems: Sequence[str], n: int) -> list[list[list[str]]]:
        texts = self._sample([self.prompt(p) for p in problems], n, self.max_new_tokens, None)
        return [[split_steps(t, self.stop) for t in samples] for samples in texts]

    def generate_completions(
        self, prefixes: Sequence[str], n: int, *, max_new_tokens: int = 512
    ) -> list[list[str]]:
        # n copies of a prefix go through one generate call, but transformers' generate computes each copy's
        # prefix again (no KV sharing between the sequences of a batch); vLLM's prefix caching shares them.
        return self._sample(list(prefixes), n, max_new_tokens, None)


class TransformersGenerator(SamplingGenerator):
    """A local causal LM through transformers' ``generate``, sampling with a seed.

    Args:
        model: a checkpoint directory or a loaded ``PreTrainedModel`` (then pass ``tokenizer``).
        tokenizer: its tokenizer (default: loaded from ``model``).
        temperature, top_p: sampling parameters.
        seed: seeds torch's generator before every call, so equal calls give equal samples.
        chat: wrap the problem in the tokenizer's chat template (default: when the tokenizer has one).
        max_new_tokens: length limit of :meth:`generate_solutions`.
        batch_size: sequences per ``generate`` call.
        stop: the text between steps.
        device: where the model runs (default CPU).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
        chat: bool | None = None,
        max_new_tokens: int = 512,
        batch_size: int = 16,
        stop: str = DEFAULT_STOP,
        device: str | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, str) or hasattr(model, "__fspath__"):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        if tokenizer is None:
            raise ValueError("tokenizer is required when model is a loaded model")
        self.model = model.to(device or "cpu").eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.chat = getattr(tokenizer, "chat_template", None) is not None if chat is None else chat
        self.max_new_tokens, self.batch_size, self.stop = max_new_tokens, batch_size, stop
        self.generated_tokens = 0  # counter for the search loops' reports

    def _sample(self, texts: list[str], n: int, max_new_tokens: int, stop: str | None) -> list[list[str]]:
        import torch

        torch.manual_seed(self.seed)
        flat = [t for t in texts for _ in range(n)]
        out: list[str] = []
        for i in range(0, len(flat), self.batch_size):
            chunk = flat[i : i + self.batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(self.model.device)
            options = {"stop_strings": stop, "tokenizer": self.tokenizer} if stop else {}
            with torch.no_grad():
                ids = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **options,
                )
            new = ids[:, enc["input_ids"].shape[1] :]
            self.generated_tokens += int((new != self.tokenizer.pad_token_id).sum())
            out += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [out[j * n : (j + 1) * n] for j in range(len(texts))]
