"""Which steps of a sequence the training loss counts (torch-free, so the CLI offers the names cheaply).

``all``: every step. ``last``: the last step of each sequence. ``first_error``: the steps up to and including
the first negative one (label < 0.5); later steps are ignored, as ProcessBench-style labels leave them unjudged.
"""

LABEL_MODES = ("all", "last", "first_error")
