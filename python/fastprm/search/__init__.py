"""Search with a PRM: best-of-N and step-level beam search over a :class:`Generator` of steps."""

from .generators import DEFAULT_STOP, Generator, TransformersGenerator, prefix_text, split_steps
from .loops import Candidate, SearchResult, beam_search, best_of_n

__all__ = [
    "DEFAULT_STOP",
    "Candidate",
    "Generator",
    "SearchResult",
    "TransformersGenerator",
    "beam_search",
    "best_of_n",
    "prefix_text",
    "split_steps",
]
