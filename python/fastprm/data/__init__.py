"""Training data: PRM datasets of several formats read into one form, :class:`StepExample`, validated up
front so a bad row fails at load time (naming its file and line) instead of hours into an epoch."""

from .formats import (
    RecordDropped,
    StepExample,
    from_math_shepherd,
    from_prm800k,
    from_prm800k_critic,
    from_processbench,
    from_trl,
)
from .loading import FORMAT_COLUMNS, LoadResult, detect_format, load_step_examples

__all__ = [
    "FORMAT_COLUMNS",
    "LoadResult",
    "RecordDropped",
    "StepExample",
    "detect_format",
    "from_math_shepherd",
    "from_prm800k",
    "from_prm800k_critic",
    "from_processbench",
    "from_trl",
    "load_step_examples",
]
