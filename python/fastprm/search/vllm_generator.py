"""A :class:`~fastprm.search.Generator` on vLLM's offline engine (``pip install fastprm[vllm]``).

vLLM samples the ``n`` continuations of a prefix as one request (its prefix cache shares the prefix's KV
blocks between them), which is what beam search and Monte Carlo rollouts ask for.
"""

from __future__ import annotations

from .generators import DEFAULT_STOP, SamplingGenerator


class VLLMGenerator(SamplingGenerator):
    """A causal LM served by ``vllm.LLM``, sampling with a seed.

    Args:
        model: a checkpoint directory (or a name vLLM can load).
        temperature, top_p, seed: sampling parameters (``seed`` seeds every request, so equal calls give equal
            samples).
        chat: wrap the problem in the tokenizer's chat template (default: when the tokenizer has one).
        max_new_tokens: length limit of :meth:`generate_solutions`.
        stop: the text between steps.
        llm_options: keyword arguments of ``vllm.LLM`` (``dtype``, ``gpu_memory_utilization``, ...).
    """

    def __init__(
        self,
        model: str,
        *,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
        chat: bool | None = None,
        max_new_tokens: int = 512,
        stop: str = DEFAULT_STOP,
        **llm_options,
    ):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(f"VLLMGenerator needs vLLM (pip install 'fastprm[vllm]'): {err}") from None
        self.llm = LLM(model, seed=seed, **llm_options)
        self.tokenizer = self.llm.get_tokenizer()
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.chat = getattr(self.tokenizer, "chat_template", None) is not None if chat is None else chat
        self.max_new_tokens, self.stop = max_new_tokens, stop
        self.generated_tokens = 0

    def _sample(self, texts: list[str], n: int, max_new_tokens: int, stop: str | None) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=max_new_tokens,
            stop=[stop] if stop else None,
            seed=self.seed,
        )
        outputs = self.llm.generate(texts, params, use_tqdm=False)
        self.generated_tokens += sum(len(c.token_ids) for o in outputs for c in o.outputs)
        return [[c.text for c in o.outputs] for o in outputs]
