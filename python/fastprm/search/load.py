"""The generator a command names: ``synthetic`` (the demo task's scripted solver) or a causal LM folder."""

from __future__ import annotations

from .generators import DEFAULT_STOP, Generator

SYNTHETIC = "synthetic"
_OPTIONS = ("error_rate", "seed", "temperature", "max_new_tokens", "stop", "device")


def options_of(args) -> dict:
    """:func:`load_generator`'s arguments from a command's parsed ``--generator`` and its options."""
    return {"name": args.generator, **{name: getattr(args, name) for name in _OPTIONS}}


def load_generator(
    name: str,
    *,
    error_rate: float = 0.3,
    seed: int = 0,
    temperature: float = 0.7,
    max_new_tokens: int = 512,
    stop: str | None = None,
    device: str | None = None,
) -> Generator:
    """``synthetic``: :class:`~fastprm.synthetic.ScriptedStepGenerator` (``error_rate``, ``seed``); else a
    :class:`~.generators.TransformersGenerator` of the folder ``name`` (sampling options, ``stop`` default
    a blank line). A folder it cannot load raises ValueError or OSError."""
    if name == SYNTHETIC:
        from ..synthetic import ScriptedStepGenerator

        return ScriptedStepGenerator(error_rate=error_rate, seed=seed)
    from .generators import TransformersGenerator

    return TransformersGenerator(
        name, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens, stop=stop or DEFAULT_STOP,
        device=device,
    )  # fmt: skip
